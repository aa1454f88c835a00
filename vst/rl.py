"""The RL stage: GRPO with DAPO-style tweaks on the rule-checkable (`rl`) rows, rewarded by vst/rewards.py.

Read top to bottom: config -> rows to prompts (the conversation up to its reference answer, with its images and
`meta_info` for the rewards) -> TRL's `GRPOTrainer` set up as VST's recipe (5 rollouts per prompt at temperature 1.0,
clip 0.2 low / 0.28 high, no KL, token-level "dapo" loss, reward 0.5 accuracy + 0.5 format) through the small
subclass in vst/grpo.py (online filtering of equal-reward groups, NaN stop, per-part LRs) -> logging -> the run,
which resumes from its last checkpoint, and the final `save_pretrained` checkpoint in <output_dir>/model.

Settings: the `rl:` block of configs/stage/rl.yaml (GRPOSettings below) plus the shared `train:` block
(learning rates, steps, freezing, LoRA, checkpoints, logging; `packing`, `pack_tokens` and `batch_size` do not apply:
a step is `rl.prompts_per_step` prompts x `rl.num_generations` completions, and `train.max_seq_len` bounds
prompt + completion).
"""

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from datasets import Dataset, List
from datasets import Image as ImageFeature
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig

from vst.backbone import FINAL_MODEL_DIR, build_backbone, save_backbone
from vst.grpo import VSTGRPOTrainer
from vst.rewards import RewardConfig
from vst.scoring import parse_meta
from vst.sft import (
    TrainConfig,
    WandbConfig,
    export_model,
    image_tokens,
    part_lrs,
    prepare_model,
    row_messages,
)

log = logging.getLogger(__name__)

# TRL's clipped-ratio losses (the ones epsilon_high applies to).
LOSS_TYPES = ("dapo", "bnpo", "grpo", "dr_grpo")


# ---------------------------------------------------------------------------------------------- config


@dataclass
class GRPOSettings:
    """The `rl:` block. Defaults are VST's RL recipe (VST.md, Training recipe: RL)."""

    num_generations: int = 5  # rollouts per prompt (the group)
    prompts_per_step: int = 8  # prompts per optimizer step, over all processes and accumulation steps
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 256  # tokens per rollout
    epsilon_low: float = 0.2  # ratio clipped below at 1 - epsilon_low (for negative advantages)
    epsilon_high: float = 0.28  # ... and above at 1 + epsilon_high (positive advantages): DAPO's clip-higher
    beta: float = 0.0  # KL coefficient against the starting model; 0 = no KL term and no reference model
    loss_type: str = "dapo"  # token-level normalisation over the whole step (no length bias)
    scale_rewards: str = "group"  # advantages = (r - group mean) / group std; "batch" or "none" also work
    online_filter: bool = True  # drop groups whose rewards are all equal from the loss
    num_iterations: int = 1  # updates per generated batch (1 = on-policy)
    mask_truncated_completions: bool = False  # leave completions cut at max_completion_length out of the loss
    log_completions: bool = False  # also write every logged step's completions and rewards to Parquet
    reward: RewardConfig = field(default_factory=RewardConfig)  # 0.5 accuracy + 0.5 format


@dataclass
class RLConfig:
    """The composed `vst-train stage=rl` config."""

    stage: str
    model: str  # preset, checkpoint directory or hub id to start from (usually the CoT checkpoint)
    data: list[str]  # Parquet files / directories / globs of VST rows
    output_dir: str
    row_types: list[str] | None = None  # configs/stage/rl.yaml: [rl]
    cache_dir: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    rl: GRPOSettings = field(default_factory=GRPOSettings)

    def __post_init__(self):
        r, t = self.rl, self.train
        if isinstance(self.data, str):
            self.data = [self.data]
        if r.num_generations < 2:
            raise ValueError(
                f"rl.num_generations={r.num_generations}: GRPO needs at least 2 rollouts per prompt"
            )
        if r.prompts_per_step < 1 or r.max_completion_length < 1:
            raise ValueError("rl.prompts_per_step and rl.max_completion_length must be >= 1")
        if r.loss_type not in LOSS_TYPES:
            raise ValueError(f"rl.loss_type={r.loss_type!r} is not one of {LOSS_TYPES}")
        if r.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"rl.scale_rewards={r.scale_rewards!r}: use group, batch or none")
        if not (0 <= r.epsilon_low < 1 and r.epsilon_high >= 0):
            raise ValueError(f"rl.epsilon_low={r.epsilon_low} must be in [0, 1), epsilon_high >= 0")
        if r.temperature <= 0 or r.beta < 0:
            raise ValueError("rl.temperature must be > 0 and rl.beta >= 0")
        if not 0 <= t.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1)")
        if t.lora.enabled and (t.freeze_llm or not (t.freeze_vision and t.freeze_merger)):
            raise ValueError(
                "rl with train.lora.enabled=true needs train.freeze_vision=true, train.freeze_merger=true and "
                "train.freeze_llm=false: Trainer checkpoints of a LoRA model keep only the adapters, so a resumed "
                "run would lose a trained vision tower or merger"
            )
        t.bf16 = str(t.bf16).lower()
        if t.bf16 not in ("auto", "true", "false"):
            raise ValueError(f"train.bf16 must be auto, true or false, not {t.bf16!r}")
        if t.grad_accum < 1 or t.epochs < 1:
            raise ValueError("train.grad_accum and train.epochs must be >= 1")


