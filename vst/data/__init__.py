"""The VST spatial data engine: simulated scenes -> VST-style rows (perception, CoT, RL, general) in Parquet.

Modules, in pipeline order: scene (sampling) -> render (RGB, depth, segmentation) -> skills (questions from
ground truth) -> rows (row schema and the meta_info contract) -> generate (one sample) -> dataset (shards,
manifest, workers, resume) -> io (read/write Parquet, LLaVA export) -> preview (contact sheets) -> cli.
The names below are importable from `vst.data` directly; they load their module on first use so that reading
the contract (`vst.data.rows`) never pulls in the renderer.
"""

import importlib

_API = {
    "read_rows": "io",
    "write_shard": "io",
    "decode_images": "io",
    "export_llava": "io",
    "DataFileError": "io",
    "build_dataset": "dataset",
    "DataConfig": "generate",
    "generate_row": "generate",
    "generate_rows": "generate",
    "plan_sample": "generate",
    "GenerationError": "generate",
    "SKILLS": "skills",
    "resolve_skills": "skills",
    "write_previews": "preview",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'vst.data' has no attribute {name!r}")


__all__ = sorted(_API)
