"""`VLAPolicy`: a Qwen2.5-VL backbone that answers the VLA prompt (vla/prompt.py) with action tokens.

Training is next-token prediction on the action tokens only (the prompt is masked out); inference is greedy,
KV-cached decoding restricted to the action tokens (vla/inference.py), batched over envs, with an action queue
of `n_action_steps`. Actions enter and leave normalised to [-1, 1] (the processors hold the q01/q99 stats).

A saved policy is self-contained: besides LeRobot's config.json / model.safetensors / processor files it holds
`backbone/` (the backbone's HF config and its processor, whose tokenizer has the action tokens) and
`action_tokenizer.json`, so `from_pretrained(dir)` rebuilds the exact model with no access to the original
backbone path or the dataset.
"""

import json
import logging
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION
from torch import Tensor
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vla.action_tokenizer import BinActionTokenizer, QuantileNormalizer
from vla.configuration_vla import POLICY_TYPE, VLAConfig
from vla.decoding import parse_action_tokens
from vla.fast_tokenizer import FastActionTokenizer
from vla.inference import decode_actions, pad_left, pad_right, rope_positions
from vla.processor_vla import saved_action_stats
from vla.prompt import PromptEncoder
from vst.cpu_amp import fp32_attention, fp32_logits

log = logging.getLogger(__name__)

BACKBONE_DIR = "backbone"
ACTION_TOKENIZER_FILE = "action_tokenizer.json"
IGNORE = -100
FAST_TRAINING_CHUNKS = 20_000  # the BPE merges are learnt on at most this many chunks


def normalized_space(dim: int) -> QuantileNormalizer:
    """The action tokenizers see actions the preprocessor already mapped to [-1, 1]: identity on that box."""
    return QuantileNormalizer(-np.ones(dim), np.ones(dim))


def load_action_tokenizer(path: str | Path) -> BinActionTokenizer | FastActionTokenizer:
    try:
        kind = json.loads(Path(path).read_text()).get("kind")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable action tokenizer file: {e}") from e
    loaders = {"bins": BinActionTokenizer.load, "fast": FastActionTokenizer.load}
    if kind not in loaders:
        raise ValueError(f"{path}: unknown action tokenizer kind {kind!r} (expected one of {list(loaders)})")
    return loaders[kind](path)


