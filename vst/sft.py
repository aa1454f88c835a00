"""The supervised stages (general pretraining, spatial SFT, CoT cold start): one loop, different rows and LRs.

Read top to bottom: config -> rows to chat messages -> token/label/position encoding -> the epoch plan (a pure
function of the seed, so a resumed run sees the same data order) -> model parts, freezing, LoRA, optimizer ->
the loop with gradient accumulation, token-weighted loss across micro-batches and processes, logging, and
checkpoints that resume. TRL's SFTTrainer refuses to pack vision datasets, hence this plain accelerate loop.
"""

import copy
import io
import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedDataParallelKwargs
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from transformers import get_cosine_schedule_with_warmup
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from vst.backbone import FINAL_MODEL_DIR, build_backbone, save_backbone
from vst.cpu_amp import fp32_attention
from vst.packing import IGNORE, pack, pad, plan_micro_batches, shift_targets, use_varlen_attention

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
# Which parameters belong to which part, by name (works on plain, DDP- and peft-wrapped models alike).
PARTS = ("vision", "merger", "llm")
# Training settings that decide which samples each step sees (a resumed run must keep them).
ORDER_KEYS = (
    "seed",
    "packing",
    "pack_tokens",
    "batch_size",
    "grad_accum",
    "max_seq_len",
    "epochs",
    "max_steps",
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------------------- config


@dataclass
class LoraConfig:
    """LoRA adapters on the LLM's linear layers (the vision tower and merger train or freeze as configured)."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class TrainConfig:
    lr: float = 5e-5  # the LLM (and LoRA adapters)
    lr_vision: float = 5e-6
    lr_merger: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    epochs: int = 1
    max_steps: int | None = None  # set: exactly this many optimizer steps (epochs repeat as needed)
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    packing: bool = True
    pack_tokens: int = 4096  # tokens per packed micro-batch (packing on)
    batch_size: int = 8  # samples per padded micro-batch (packing off)
    max_seq_len: int = 2048  # longer samples are dropped and counted
    freeze_vision: bool = False
    freeze_merger: bool = False
    freeze_llm: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    bf16: str = "auto"  # auto = on CUDA only; "true" also on a CPU (vst/cpu_amp.py); "false"
    gradient_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2
    num_workers: int = 0
    cpu_threads: int | None = None  # torch threads per process (None: torch's default); 1 wins on a busy CPU


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "vst-vla"
    name: str | None = None


@dataclass
class ReplayConfig:
    """Earlier-stage rows mixed into this stage's rows (e.g. direct-answer rows in the CoT stage), so the model
    keeps what it learned before; `fraction` of the final row list comes from here (0 = off)."""

    data: list[str] = field(default_factory=list)  # Parquet files / directories / globs of VST rows
    row_types: list[str] | None = None  # keep replay rows of these `type`s; None = all
    fraction: float = 0.0


@dataclass
class SFTConfig:
    stage: str
    model: str  # preset, checkpoint directory or hub id to start from
    data: list[str]  # Parquet files / directories / globs of VST rows
    output_dir: str
    row_types: list[str] | None = None  # keep rows of these `type`s; None = all
    cache_dir: str | None = None  # where built presets are cached
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def __post_init__(self):
        t, r = self.train, self.replay
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(r.data, str):
            r.data = [r.data]
        if not 0 <= r.fraction < 1:
            raise ValueError(f"replay.fraction must be in [0, 1), not {r.fraction}")
        if r.fraction > 0 and not r.data:
            raise ValueError(f"replay.fraction={r.fraction} needs replay.data (rows to replay)")
        if t.packing and t.pack_tokens < t.max_seq_len:
            raise ValueError(f"pack_tokens={t.pack_tokens} must be >= max_seq_len={t.max_seq_len}")
        if t.lora.enabled and t.freeze_llm:
            raise ValueError(
                "LoRA trains the LLM through adapters; it cannot be combined with freeze_llm=true"
            )
        if t.freeze_vision and t.freeze_merger and t.freeze_llm:
            raise ValueError("everything is frozen: nothing to train")
        t.bf16 = str(t.bf16).lower()  # the command line may give a bool
        if t.bf16 not in ("auto", "true", "false"):
            raise ValueError(f"train.bf16 must be auto, true or false, not {t.bf16!r}")
        if t.grad_accum < 1 or t.batch_size < 1 or t.epochs < 1:
            raise ValueError("grad_accum, batch_size and epochs must be >= 1")


# ---------------------------------------------------------------------------------------------- rows


def load_rows(data: list[str], row_types: list[str] | None) -> list[dict]:
    from vst.data.io import read_rows  # the data engine's reader (Parquet shards of VST rows)

    rows = [r for path in data for r in read_rows(path, types=row_types)]
    if not rows:
        raise ValueError(f"no rows of types {row_types} in {data}")
    return rows


def mix_replay(rows: list[dict], replay_rows: list[dict], fraction: float, seed: int) -> list[dict]:
    """`rows` plus k = round(len(rows) * fraction / (1 - fraction)) replay rows drawn with a generator seeded by
    `seed` (so `fraction` of the result is replay), without replacement when there are enough, else with."""
    if not 0 <= fraction < 1:
        raise ValueError(f"replay fraction must be in [0, 1), not {fraction}")
    k = round(len(rows) * fraction / (1 - fraction))
    if k == 0:
        return list(rows)
    if not replay_rows:
        raise ValueError(f"{k} replay rows asked for but there are none")
    replace = k > len(replay_rows)
    if replace:
        log.warning(
            "replay: %d rows asked for but only %d exist; drawing with replacement", k, len(replay_rows)
        )
    picks = np.random.default_rng(seed).choice(len(replay_rows), size=k, replace=replace)
    return list(rows) + [replay_rows[i] for i in picks.tolist()]


def _image(data, row_id: str) -> Image.Image:
    raw = data["bytes"] if isinstance(data, dict) else data
    try:
        return Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, TypeError, OSError) as e:
        raise ValueError(f"row {row_id}: an image is not a decodable PNG/JPEG ({e})") from e


def row_messages(row: dict) -> tuple[list[dict], list[Image.Image]]:
    """VST conversations (`<image>` placeholders) as chat messages with image items, plus the row's images
    (opened lazily: sizes are known before any pixel is decoded)."""
    row_id = str(row.get("id", "?"))
    turns, images = row.get("conversations") or [], row.get("images") or []
    n_marks = sum(str(t.get("value", "")).count(IMAGE_PLACEHOLDER) for t in turns)
    if n_marks != len(images):
        raise ValueError(f"row {row_id}: {n_marks} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images")
    if not any(t.get("from") == "gpt" and str(t.get("value", "")).strip() for t in turns):
        raise ValueError(f"row {row_id}: no non-empty gpt turn to learn from")
    messages = []
    for t in turns:
        if t.get("from") not in ROLES:
            raise ValueError(
                f"row {row_id}: unknown speaker {t.get('from')!r} (expected one of {list(ROLES)})"
            )
        content = []
        for k, part in enumerate(str(t["value"]).split(IMAGE_PLACEHOLDER)):
            if k:
                content.append({"type": "image"})
            if part:
                content.append({"type": "text", "text": part})
        messages.append({"role": ROLES[t["from"]], "content": content})
    return messages, [_image(im, row_id) for im in images]


def image_tokens(processor, image: Image.Image) -> int:
    """Visual tokens the processor will make for this image, from its size alone."""
    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    h, w = smart_resize(image.height, image.width, factor, ip.size.shortest_edge, ip.size.longest_edge)
    return (h // ip.patch_size) * (w // ip.patch_size) // ip.merge_size**2


def row_length(row: dict, processor) -> int:
    """The row's exact token count, without decoding its images (for planning and the length limit)."""
    messages, images = row_messages(row)
    text = processor.apply_chat_template(messages, tokenize=False)
    n = len(processor.tokenizer(text)["input_ids"])
    return n + sum(image_tokens(processor, im) - 1 for im in images)


def assistant_labels(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Labels = the assistant turns' tokens (their text and closing <|im_end|>), -100 elsewhere. Found by the
    `<|im_start|>assistant\\n` header that Qwen's chat format puts before every assistant turn."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids, labels, h, i = input_ids.tolist(), torch.full_like(input_ids, IGNORE), len(header), 0
    while i <= len(ids) - h:
        if ids[i : i + h] != header:
            i += 1
            continue
        start = end = i + h
        while end < len(ids) - 1 and ids[end] != im_end:
            end += 1
        labels[start : end + 1] = input_ids[start : end + 1]
        i = end + 1
    return labels


def encode_row(row: dict, processor, rope_index) -> dict:
    """Tokens, shifted targets, the sample's own 3D rope positions and its pixels."""
    messages, images = row_messages(row)
    text = processor.apply_chat_template(messages, tokenize=False)
    rgb = [im.convert("RGB") for im in images]
    enc = processor(text=[text], images=rgb or None, return_tensors="pt")
    input_ids = enc["input_ids"][0]
    position_ids, _ = rope_index(
        enc["input_ids"], mm_token_type_ids=enc["mm_token_type_ids"], image_grid_thw=enc.get("image_grid_thw")
    )
    targets = shift_targets(assistant_labels(input_ids, processor.tokenizer))
    if not (targets != IGNORE).any():
        raise ValueError(f"row {row.get('id', '?')}: no assistant tokens survive tokenization")
    return {
        "input_ids": input_ids,
        "targets": targets,
        "position_ids": position_ids[:, 0],
        "pixel_values": enc.get("pixel_values"),
        "image_grid_thw": enc.get("image_grid_thw"),
    }


class RowDataset(Dataset):
    def __init__(self, rows: list[dict], processor, rope_index):
        self.rows, self.processor, self.rope_index = rows, processor, rope_index

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return encode_row(self.rows[i], self.processor, self.rope_index)


# ---------------------------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Which samples each optimizer step sees: a pure function of (lengths, seed, batching, world size)."""

    lengths: list[int]  # per kept sample
    seed: int
    packing: bool
    pack_tokens: int
    batch_size: int
    grad_accum: int
    world: int

    def epoch(self, e: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, e]).permutation(len(self.lengths)).tolist()
        return plan_micro_batches(
            self.lengths,
            order,
            packing=self.packing,
            pack_tokens=self.pack_tokens,
            batch_size=self.batch_size,
        )

    def steps_in_epoch(self, e: int) -> int:
        return len(self.epoch(e)) // (self.world * self.grad_accum)

    def total_steps(self, epochs: int, max_steps: int | None) -> int:
        if max_steps is not None:
            return max_steps
        return sum(self.steps_in_epoch(e) for e in range(epochs))

    def rank_batches(self, rank: int, start_step: int, total_steps: int):
        """(epoch, this rank's micro-batches) from `start_step` to the end, epoch by epoch; a step is
        `grad_accum` consecutive micro-batches of a rank; leftover micro-batches of an epoch are skipped."""
        step, e = 0, 0
        while step < total_steps:
            per_step = self.world * self.grad_accum
            mbs = self.epoch(e)
            n_steps = min(len(mbs) // per_step, total_steps - step)
            if n_steps == 0:
                raise ValueError(f"epoch {e} has {len(mbs)} micro-batches, fewer than one step's {per_step}")
            skip = max(0, start_step - step)
            if skip < n_steps:
                mine = mbs[: n_steps * per_step][rank :: self.world]
                yield e, mine[skip * self.grad_accum :]
            step, e = step + n_steps, e + 1


# ---------------------------------------------------------------------------------------------- the model


def part_of(param_name: str) -> str:
    if "visual.merger." in param_name:
        return "merger"
    return "vision" if "visual." in param_name else "llm"


def prepare_model(model, t: TrainConfig):
    """Freeze parts, add LoRA adapters to the LLM if asked; returns the model to train."""
    for name, p in model.named_parameters():
        p.requires_grad_(not getattr(t, f"freeze_{part_of(name)}"))
    if t.lora.enabled:
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        targets = rf".*language_model.*\.({'|'.join(t.lora.target_modules)})$"
        lora = PeftLora(
            r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout, target_modules=targets
        )
        model = get_peft_model(model, lora)
        # peft froze everything but the adapters; the vision tower and merger follow their own switches
        for name, p in model.named_parameters():
            if part_of(name) != "llm":
                p.requires_grad_(not getattr(t, f"freeze_{part_of(name)}"))
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


def part_lrs(t: TrainConfig) -> dict[str, float]:
    return {"vision": t.lr_vision, "merger": t.lr_merger, "llm": t.lr}


def param_groups(model, lrs: dict[str, float]) -> list[dict]:
    """One AdamW group per part (vision, merger, llm: the LLM last, where the logged lr is read)."""
    params = {part: [] for part in PARTS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            params[part_of(name)].append(p)
    groups = [{"name": k, "params": v, "lr": lrs[k]} for k, v in params.items() if v]
    if not groups:
        raise ValueError("no trainable parameters")
    return groups


def export_model(model, lora: bool):
    """The plain transformers model to save: LoRA adapters merged into a copy (training keeps its adapters)."""
    return copy.deepcopy(model).merge_and_unload() if lora else model


def token_loss_sum(model, batch: dict) -> torch.Tensor:
    """Summed next-token cross-entropy over the batch's target tokens (normalised by the caller)."""
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    logits = model(**inputs, use_cache=False).logits
    targets = batch["targets"].to(logits.device)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )


# ---------------------------------------------------------------------------------------------- checkpoints


def fingerprint(cfg: SFTConfig, world: int) -> dict:
    """What fixes the data order and schedule; a resumed run must match it."""
    run = {"model": cfg.model, "data": list(cfg.data), "row_types": cfg.row_types, "world": world}
    if cfg.replay.fraction > 0:  # only when on, so checkpoints saved before replay existed still resume
        run["replay"] = asdict(cfg.replay)
    return run | {k: getattr(cfg.train, k) for k in ORDER_KEYS}


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (trainer.json is written last), oldest first."""
    return sorted(p.parent for p in (out / "checkpoints").glob("step-*/trainer.json"))


class NonFiniteLoss(RuntimeError):
    pass


def accumulate(model, micro: list[tuple[dict, int, int]], accelerator) -> tuple[float, int, int]:
    """Forward and backward over one optimizer step's micro-batches (batch, samples, tokens). The loss is divided
    by the step's target-token count over every process, so the gradient is the per-token mean whatever the
    packing, accumulation or world size. Returns (mean loss, tokens, samples), all processes together."""
    counts = [sum(int((b["targets"] != IGNORE).sum()) for b, _, _ in micro), sum(n for _, _, n in micro)]
    counts.append(sum(n for _, n, _ in micro))
    n_targets, n_tokens, n_samples = accelerator.reduce(
        torch.tensor(counts, device=accelerator.device)
    ).tolist()
    world, loss_sum = accelerator.num_processes, torch.zeros((), device=accelerator.device)
    for k, (batch, _, _) in enumerate(micro):
        batch = {key: v.to(accelerator.device) for key, v in batch.items()}
        with (
            accelerator.no_sync(model) if k < len(micro) - 1 else nullcontext()
        ):  # sync gradients once per step
            s = token_loss_sum(model, batch)
            accelerator.backward(s * world / n_targets)  # DDP averages gradients over processes
        loss_sum += s.detach()
    return accelerator.reduce(loss_sum).item() / n_targets, n_tokens, n_samples


# ---------------------------------------------------------------------------------------------- the loop


def train(cfg: SFTConfig) -> dict:
    """Run (or resume) one supervised stage; returns a summary with the final checkpoint path and rates."""
    t, out = cfg.train, Path(cfg.output_dir)
    rows = load_rows(cfg.data, cfg.row_types)
    if cfg.replay.fraction > 0:
        n_stage = len(rows)
        rows = mix_replay(rows, load_rows(cfg.replay.data, cfg.replay.row_types), cfg.replay.fraction, t.seed)
        log.info(
            "replay: mixed %d rows of types %s into %d stage rows (fraction %.2f)",
            len(rows) - n_stage, cfg.replay.row_types, n_stage, cfg.replay.fraction,
        )  # fmt: skip
    cuda = torch.cuda.is_available()
    bf16 = t.bf16 == "true" or (t.bf16 == "auto" and cuda)
    text_only = any(not r.get("images") for r in rows)  # then some batch may leave the vision tower unused
    accelerator = Accelerator(
        cpu=not cuda,  # so that several CPU processes (torchrun / accelerate) use gloo DDP
        mixed_precision="bf16" if bf16 else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=text_only)],
    )
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    if not main:
        log.setLevel(logging.WARNING)
    torch.manual_seed(t.seed)
    if t.cpu_threads:
        torch.set_num_threads(t.cpu_threads)

    model, processor = build_backbone(cfg.model, cache_dir=cfg.cache_dir, seed=t.seed)
    rope_index = model.model.get_rope_index
    lengths = [row_length(r, processor) for r in rows]
    kept = [i for i, n in enumerate(lengths) if n <= t.max_seq_len]
    dropped = len(rows) - len(kept)
    if dropped:
        log.warning(
            "dropped %d of %d rows longer than max_seq_len=%d tokens", dropped, len(rows), t.max_seq_len
        )
    if not kept:
        raise ValueError(f"every row is longer than max_seq_len={t.max_seq_len}")
    rows, lengths = [rows[i] for i in kept], [lengths[i] for i in kept]
    plan = Plan(lengths, t.seed, t.packing, t.pack_tokens, t.batch_size, t.grad_accum, world)
    total = plan.total_steps(t.epochs, t.max_steps)

    if t.packing:
        use_varlen_attention(model)
    if bf16 and not cuda:
        fp32_attention(model)  # CPU flash attention is slower in bf16 than in fp32 (vst/cpu_amp.py)
    model = prepare_model(model, t)
    optimizer = torch.optim.AdamW(param_groups(model, part_lrs(t)), weight_decay=t.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(t.warmup_ratio * total), total)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    step, fp = 0, fingerprint(cfg, world)
    done = checkpoints(out)
    if done:
        meta = json.loads((done[-1] / "trainer.json").read_text())
        if meta["fingerprint"] != fp:
            diff = {
                k: (meta["fingerprint"].get(k), v) for k, v in fp.items() if meta["fingerprint"].get(k) != v
            }
            raise ValueError(
                f"{out} holds checkpoints of a different run (saved vs now: {diff}); use a new output_dir"
            )
        accelerator.load_state(str(done[-1] / "state"))
        step = meta["step"]
        log.info("resuming from %s (step %d of %d)", done[-1], step, total)

    def save(step: int) -> Path:
        d = out / "checkpoints" / f"step-{step:08d}"
        accelerator.save_state(str(d / "state"))
        if main:
            save_backbone(
                export_model(accelerator.unwrap_model(model), t.lora.enabled), processor, d / FINAL_MODEL_DIR
            )
            (d / "trainer.json").write_text(json.dumps({"step": step, "total": total, "fingerprint": fp}))
            for old in checkpoints(out)[: -t.keep_checkpoints]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return d

    wandb_run = None
    if cfg.wandb.enabled and main:
        import wandb

        wandb_run = wandb.init(
            project=cfg.wandb.project, name=cfg.wandb.name, config=asdict(cfg), dir=str(out)
        )

    dataset = RowDataset(rows, processor, rope_index)
    pad_id = processor.tokenizer.pad_token_id

    def collate(samples: list[dict]) -> tuple[dict, int, int]:
        batch = pack(samples) if t.packing else pad(samples, pad_id)
        return batch, len(samples), sum(len(s["input_ids"]) for s in samples)

    metrics_file = out / "metrics.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "stage %s: %d rows (%d dropped), %d steps, %d process(es), packing=%s, %.2fM trainable parameters",
        cfg.stage, len(rows), dropped, total, world, t.packing,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )  # fmt: skip
    start_step, t0 = step, time.perf_counter()
    window = {"loss": 0.0, "n": 0, "tokens": 0, "samples": 0, "t": t0}
    totals = {"tokens": 0, "samples": 0}
    model.train()
    for epoch, batches in plan.rank_batches(rank, step, total):
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=t.num_workers)
        it = iter(loader)
        for _ in range(len(batches) // t.grad_accum):
            loss, n_tokens, n_samples = accumulate(
                model, [next(it) for _ in range(t.grad_accum)], accelerator
            )
            if not math.isfinite(loss):
                last = checkpoints(out)
                raise NonFiniteLoss(
                    f"loss became {loss} at step {step + 1}: stopped without saving. The last good checkpoint is "
                    f"{last[-1] if last else 'none (none saved yet)'}; rerun with the same output_dir to resume "
                    f"from it (e.g. with a lower train.lr)"
                )
            if t.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window["loss"] += loss
            window["n"] += 1
            for key, v in (("tokens", n_tokens), ("samples", n_samples)):
                window[key] += v
                totals[key] += v
            if step % t.log_every == 0 or step == total:
                now = time.perf_counter()
                dt = now - window["t"]
                rec = {
                    "step": step,
                    "epoch": epoch,
                    "loss": window["loss"] / window["n"],
                    "lr": scheduler.get_last_lr()[-1],
                    "tokens_per_s": window["tokens"] / dt,
                    "samples_per_s": window["samples"] / dt,
                    "elapsed_s": now - t0,
                }
                eta = (now - t0) / (step - start_step) * (total - step)
                log.info(
                    "step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | %.1f samples/s | ETA %s",
                    step, total, rec["loss"], rec["lr"], rec["tokens_per_s"], rec["samples_per_s"],
                    time.strftime("%H:%M:%S", time.gmtime(eta)),
                )  # fmt: skip
                if main:
                    with metrics_file.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if wandb_run is not None:
                        wandb_run.log(rec, step=step)
                window = {"loss": 0.0, "n": 0, "tokens": 0, "samples": 0, "t": now}
            if step % t.save_every == 0 and step < total:
                save(step)
    train_s = time.perf_counter() - t0
    last = checkpoints(out)
    if not last or json.loads((last[-1] / "trainer.json").read_text())["step"] != step:
        save(step)
    final = out / FINAL_MODEL_DIR
    if main:
        save_backbone(export_model(accelerator.unwrap_model(model), t.lora.enabled), processor, final)
        log.info("stage %s finished at step %d; checkpoint in %s", cfg.stage, step, final)
    accelerator.wait_for_everyone()
    if wandb_run is not None:
        wandb_run.finish()
    return {
        "main_process": main,
        "model": str(final),
        "steps": step,
        "dropped": dropped,
        "train_s": train_s,
        "tokens_per_s": totals["tokens"] / train_s if train_s else 0.0,
        "samples_per_s": totals["samples"] / train_s if train_s else 0.0,
    }