def rl_config(cfg: DictConfig) -> RLConfig:
    """The composed hydra config as the checked dataclass (unknown keys and bad values fail here, by name)."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(raw.get("data"), str):
        raw["data"] = [raw["data"]]
    replay = raw.pop("replay", None) or {}  # the supervised stages' option (vst_train.yaml)
    if replay.get("fraction"):
        raise ValueError(
            "replay mixes rows into the supervised stages; the rl stage takes no replay.fraction"
        )
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RLConfig), raw))


# ---------------------------------------------------------------------------------------------- rows


def load_rl_rows(data: list[str], row_types: list[str] | None) -> list[dict]:
    from vst.data.io import read_rows

    rows = [r for path in data for r in read_rows(path) if row_types is None or r.get("type") in row_types]
    if not rows:
        raise ValueError(
            f"no rows of types {row_types} in {data}: the RL stage needs rule-checkable rows "
            f"(e.g. vst-data 'row_mix={{perception: 0, cot: 0, rl: 1, general: 0}}')"
        )
    return rows


def rl_example(row: dict) -> tuple[dict, list]:
    """A row as a GRPO prompt: the conversation before its last (reference) answer, the row's images as encoded
    bytes, and its `meta_info` (JSON), which the reward functions score the completions against. Also returns the
    row's images opened lazily (their sizes give the visual token count without decoding)."""
    row_id = row.get("id", "?")
    messages, images = row_messages(row)  # checks speakers, placeholders vs images, image bytes
    last_answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = messages[:last_answer]
    if not any(m["role"] == "user" for m in prompt):
        raise ValueError(f"row {row_id}: no question before its answer")
    try:
        parse_meta(row.get("meta_info"))
    except ValueError as e:
        raise ValueError(f"row {row_id}: unusable meta_info, which the RL rewards score against ({e})") from e
    meta = row["meta_info"]
    raw = [im["bytes"] if isinstance(im, dict) else im for im in row.get("images") or []]
    example = {
        "prompt": prompt,
        "images": [{"bytes": b, "path": None} for b in raw],
        "meta_info": meta if isinstance(meta, str) else json.dumps(meta),
    }
    return example, images


def prompt_length(prompt: list[dict], images: list, processor) -> int:
    """Tokens of the rendered prompt (chat template, generation header, visual tokens)."""
    text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    n = len(processor.tokenizer(text)["input_ids"])
    return n + sum(image_tokens(processor, im) - 1 for im in images)


def rl_dataset(rows: list[dict], processor, max_tokens: int) -> tuple[Dataset, int]:
    """The prompts as a `datasets.Dataset` (what GRPOTrainer takes), without those whose prompt leaves less than
    the completion budget; returns the dataset and how many were dropped."""
    kept = []
    for row in rows:
        example, images = rl_example(row)
        if prompt_length(example["prompt"], images, processor) <= max_tokens:
            kept.append(example)
    if not kept:
        raise ValueError(
            f"every prompt is longer than train.max_seq_len - rl.max_completion_length = {max_tokens}"
        )
    ds = Dataset.from_list(kept).cast_column("images", List(ImageFeature()))
    return ds, len(rows) - len(kept)


# ---------------------------------------------------------------------------------------------- logging


