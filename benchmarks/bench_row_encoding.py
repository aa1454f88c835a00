"""SFT row encoding (chat template, processor, rope positions, labels) with transformers' own processor-kwargs
validation vs the cached one of vst/hf_fixes.py: same rows, same processor, one run, side by side.

    .venv/bin/python benchmarks/bench_row_encoding.py            # tiny preset, 200 data-engine rows, 1 thread

The two modes alternate in blocks over the same rows, so a drifting machine load hits both alike; the encoded
tensors must be identical. Writes <output_dir>/bench_row_encoding.json.
"""

import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import processing_utils

from vst.backbone import build_backbone
from vst.data.generate import DataConfig, generate_rows
from vst.sft import encode_row

DEFAULTS = {
    "model": "tiny",
    "rows": 200,
    "reps": 3,
    "seed": 0,
    "threads": 1,
    "output_dir": "outputs/bench/row_encoding",
}


def encode_all(rows, processor, rope_index) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    out = [encode_row(r, processor, rope_index) for r in rows]
    return out, (time.perf_counter() - t0) / len(rows) * 1e3


def main() -> None:
    opts = OmegaConf.merge(DEFAULTS, OmegaConf.from_cli(sys.argv[1:]))
    torch.set_num_threads(opts.threads)
    rows = generate_rows(
        DataConfig(seed=opts.seed, row_mix={"perception": 3, "cot": 1, "rl": 1, "general": 1}),
        range(opts.rows),
    )
    model, processor = build_backbone(opts.model, seed=opts.seed)  # installs the cached validation
    cached = processing_utils.validate_typed_dict
    modes = {"transformers": cached.__wrapped__, "cached": cached}
    ms, encoded = {name: [] for name in modes}, {}
    encode_all(rows[:5], processor, model.model.get_rope_index)  # warm-up
    for _ in range(opts.reps):
        for name, validate in modes.items():
            processing_utils.validate_typed_dict = validate
            encoded[name], t = encode_all(rows, processor, model.model.get_rope_index)
            ms[name].append(t)
    processing_utils.validate_typed_dict = cached
    same = all(
        a.keys() == b.keys() and all(a[k] is None and b[k] is None or torch.equal(a[k], b[k]) for k in a)
        for a, b in zip(encoded["transformers"], encoded["cached"])
    )
    best = {name: min(v) for name, v in ms.items()}
    result = {
        "config": OmegaConf.to_container(opts),
        "ms_per_row": ms,
        "speedup": best["transformers"] / best["cached"],
        "identical": same,
    }
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_row_encoding.json").write_text(json.dumps(result, indent=2))
    for name, v in ms.items():
        print(f"{name:>12}: {best[name]:6.2f} ms/row (best of {opts.reps}; all {[round(x, 2) for x in v]})")
    print(
        f"cached / transformers: {result['speedup']:.2f}x faster, outputs identical: {same} "
        f"({opts.rows} rows, {opts.threads} thread(s); wrote {out / 'bench_row_encoding.json'})"
    )
    if not same:
        raise SystemExit("the cached validation changed the encoded rows")


if __name__ == "__main__":
    main()
