"""`vla-train`: fine-tune the VLA on a LeRobot dataset with LeRobot's own training loop.

    vla-train backbone=vst|baseline|PRESET|PATH dataset=ROOT_OR_HUB_ID output_dir=DIR [steps=.. batch_size=..
              lr=.. chunk_size=.. num_workers=.. save_freq=.. seed=.. device=.. policy.<VLAConfig field>=..]
    accelerate launch --multi_gpu --num_processes N -m vla.train ...   (DDP through LeRobot's Accelerator; on
                                                 a CPU-only machine too, with gloo; accelerate's --cpu starts one)

The hydra config becomes a `TrainPipelineConfig` for `lerobot.scripts.lerobot_train.train`, which loads the
dataset (action chunks through delta_timestamps), logs loss / grad norm / samples per second with a progress bar
and ETA, and writes LeRobot checkpoints: <output_dir>/train/checkpoints/<step>/pretrained_model, and
.../checkpoints/last. (LeRobot refuses to start in an existing directory and hydra has already created
<output_dir> for its own files, hence the `train` subdirectory.) Rerunning the same command resumes from
`last` (optimiser, scheduler, RNG and data order), after checking that the policy and dataset settings are
those of the run being resumed; `steps` may be raised to train longer.
"""

import json
import logging
import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from pathlib import Path

import draccus
import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from vla.frame_cache import frame_cache_in_training
from vla.stats import exact_stats_in_training

log = logging.getLogger(__name__)

RUN_SUBDIR = "train"
# Policy settings that may differ between a run and its resumption (they do not change what is learnt).
RESUME_MAY_CHANGE = {
    "device",
    "pretrained_path",
    "pretrained_revision",
    "push_to_hub",
    "repo_id",
    "use_amp",
    "scheduler_decay_steps",  # follows `steps`, which a resume may raise
}


def run_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / RUN_SUBDIR


def last_checkpoint(output_dir: str | Path) -> Path:
    """<output_dir>/train/checkpoints/last/pretrained_model (a LeRobot policy dir, for sim-eval / lerobot-eval)."""
    from lerobot.utils.constants import CHECKPOINTS_DIR, LAST_CHECKPOINT_LINK, PRETRAINED_MODEL_DIR

    return run_dir(output_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT_LINK / PRETRAINED_MODEL_DIR


def dataset_config(dataset: str, repo_id: str | None, video_backend: str | None):
    """A local dataset root (a dir with meta/info.json) or a hub id."""
    from lerobot.configs.default import DatasetConfig

    extra = {} if video_backend is None else {"video_backend": video_backend}
    path = Path(dataset).expanduser()
    if path.exists():
        if not (path / "meta" / "info.json").is_file():
            raise FileNotFoundError(f"dataset={dataset} has no meta/info.json: not a LeRobot dataset root")
        return DatasetConfig(repo_id=repo_id or f"local/{path.resolve().name}", root=str(path), **extra)
    if dataset.count("/") != 1 or dataset.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"dataset={dataset} is neither an existing dataset root nor a hub id (owner/name)"
        )
    return DatasetConfig(repo_id=dataset, **extra)


def policy_config(cfg: DictConfig):
    """VLAConfig from `backbone`, `device` and the `policy` group (any VLAConfig field)."""
    from vla.configuration_vla import VLAConfig

    known = {f.name for f in fields(VLAConfig)}
    overrides = OmegaConf.to_container(cfg.policy, resolve=True) or {}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown policy settings {unknown}; VLAConfig fields are {sorted(known)}")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    overrides.setdefault(
        "use_amp", use_amp(cfg.get("amp", "auto"), device, overrides.get("dtype", "float32"))
    )
    return VLAConfig(
        backbone=str(cfg.backbone),
        backbone_base=str(cfg.backbone_base),
        pipeline_dir=cfg.pipeline_dir,
        cache_dir=cfg.cache_dir,
        device=device,
        **overrides,
    )


def use_amp(amp, device: str, dtype: str) -> bool:
    """amp=auto: bf16 autocast where it pays and is not already there: fp32 weights on a CPU with native bf16."""
    from vst.cpu_amp import native_bf16

    if str(amp).lower() in ("true", "false"):
        return str(amp).lower() == "true"
    if str(amp) != "auto":
        raise ValueError(f"amp must be auto, true or false, not {amp!r}")
    return torch.device(device).type == "cpu" and dtype == "float32" and native_bf16()