class RunLog(TrainerCallback):
    """A log line per `train.log_every` steps (reward, accuracy, format rate, filtered groups, tokens/s, ETA) and
    the same record in <output_dir>/metrics.jsonl; TRL's own metrics go to wandb when enabled."""

    FIELDS = {
        "reward": "reward",
        "accuracy": "rewards/accuracy_reward/mean",
        "format": "rewards/format_reward/mean",
        "filtered_groups": "filtered_groups",
        "loss": "loss",
        "lr": "learning_rate",
        "completion_tokens": "completions/mean_length",
        "entropy": "entropy",
    }

    def __init__(self, metrics_file: Path):
        self.metrics_file = metrics_file
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = self.t_last = time.perf_counter()
        self.start_step = state.global_step
        self.tokens_start = self.tokens_last = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        now = time.perf_counter()
        rec = {"step": state.global_step, "epoch": logs.get("epoch")}
        rec |= {k: logs.get(src) for k, src in self.FIELDS.items()}
        if optimizer := kwargs.get("optimizer"):  # Trainer logs the first group's lr (the vision tower's)
            rec["lr"] = optimizer.param_groups[-1]["lr"]
        rec["tokens_per_s"] = (state.num_input_tokens_seen - self.tokens_last) / max(now - self.t_last, 1e-9)
        rec["elapsed_s"] = now - self.t0
        done = max(state.global_step - self.start_step, 1)
        eta = (now - self.t0) / done * (state.max_steps - state.global_step)
        log.info(
            "step %d/%d | reward %.3f | accuracy %.3f | format %.3f | filtered %.0f%% | loss %.4f | %.0f tok/s | ETA %s",
            state.global_step, state.max_steps, rec["reward"], rec["accuracy"] or 0.0, rec["format"] or 0.0,
            100 * (rec["filtered_groups"] or 0.0), rec["loss"] or 0.0, rec["tokens_per_s"],
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )  # fmt: skip
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        self.history.append(rec)
        self.t_last, self.tokens_last = now, state.num_input_tokens_seen


