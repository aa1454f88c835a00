"""`vst-train stage=pretrain|sft|cot|rl model=PRESET_OR_PATH data=ROWS output_dir=DIR`: one stage of the pipeline.

pretrain, sft and cot are the same supervised loop (vst/sft.py) with different rows and learning rates
(configs/stage/); rl is GRPO (vst/rl.py). Runs alone or data-parallel under
`accelerate launch --multi_gpu --num_processes N -m vst.train ...` (also on a CPU-only machine, where the
processes use gloo DDP; accelerate's `--cpu` flag starts a single process). Rerunning with the same output_dir
resumes from its last checkpoint.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

SUPERVISED_STAGES = ("pretrain", "sft", "cot")


def sft_config(cfg: DictConfig):
    """The composed hydra config as the checked dataclass (unknown keys and bad values fail here, by name)."""
    from vst.sft import SFTConfig

    raw = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(raw["data"], str):
        raw["data"] = [raw["data"]]
    if isinstance((raw.get("replay") or {}).get("data"), str):  # replay.data=PATH on the command line
        raw["replay"]["data"] = [raw["replay"]["data"]]
    schema = OmegaConf.structured(SFTConfig)
    return OmegaConf.to_object(OmegaConf.merge(schema, raw))


# An absolute path: imported as a console script (not __main__), Hydra would read "../configs" as a Python package.
@hydra.main(
    config_path=str(Path(__file__).resolve().parents[1] / "configs"),
    config_name="vst_train",
    version_base="1.3",
)
def main(cfg: DictConfig) -> None:
    if cfg.stage == "rl":
        from vst.rl import train as train_rl

        summary = train_rl(cfg)
    elif cfg.stage in SUPERVISED_STAGES:
        from vst.sft import train

        summary = train(sft_config(cfg))
    else:
        raise SystemExit(
            f"vst-train: unknown stage {cfg.stage!r}; use one of {', '.join(SUPERVISED_STAGES)}, rl"
        )
    if summary["main_process"]:
        print(f"vst-train: stage {cfg.stage} wrote {summary['model']} ({summary['steps']} steps)")


if __name__ == "__main__":
    main()