def dataset_action_chunks(dataset_meta, chunk_size: int, limit: int = FAST_TRAINING_CHUNKS) -> np.ndarray:
    """(N, K, D) action chunks of a LeRobot dataset, normalised with its q01/q99 like the preprocessor does;
    a chunk running past its episode's end repeats the last action (as LeRobot pads with delta_timestamps)."""
    import pyarrow.parquet as pq

    files = sorted(Path(dataset_meta.root, "data").glob("**/*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no data/*.parquet under {dataset_meta.root}: cannot train the FAST tokenizer"
        )
    episodes: dict[int, list[np.ndarray]] = {}
    for file in files:
        table = pq.read_table(file, columns=["episode_index", ACTION])
        actions = np.asarray(table.column(ACTION).to_pylist(), dtype=np.float64)
        for ep, a in zip(table.column("episode_index").to_numpy(), actions):
            episodes.setdefault(int(ep), []).append(a)
    normalizer = QuantileNormalizer.from_stats(dataset_meta.stats, ACTION)
    chunks = []
    for ep in sorted(episodes):
        a = normalizer.normalize(np.stack(episodes[ep]))
        idx = np.minimum(np.arange(len(a))[:, None] + np.arange(chunk_size)[None], len(a) - 1)
        chunks.append(a[idx])
    chunks = np.concatenate(chunks)
    if len(chunks) > limit:
        chunks = chunks[np.random.default_rng(0).choice(len(chunks), limit, replace=False)]
    return chunks


def soft_bin_cross_entropy(logits: Tensor, wanted: Tensor, token_range: range, sigma: float) -> Tensor:
    """Cross-entropy against a Gaussian (std `sigma` bins) centred on each wanted bin token, per row.

    The softmax runs over the whole vocabulary, so mass on non-action tokens is still penalised."""
    bins = torch.arange(len(token_range), device=logits.device, dtype=torch.float32)
    centre = (wanted - token_range.start).float()[:, None]
    target = torch.exp(-0.5 * ((bins - centre) / sigma) ** 2)
    target = target / target.sum(-1, keepdim=True)
    logp = F.log_softmax(logits, dim=-1)[:, token_range.start : token_range.stop]
    return -(target * logp).sum(-1)


class VLAPolicy(PreTrainedPolicy):
    config_class = VLAConfig
    name = POLICY_TYPE

    def __init__(
        self,
        config: VLAConfig,
        dataset_stats: dict | None = None,
        dataset_meta=None,
        checkpoint_dir: str | Path | None = None,
        **kwargs,
    ):
        super().__init__(config)
        config.validate_features()
        if checkpoint_dir is not None:
            model, processor, tokenizer = self._load_parts(Path(checkpoint_dir))
        else:
            model, processor, tokenizer = self._build_parts(dataset_meta)
        context = model.config.get_text_config().max_position_embeddings
        if config.max_length > context:
            raise ValueError(
                f"max_length {config.max_length} exceeds the backbone's context of {context} positions"
            )
        self.model = model
        if config.use_amp and torch.device(config.device or "cpu").type == "cpu":
            fp32_attention(model)  # CPU flash attention is slow in bf16 (vst/cpu_amp.py)
        self.processor = processor
        self.action_tokenizer = tokenizer
        self.token_range = tokenizer.token_range
        self.prompt = PromptEncoder(
            processor,
            config.cameras,
            config.image_size,
            config.use_state,
            config.state_decimals,
            config.max_length,
        )
        pad = processor.tokenizer.pad_token_id
        self.pad_token_id = self.prompt.eos_token_id if pad is None else pad
        self._setup_trainable()
        self.reset()

    # ------------------------------------------------------------------------------------ construction

    def _build_parts(self, dataset_meta):
        """Fresh: the backbone from its preset/path/alias, a new action tokenizer, the tokens added."""
        from vst.backbone import build_backbone, resolve_backbone

        cfg = self.config
        path = resolve_backbone(
            cfg.backbone,
            {"model": cfg.backbone_base, "pipeline_dir": cfg.pipeline_dir, "cache_dir": cfg.cache_dir},
        )
        model, processor = build_backbone(path, cache_dir=cfg.cache_dir, dtype=cfg.dtype)
        if cfg.action_tokenizer == "bins":
            tokenizer = BinActionTokenizer(normalized_space(cfg.action_dim), cfg.num_bins)
        else:
            if dataset_meta is None:
                raise ValueError(
                    "action_tokenizer=fast is trained on the dataset's actions: build the policy with "
                    "dataset_meta (lerobot's make_policy and vla-train do)"
                )
            chunks = dataset_action_chunks(dataset_meta, cfg.chunk_size)
            tokenizer = FastActionTokenizer.train(
                chunks, normalized_space(cfg.action_dim), scale=cfg.fast_scale, vocab_size=cfg.fast_vocab_size
            )
            log.info(
                "trained the FAST tokenizer on %d chunks: %.1fx fewer tokens than bins",
                len(chunks),
                tokenizer.compression_ratio(chunks[:2000]),
            )
        real_vocab = len(processor.tokenizer)
        tokenizer.add_to_tokenizer(processor.tokenizer)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(processor.tokenizer) > rows:
            model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        self._init_action_rows(model, tokenizer.token_range, real_vocab)
        return model, processor, tokenizer

    def _init_action_rows(self, model, token_range: range, real_vocab: int) -> None:
        """New action tokens start near the mean embedding of the real vocabulary (small seeded noise), in the
        input embedding and, if untied, in the output head: neither random outliers nor all equal."""
        gen = torch.Generator().manual_seed(self.config.seed)
        tables = [model.get_input_embeddings().weight]
        if model.get_output_embeddings().weight is not tables[0]:
            tables.append(model.get_output_embeddings().weight)
        with torch.no_grad():
            for w in tables:
                real = w[:real_vocab].float()
                noise = torch.randn((len(token_range), w.shape[1]), generator=gen) * real.std() * 0.1
                w[token_range.start : token_range.stop] = (real.mean(0) + noise).to(w.dtype)

    def _load_parts(self, checkpoint_dir: Path):
        """From a saved policy: the backbone's architecture from backbone/ (weights come next, from
        model.safetensors), its processor with the action tokens, the saved action tokenizer."""
        cfg = self.config
        backbone_dir = checkpoint_dir / BACKBONE_DIR
        model = AutoModelForImageTextToText.from_config(
            AutoConfig.from_pretrained(backbone_dir), dtype=cfg.torch_dtype
        )
        processor = AutoProcessor.from_pretrained(backbone_dir)
        tokenizer = load_action_tokenizer(checkpoint_dir / ACTION_TOKENIZER_FILE)
        if tokenizer.action_dim != cfg.action_dim:
            raise ValueError(
                f"the policy in {checkpoint_dir} predicts {tokenizer.action_dim}-D actions but the config/dataset "
                f"has {cfg.action_dim}-D actions: the dataset does not match the policy"
            )
        if isinstance(tokenizer, FastActionTokenizer) and tokenizer.chunk_size != cfg.chunk_size:
            raise ValueError(
                f"the checkpoint's FAST tokenizer encodes {tokenizer.chunk_size}-step chunks, the config asks "
                f"for chunk_size={cfg.chunk_size}"
            )
        tokenizer.add_to_tokenizer(processor.tokenizer)  # finds the saved tokens, checks their ids
        return model, processor, tokenizer

    def _setup_trainable(self) -> None:
        """Freeze switches, optional LoRA; a frozen or adapted LLM still learns the action-token rows."""
        cfg = self.config
        llm_frozen = cfg.freeze_llm or cfg.lora_rank > 0
        if cfg.lora_rank:
            from peft import LoraConfig, inject_adapter_in_model

            names = "|".join(cfg.lora_targets)
            lora = LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})",
            )
            inject_adapter_in_model(lora, self.model)
        for name, p in self.model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
            elif name.startswith("model.visual."):
                frozen = cfg.freeze_merger if name.startswith("model.visual.merger.") else cfg.freeze_vision
                p.requires_grad_(not frozen)
            else:
                p.requires_grad_(not llm_frozen)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._row_masked: list[Tensor] = []
        if llm_frozen:
            for w in {
                id(t): t for t in (self.model.get_input_embeddings().weight, self.model.lm_head.weight)
            }.values():
                mask = torch.zeros(w.shape[0], 1, dtype=w.dtype)
                mask[self.token_range.start : self.token_range.stop] = 1
                w.requires_grad_(True)
                w.register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype))
                self._row_masked.append(w)

    # --------------------------------------------------------------------------------- saving / loading

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        super()._save_pretrained(save_directory, state_dict=state_dict)
        self.model.config.save_pretrained(save_directory / BACKBONE_DIR)
        self.processor.save_pretrained(save_directory / BACKBONE_DIR)
        self.action_tokenizer.save(save_directory / ACTION_TOKENIZER_FILE)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, *, config=None, strict: bool = True, **kwargs):
        path = Path(pretrained_name_or_path)
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(pretrained_name_or_path), revision=kwargs.get("revision")))
        check_checkpoint(path)
        kwargs.pop("checkpoint_dir", None)
        return super().from_pretrained(path, config=config, strict=strict, checkpoint_dir=path, **kwargs)

    # ------------------------------------------------------------------------------------------ training

    def get_optim_params(self) -> list[dict]:
        """Vision tower at optimizer_lr_vision; merger, LLM and adapters at the optimiser's lr. Rows trained
        through a gradient mask get no weight decay (it would shrink the frozen rows)."""
        vision, rest, masked = [], [], []
        masked_ids = {id(p) for p in self._row_masked}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if id(p) in masked_ids:
                masked.append(p)
            elif name.startswith("model.visual.") and not name.startswith("model.visual.merger."):
                vision.append(p)
            else:
                rest.append(p)
        groups = [{"params": rest}, {"params": vision, "lr": self.config.optimizer_lr_vision}]
        groups.append({"params": masked, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def _targets(self, actions: Tensor, is_pad: Tensor | None) -> tuple[list[list[int]], list[list[bool]]]:
        """Target ids per sample and which of them count in the loss (bins: K*D ids, the steps a chunk runs
        past its episode's end do not count; FAST: ids + EOS, all count)."""
        if isinstance(self.action_tokenizer, BinActionTokenizer):
            ids = self.action_tokenizer.encode(actions.detach().float().cpu()).tolist()
            if is_pad is None:
                return ids, [[True] * len(row) for row in ids]
            pad = is_pad.detach().cpu().bool().repeat_interleave(self.config.action_dim, dim=1)
            return ids, (~pad).tolist()
        ids = [
            row + [self.prompt.eos_token_id]
            for row in self.action_tokenizer.encode(actions.detach().float().cpu())
        ]
        return ids, [[True] * len(row) for row in ids]

    def _check_actions(self, actions: Tensor) -> None:
        want = (self.config.chunk_size, self.config.action_dim)
        if actions.ndim != 3 or tuple(actions.shape[1:]) != want:
            raise ValueError(
                f"batch[{ACTION!r}] has shape {tuple(actions.shape)} but the policy expects (B, {want[0]}, {want[1]}) "
                f"(chunk_size, action dim): the dataset does not match the policy"
            )

    def training_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Right-padded prompt + target ids, labels (IGNORE except on counted target tokens) and image
        patches; the prompt part of each row is exactly what `model_inputs` feeds at inference."""
        actions = batch[ACTION]
        self._check_actions(actions)
        targets, counted = self._targets(actions, batch.get(f"{ACTION}_is_pad"))
        prompts = self.prompt.prompt_ids(batch, target_len=max(len(t) for t in targets))
        device = actions.device
        input_ids, attention_mask = pad_right(
            [p + t for p, t in zip(prompts, targets)], self.pad_token_id, device
        )
        labels = torch.full_like(input_ids, IGNORE)
        for i, (p, tgt, keep) in enumerate(zip(prompts, targets, counted)):
            labels[i, len(p) : len(p) + len(tgt)] = torch.where(
                torch.as_tensor(keep), torch.as_tensor(tgt), IGNORE
            )
        pixel_values, grid = self.prompt.pixels(batch)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": pixel_values.to(device, self.model.dtype),
            "image_grid_thw": grid.to(device),
        }

    def forward(self, batch: dict[str, Tensor], reduction: str = "mean") -> tuple[Tensor, dict]:
        """Cross-entropy of the target action tokens (mean over tokens; reduction="none": per sample)."""
        inputs = self.training_inputs(batch)
        labels = inputs.pop("labels")
        positions, _ = rope_positions(
            self.model, inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"]
        )
        with self._autocast(inputs["input_ids"].device, training=True):
            hidden = self.model.model(**inputs, position_ids=positions).last_hidden_state
        # Position j predicts token j + 1: only the positions before a target token reach the LM head.
        next_labels = labels[:, 1:]
        selected = next_labels != IGNORE
        logits = fp32_logits(self.model.lm_head, hidden[:, :-1][selected])
        wanted = next_labels[selected]
        rng = self.token_range
        if self.config.bin_label_sigma > 0:
            token_loss = soft_bin_cross_entropy(logits, wanted, rng, self.config.bin_label_sigma)
        else:
            token_loss = F.cross_entropy(logits, wanted, reduction="none")
        predicted = logits[:, rng.start : rng.stop].argmax(-1) + rng.start
        info = {"token_acc": (predicted == wanted).float().mean().item()}
        if reduction == "none":
            batch_size = labels.shape[0]
            sample = selected.nonzero()[:, 0]
            per_sample = torch.zeros(batch_size, device=logits.device).index_add_(0, sample, token_loss)
            return per_sample / torch.bincount(sample, minlength=batch_size).clamp(min=1), info
        return token_loss.mean(), info

    def _autocast(self, device: torch.device, training: bool):
        """use_amp: bf16 autocast over the fp32 weights (vst/cpu_amp.py). Decoding on the CPU stays fp32: its
        one-token steps gain nothing from bf16 and pay for the casts (benchmarks/bench_cpu_amp.py)."""
        enabled = bool(self.config.use_amp) and self.model.dtype == torch.float32
        enabled = enabled and (training or device.type != "cpu")
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    # ----------------------------------------------------------------------------------------- inference

    def reset(self) -> None:
        self._queue: deque[Tensor] = deque()
        self._ensemble = (
            None
            if self.config.temporal_ensemble_coeff is None
            else TemporalEnsemble(self.config.temporal_ensemble_coeff, every=self.config.n_action_steps)
        )

    @property
    def num_target_tokens(self) -> int:
        """Tokens decoded per chunk (FAST: the budget; it stops at EOS)."""
        if isinstance(self.action_tokenizer, BinActionTokenizer):
            return self.config.chunk_size * self.config.action_dim
        return self.config.fast_max_tokens

    def model_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Left-padded prompt ids and image patches for decoding (also used by the benchmark)."""
        device = next(self.model.parameters()).device
        prompts = self.prompt.prompt_ids(batch, target_len=self.num_target_tokens)
        input_ids, attention_mask = pad_left(prompts, self.pad_token_id, device)
        pixel_values, grid = self.prompt.pixels(batch)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values.to(device, self.model.dtype),
            "image_grid_thw": grid.to(device),
        }

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """(B, chunk_size, action_dim) normalised actions, greedy and restricted to the action tokens."""
        inputs = self.model_inputs(batch)
        fast = isinstance(self.action_tokenizer, FastActionTokenizer)
        stop = self.prompt.eos_token_id if fast else None
        with self._autocast(inputs["input_ids"].device, training=False):
            ids = decode_actions(self.model, inputs, self.num_target_tokens, self.token_range, stop_id=stop)
        chunk = parse_action_tokens(ids.cpu(), self.action_tokenizer, stop_token_id=stop)
        return torch.as_tensor(chunk, dtype=torch.float32, device=inputs["input_ids"].device)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        if self._ensemble is not None:
            if self._ensemble.due():
                self._ensemble.add(self.predict_action_chunk(batch))
            return self._ensemble.pop()
        if not self._queue:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            self._queue.extend(chunk.transpose(0, 1))
        return self._queue.popleft()


class TemporalEnsemble:
    """ACT's temporal ensembling, kept as running means: position j of `mean` is the weighted mean of every chunk
    predicted so far for the step j ahead, `count[j]` how many there were (weights exp(-coeff * i), i = 0 the
    oldest prediction, so older predictions count more for coeff > 0). A chunk every `every` steps (ACT: 1) mixes
    chunk_size / every predictions per step for chunk_size / every times the queue's calls instead of chunk_size."""

    def __init__(self, coeff: float, every: int = 1):
        if every < 1:
            raise ValueError(f"temporal ensemble: a chunk every {every} steps; use 1 or more")
        self.coeff, self.every = coeff, every
        self.mean: Tensor | None = None  # (B, pending steps, D)
        self.count: Tensor | None = None  # (pending steps,)
        self.weight_sum: Tensor | None = None  # (pending steps,)
        self.since = 0  # steps executed since the last chunk

    def due(self) -> bool:
        """Whether this step needs a new chunk: the first step, then every `every` steps (or when none is left)."""
        return self.mean is None or self.since >= self.every or self.mean.shape[1] == 0

    def add(self, chunk: Tensor) -> None:
        """Fold in the chunk (B, K, D) predicted at this step: its first steps join the pending means, the rest
        start new ones."""
        if self.mean is None:
            k = chunk.shape[1]
            self.mean, self.count = chunk.clone(), torch.ones(k, device=chunk.device)
            self.weight_sum, self.since = torch.ones(k, device=chunk.device), 0
            return
        m = self.mean.shape[1]
        if chunk.shape[0] != self.mean.shape[0] or chunk.shape[1] != m + self.since:
            raise ValueError(
                f"temporal ensemble: chunk of shape {tuple(chunk.shape)} after chunks of "
                f"{self.mean.shape[0]} x {m + self.since}: call reset() between episodes"
            )
        w = torch.exp(-self.coeff * self.count)[None, :, None]  # the new prediction's weight per position
        old = self.mean * self.weight_sum[None, :, None]
        self.mean = torch.cat(
            [(old + w * chunk[:, :m]) / (self.weight_sum[None, :, None] + w), chunk[:, m:]], 1
        )
        self.weight_sum = torch.cat([self.weight_sum + w[0, :, 0], self.weight_sum.new_ones(self.since)])
        self.count = torch.cat([self.count + 1, self.count.new_ones(self.since)])
        self.since = 0

    def pop(self) -> Tensor:
        """This step's action (B, D)."""
        action = self.mean[:, 0]
        self.mean, self.count, self.weight_sum = self.mean[:, 1:], self.count[1:], self.weight_sum[1:]
        self.since += 1
        return action

    def update(self, chunk: Tensor) -> Tensor:
        """every = 1: fold in this step's chunk and return this step's action."""
        self.add(chunk)
        return self.pop()


def check_checkpoint(path: str | Path) -> None:
    """A VLA checkpoint dir must hold every file `from_pretrained` needs, including the action stats."""
    path = Path(path)
    needed = ["config.json", "model.safetensors", f"{BACKBONE_DIR}/config.json", ACTION_TOKENIZER_FILE]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete VLA checkpoint: missing {missing}")
    saved_action_stats(path)