class SaveAtEnd(TrainerCallback):
    """Checkpoint the last step too (Trainer only saves every `save_steps`), so a finished run resumes as done."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True


# ---------------------------------------------------------------------------------------------- the run


def fingerprint(cfg: RLConfig, world: int) -> dict:
    """What fixes the prompt order and the batch layout; a resumed run must match it."""
    t, r = cfg.train, cfg.rl
    return {
        "model": cfg.model,
        "data": list(cfg.data),
        "row_types": cfg.row_types,
        "world": world,
        "seed": t.seed,
        "grad_accum": t.grad_accum,
        "prompts_per_step": r.prompts_per_step,
        "num_generations": r.num_generations,
        "max_completion_length": r.max_completion_length,
    }


def grpo_args(cfg: RLConfig, out: Path, world: int) -> GRPOConfig:
    t, r = cfg.train, cfg.rl
    per_device, rem = divmod(r.prompts_per_step * r.num_generations, world * t.grad_accum)
    if rem or per_device == 0:
        raise ValueError(
            f"rl.prompts_per_step x rl.num_generations = {r.prompts_per_step * r.num_generations} completions per "
            f"step do not split evenly over {world} process(es) x train.grad_accum={t.grad_accum}"
        )
    cuda = torch.cuda.is_available()
    if cfg.wandb.enabled:
        os.environ.setdefault("WANDB_PROJECT", cfg.wandb.project)
    return GRPOConfig(
        output_dir=str(out / "checkpoints"),
        # the batch: per_device completions per micro-batch; groups may span processes (rewards are gathered)
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=t.grad_accum,
        num_generations=r.num_generations,
        max_completion_length=r.max_completion_length,
        temperature=r.temperature,
        top_p=r.top_p,
        # the objective
        epsilon=r.epsilon_low,
        epsilon_high=r.epsilon_high,
        beta=r.beta,
        loss_type=r.loss_type,
        scale_rewards=r.scale_rewards,
        num_iterations=r.num_iterations,
        mask_truncated_completions=r.mask_truncated_completions,
        reward_weights=r.reward.weights,
        # the optimizer (per-part learning rates: VSTGRPOTrainer.create_optimizer)
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        bf16=t.bf16 == "true" or (t.bf16 == "auto" and cuda),
        gradient_checkpointing=t.gradient_checkpointing,
        use_cpu=not cuda,  # several CPU processes (accelerate launch / torchrun) then use gloo DDP
        seed=t.seed,
        dataloader_num_workers=t.num_workers,
        # logging and checkpoints
        logging_steps=t.log_every,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=t.keep_checkpoints,
        log_completions=r.log_completions,
        num_completions_to_print=0,
        report_to=["wandb"] if cfg.wandb.enabled else "none",
        run_name=cfg.wandb.name,
        disable_tqdm=True,
    )


def build_trainer(cfg: RLConfig, args: GRPOConfig, reward_funcs: list | None = None, callbacks=()):
    """The starting model (frozen parts, LoRA), its prompts and the trainer as the recipe sets them up; returns the
    trainer, the processor to save with the result (the starting one, unchanged) and how many prompts were dropped
    as too long. `reward_funcs` replaces the configured rewards (tests)."""
    t, r = cfg.train, cfg.rl
    rows = load_rl_rows(cfg.data, cfg.row_types)
    model, processor = build_backbone(cfg.model, cache_dir=cfg.cache_dir, seed=t.seed)
    dataset, dropped = rl_dataset(rows, processor, t.max_seq_len - r.max_completion_length)
    if dropped:
        log.warning(
            "dropped %d of %d prompts longer than train.max_seq_len=%d minus rl.max_completion_length=%d tokens",
            dropped, len(rows), t.max_seq_len, r.max_completion_length,
        )  # fmt: skip
    model = prepare_model(model, replace(t, gradient_checkpointing=False))  # Trainer turns checkpointing on
    # Rollouts need left padding (generation, and TRL aligns the image-token ids with left-padded prompts).
    rollout_processor = copy.deepcopy(processor)
    rollout_processor.tokenizer.padding_side = "left"
    trainer = VSTGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs if reward_funcs is not None else r.reward.functions(),
        args=args,
        train_dataset=dataset,
        processing_class=rollout_processor,
        callbacks=list(callbacks),
        online_filter=r.online_filter,
        part_lrs=part_lrs(t),
    )
    trainer.remove_callback(PrinterCallback)  # RunLog writes the log lines
    trainer.remove_callback(ProgressCallback)
    return trainer, processor, dropped


def train(cfg: RLConfig | DictConfig, reward_funcs: list | None = None) -> dict:
    """Run (or resume) the RL stage; returns a summary with the final checkpoint path.

    `reward_funcs` replaces the configured rewards (for tests); they are weighted by `rl.reward.weights`.
    """
    cfg = cfg if isinstance(cfg, RLConfig) else rl_config(cfg)
    t, r, out = cfg.train, cfg.rl, Path(cfg.output_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if t.cpu_threads:
        torch.set_num_threads(t.cpu_threads)
    args = grpo_args(cfg, out, world)
    main = args.process_index == 0
    if not main:
        log.setLevel(logging.WARNING)

    fp, run_file = fingerprint(cfg, world), out / "rl_run.json"
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last is not None and run_file.is_file():
        saved = json.loads(run_file.read_text())["fingerprint"]
        if saved != fp:
            diff = {k: (saved.get(k), v) for k, v in fp.items() if saved.get(k) != v}
            raise ValueError(
                f"{out} holds checkpoints of a different run (saved vs now: {diff}); use a new output_dir"
            )

    run_log = RunLog(out / "metrics.jsonl")
    trainer, processor, dropped = build_trainer(cfg, args, reward_funcs, callbacks=[run_log, SaveAtEnd()])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"fingerprint": fp, "config": asdict(cfg)}, indent=1, default=str))
    log.info(
        "stage rl: %d prompts (%d dropped), %d x %d rollouts per step, %d process(es), %.2fM trainable parameters%s",
        len(trainer.train_dataset), dropped, r.prompts_per_step, r.num_generations, world,
        sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) / 1e6,
        f"; resuming from {last}" if last else "",
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    train_s = time.perf_counter() - t0

    final = out / FINAL_MODEL_DIR
    if main:
        policy = export_model(trainer.accelerator.unwrap_model(trainer.model), t.lora.enabled)
        save_backbone(policy, processor, final)
        log.info("stage rl finished at step %d; checkpoint in %s", trainer.state.global_step, final)
    trainer.accelerator.wait_for_everyone()
    tokens = trainer.state.num_input_tokens_seen - getattr(run_log, "tokens_start", 0)
    return {
        "main_process": main,
        "model": str(final),
        "steps": trainer.state.global_step,
        "dropped": dropped,
        "train_s": train_s,
        "tokens_per_s": tokens / train_s if train_s else 0.0,
        "reward": run_log.history[-1]["reward"] if run_log.history else None,
    }