def _comparable(policy) -> dict:
    from lerobot.configs import PreTrainedConfig

    encoded = draccus.encode(policy, PreTrainedConfig)
    return {k: v for k, v in encoded.items() if k not in RESUME_MAY_CHANGE}


def check_resumable(checkpoint: Path, policy, dataset) -> None:
    """Resuming with other policy or dataset settings would silently mix two runs: refuse, naming them."""
    saved = json.loads((checkpoint / "train_config.json").read_text())
    old, new = saved["policy"], _comparable(policy)
    # Features are filled in from the dataset by LeRobot; the dataset check below covers them.
    diff = {
        k: (old.get(k), v)
        for k, v in new.items()
        if k not in ("input_features", "output_features") and old.get(k) != v
    }
    for key in ("repo_id", "root"):
        if saved["dataset"].get(key) != getattr(dataset, key):
            diff[f"dataset.{key}"] = (saved["dataset"].get(key), getattr(dataset, key))
    if diff:
        raise ValueError(
            f"{checkpoint} belongs to a run with other settings {diff} (old, new); resume with the same settings "
            "or choose another output_dir (nothing was changed)"
        )


@contextmanager
def lerobot_argv(args: list[str]):
    """LeRobot's config validation reads a few options (--config_path when resuming) from sys.argv; hand it
    exactly these instead of hydra's command line."""
    saved = sys.argv
    sys.argv = [saved[0], *args]
    try:
        yield
    finally:
        sys.argv = saved


def train(cfg: DictConfig) -> Path:
    """Train (or resume) and return the final pretrained_model dir."""
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.scripts.lerobot_train import train as lerobot_train
    from lerobot.utils.constants import CHECKPOINTS_DIR

    from vst.backbone import resolve_backbone

    if cfg.cpu_threads:
        torch.set_num_threads(int(cfg.cpu_threads))
    dataset = dataset_config(str(cfg.dataset), cfg.repo_id, cfg.video_backend)
    policy = policy_config(cfg)
    resolve_backbone(
        policy.backbone,
        {"model": policy.backbone_base, "pipeline_dir": policy.pipeline_dir, "cache_dir": policy.cache_dir},
    )  # a missing backbone fails before LeRobot starts
    out = run_dir(cfg.output_dir)
    last = last_checkpoint(cfg.output_dir)
    resume = last.is_dir()
    if resume:
        check_resumable(last, policy, dataset)
        log.info("resuming from %s", last.resolve())
    elif out.exists():
        raise FileExistsError(
            f"{out} exists but holds no checkpoint ({CHECKPOINTS_DIR}/last): a run that stopped before its first "
            "save; delete it or choose another output_dir (nothing was changed)"
        )
    pipeline = TrainPipelineConfig(
        dataset=dataset,
        policy=policy,
        output_dir=out,
        resume=resume,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        batch_size=cfg.batch_size,
        steps=cfg.steps,
        log_freq=cfg.log_freq,
        save_freq=cfg.save_freq,
        env_eval_freq=0,
        optimizer=policy.get_optimizer_preset(),  # validate() sets them on a fresh run, resuming needs them
        scheduler=policy.get_scheduler_preset(),
    )
    stats = exact_stats_in_training() if cfg.exact_stats and not resume else nullcontext()
    with (
        lerobot_argv([f"--config_path={last}"] if resume else []),
        stats,
        frame_cache_in_training(cfg.frame_cache_gb),
    ):
        lerobot_train(pipeline)  # on resume the checkpoint's saved stats are the ones used, exact or not
    return last


def main_cfg(cfg: DictConfig) -> None:
    final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"vla-train: wrote {run_dir(cfg.output_dir).resolve()} (policy: {final})")


@hydra.main(
    config_path=str(Path(__file__).resolve().parents[1] / "configs"),
    config_name="vla_train",
    version_base="1.3",
)
def main(cfg: DictConfig) -> None:
    main_cfg(cfg)


if __name__ == "__main__":
    main()
