"""Build a sharded dataset: plan -> worker processes -> shard-NNNNN.parquet + manifest.json, resumable.

Shard k holds samples [k * shard_size, (k + 1) * shard_size). A shard is written under a temporary name and
renamed when complete, so a file named `shard-*.parquet` is always whole; a rerun keeps those and makes only
the missing ones. The manifest records the config fingerprint and refuses to mix configs in one directory.
"""

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from .generate import DataConfig, generate_rows, plan_sample
from .io import write_shard
from .rows import GENERATOR_VERSION
from .scene import HELD_OUT_COMBOS
from .skills import SKILLS

log = logging.getLogger(__name__)
CHUNK = 16  # samples per worker task: small enough for smooth progress, large enough to amortise IPC


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.parquet"


def fingerprint(cfg: DataConfig, shard_size: int) -> str:
    blob = json.dumps({"config": cfg.to_dict(), "shard_size": shard_size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _rows_in(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return None


# Worker processes receive the config once and keep their renderer between tasks.
_WORKER_CFG: DataConfig | None = None


def _init_worker(cfg: DataConfig) -> None:
    global _WORKER_CFG
    _WORKER_CFG = cfg


def _work(span: tuple[int, int]) -> list[dict]:
    return generate_rows(_WORKER_CFG, range(*span))


def build_dataset(
    cfg: DataConfig, n: int, output_dir, *, workers: int = 1, shard_size: int = 1000, progress: bool = True
) -> dict:
    """Generate samples 0..n-1 into `output_dir`; returns the manifest. Finished shards are kept."""
    if n <= 0:
        raise ValueError(f"n={n}: need at least one sample")
    if shard_size <= 0:
        raise ValueError(f"shard_size={shard_size}: must be positive")
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg, shard_size)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") != fp:
            diff = _config_diff(old.get("config", {}), {**cfg.to_dict(), "shard_size": shard_size})
            raise ValueError(
                f"{out} already holds a dataset made with a different config ({diff}); "
                "use a new output_dir (nothing was changed)"
            )
    elif any(out.glob("shard-*.parquet")):
        raise ValueError(
            f"{out} holds shards but no manifest.json, so their config is unknown; use a new output_dir"
        )
    for stale in out.glob("shard-*.parquet.tmp-*"):  # left by an interrupted run; never a finished shard
        stale.unlink()

    plan = [plan_sample(cfg, i) for i in range(n)]
    n_shards = math.ceil(n / shard_size)
    spans = [(k * shard_size, min(n, (k + 1) * shard_size)) for k in range(n_shards)]
    todo = [k for k, (a, b) in enumerate(spans) if _rows_in(out / shard_name(k)) != b - a]
    kept = n_shards - len(todo)
    if kept:
        log.info("keeping %d finished shard(s) in %s", kept, out)
    shards = {k: None for k in range(n_shards)}

    def manifest(complete: bool) -> dict:
        counts = {"skill": Counter(), "type": Counter(), "family": Counter()}
        for skill, row_type, _ in plan:
            counts["skill"][skill] += 1
            counts["type"][row_type] += 1
            counts["family"][SKILLS[skill].family] += 1
        return {
            "generator_version": GENERATOR_VERSION,
            "fingerprint": fp,
            "complete": complete,
            "n": n,
            "split": cfg.split,
            "seed": cfg.seed,
            "sample_seeds": "sample i: meta_info.seed = first 8 bytes (little-endian) of blake2b-256 of "
            "'vst-sim|<seed>|<split code>|<i>', shifted right by 1; split codes train 0, bench 1, bench_general 2",
            "shard_size": shard_size,
            "config": {**cfg.to_dict(), "shard_size": shard_size},
            "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
            "held_out_combos": sorted(f"{c} {k}" for c, k in HELD_OUT_COMBOS),
            "shards": [
                {
                    "file": shard_name(k),
                    "first_index": spans[k][0],
                    "rows": spans[k][1] - spans[k][0],
                    "sha256": shards[k],
                }
                for k in range(n_shards)
                if shards[k] is not None
            ],
        }

    for k in range(n_shards):
        if k not in todo:
            shards[k] = _sha256(out / shard_name(k))
    _atomic_json(manifest_path, manifest(complete=False))

    tasks = [
        (k, (a, min(a + CHUNK, spans[k][1]))) for k in todo for a in range(spans[k][0], spans[k][1], CHUNK)
    ]
    buffers: dict[int, list[dict]] = {k: [] for k in todo}
    bar = tqdm(
        total=sum(spans[k][1] - spans[k][0] for k in todo),
        unit="sample",
        desc="vst-data",
        disable=not progress,
        smoothing=0.05,
    )

    def take(k: int, rows: list[dict]) -> None:
        buffers[k].extend(rows)
        bar.update(len(rows))
        if len(buffers[k]) == spans[k][1] - spans[k][0]:
            path = out / shard_name(k)
            write_shard(buffers.pop(k), path)
            shards[k] = _sha256(path)
            _atomic_json(manifest_path, manifest(complete=False))

    try:
        if workers == 1 or len(tasks) <= 1:
            for k, span in tasks:
                take(k, generate_rows(cfg, range(*span)))
        else:
            os.environ.setdefault(
                "MUJOCO_GL", "egl"
            )  # inherited by the spawned workers before they import mujoco
            ctx = mp.get_context("spawn")  # fresh processes: GL contexts do not survive fork
            with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
                for (k, _), rows in zip(tasks, pool.imap(_work, [span for _, span in tasks])):
                    take(k, rows)
    finally:
        bar.close()
    final = manifest(complete=True)
    _atomic_json(manifest_path, final)
    return json.loads(json.dumps(final))  # exactly what manifest.json holds (tuples become lists)


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_diff(old: dict, new: dict) -> str:
    old, new = _flat(old), _flat(json.loads(json.dumps(new)))  # compare as stored (tuples are lists in JSON)
    changed = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return "; ".join(changed[:6]) or "generator changed"
