"""`vst-data`: generate VST-style spatial rows from simulated scenes into sharded Parquet (see configs/vst_data.yaml)."""

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .dataset import build_dataset
from .generate import DataConfig, GenerationError
from .io import DataFileError, export_llava
from .preview import write_previews
from .render import close_renderer
from .scene import SceneError

log = logging.getLogger("vst-data")
RUN_KEYS = (
    "output_dir",
    "n",
    "per_skill",
    "workers",
    "shard_size",
    "progress",
    "preview",
    "preview_per_skill",
    "export_llava",
)


def run(cfg: dict) -> dict:
    """The whole command on a plain dict config (what the hydra entry point and tests call)."""
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = set(cfg) - fields - set(RUN_KEYS) - {"hydra"}
    if unknown:
        raise ValueError(f"unknown vst-data option(s): {', '.join(sorted(unknown))}")
    data_cfg = DataConfig(**{k: v for k, v in cfg.items() if k in fields})
    n = cfg.get("n", 1000)
    if cfg.get("per_skill"):
        pool = data_cfg.general_skills if data_cfg.split == "bench_general" else data_cfg.spatial_skills
        n = int(cfg["per_skill"]) * len(pool)
    out = Path(cfg["output_dir"])
    manifest = build_dataset(
        data_cfg,
        int(n),
        out,
        workers=int(cfg.get("workers", 1)),
        shard_size=int(cfg.get("shard_size", 1000)),
        progress=bool(cfg.get("progress", True)),
    )
    if cfg.get("preview"):
        sheets = write_previews(out, out / "preview", int(cfg.get("preview_per_skill", 6)))
        log.info("wrote %d contact sheets to %s", len(sheets), out / "preview")
    if cfg.get("export_llava"):
        log.info("wrote LLaVA export %s", export_llava(out, out / "llava"))
    return manifest


# An absolute path: hydra resolves a relative config_path inside a package as a Python module, which
# `configs/` (not a package) is not.
@hydra.main(
    config_path=str(Path(__file__).resolve().parents[2] / "configs"),
    config_name="vst_data",
    version_base="1.3",
)
def main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        manifest = run(plain)
    except (ValueError, SceneError, GenerationError, DataFileError, FileNotFoundError) as e:
        sys.exit(f"vst-data: error: {e}")
    finally:
        close_renderer()
    out = Path(plain["output_dir"])
    print(
        f"vst-data: wrote {manifest['n']} rows ({manifest['split']}, seed {manifest['seed']}) in "
        f"{len(manifest['shards'])} shard(s) to {out.resolve()}; manifest {out.resolve() / 'manifest.json'}"
    )


if __name__ == "__main__":
    main()
