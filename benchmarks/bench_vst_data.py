"""Data-generation speed of `vst-data`: samples/s per skill family and for the default mix, 1 and 2 workers.

Each measurement is a full `build_dataset` run into a temporary directory (planning, rendering, encoding,
Parquet writing, manifest; worker start-up included), so the figures are what the CLI delivers. The target is
100,000 mixed samples in under 60 minutes (about 28 samples/s) on the 2-core development machine.

    .venv/bin/python benchmarks/bench_vst_data.py                 # default sizes (about 3-4 minutes)
    .venv/bin/python benchmarks/bench_vst_data.py --n-mixed 3000  # steadier numbers

The machine is usually shared with other jobs: compare the 1- and 2-worker columns of one run (ratios hold up
under load better than absolute rates) and look at the load average printed with the table.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from vst.data.dataset import build_dataset  # noqa: E402
from vst.data.generate import DataConfig  # noqa: E402
from vst.data.skills import SKILLS  # noqa: E402

FAMILIES = ("single_image", "multi_image", "video", "general")
TARGET_SAMPLES, TARGET_MINUTES = 100_000, 60


def family_config(family: str, seed: int) -> DataConfig:
    skills = [s for s, k in SKILLS.items() if k.family == family]
    row_mix = {"general": 1.0} if family == "general" else {"perception": 1.0}
    return DataConfig(seed=seed, skills=skills, row_mix=row_mix)


def measure(cfg: DataConfig, n: int, workers: int) -> float:
    """Samples per second of one complete build of n samples."""
    out = Path(tempfile.mkdtemp(prefix="bench_vst_data_"))
    try:
        t0 = time.perf_counter()
        build_dataset(cfg, n, out, workers=workers, shard_size=max(1, n // 4), progress=False)
        return n / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-mixed", type=int, default=1200, help="samples for the default-mix measurement")
    ap.add_argument(
        "--n-family", type=int, default=400, help="samples per family measurement (video: a quarter)"
    )
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    load_before = os.getloadavg()
    startup = {
        w: 2 / measure(family_config("general", seed=3), 2, w) for w in workers
    }  # seconds for 2 samples
    print("start-up + 2 samples: " + "  ".join(f"{w}w {t:.1f} s" for w, t in startup.items()), flush=True)
    rows = []
    for family in FAMILIES:
        n = max(8, args.n_family // 4) if family == "video" else args.n_family
        rates = {w: measure(family_config(family, seed=1), n, w) for w in workers}
        rows.append((family, n, rates))
        print(
            f"{family:13s} n={n:5d}  " + "  ".join(f"{w}w {r:6.1f}/s" for w, r in rates.items()), flush=True
        )
    mixed = {w: measure(DataConfig(seed=2), args.n_mixed, w) for w in workers}
    rows.append(("mixed (default)", args.n_mixed, mixed))
    load_after = os.getloadavg()

    print(
        "\n| family | samples | "
        + " | ".join(f"{w} worker{'s' * (w > 1)} (samples/s)" for w in workers)
        + " |"
    )
    print("|---|---|" + "---|" * len(workers))
    for family, n, rates in rows:
        print(f"| {family} | {n} | " + " | ".join(f"{rates[w]:.1f}" for w in workers) + " |")
    best = max(mixed.values())
    minutes = TARGET_SAMPLES / best / 60
    print(
        f"\n100,000 mixed samples at {best:.1f} samples/s: {minutes:.0f} min "
        f"(target < {TARGET_MINUTES} min: {'met' if minutes < TARGET_MINUTES else 'NOT met'}); "
        f"speed-up {workers[-1]} vs {workers[0]} workers on the mix: {mixed[workers[-1]] / mixed[workers[0]]:.2f}x"
    )
    print(
        f"start-up (pool spawn, imports, GL context) is included: {', '.join(f'{w}w {t:.1f} s' for w, t in startup.items())}"
    )
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rates": {f: {str(w): r for w, r in rates.items()} for f, _, rates in rows},
                    "minutes_for_100k": minutes,
                    "startup_s": startup,
                    "load_before": load_before,
                    "load_after": load_after,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
