"""VLA training batches read from a LeRobot video dataset: decoded per sample (LeRobot's way) vs the frame cache
(vla/frame_cache.py, `vla-train frame_cache_gb=...`).

    .venv/bin/python benchmarks/bench_frame_cache.py [--dataset ROOT] [--batches 60] [--batch 8] [--threads 1]

Without --dataset it records 4 `pick_left_of_bowl` demos at 128 px (the full preset's cameras) into a temporary
directory. Both datasets read the same random batches (vla-train's sampling: frames drawn uniformly, the action
chunk of 8 by delta_timestamps), taking turns so that load on a shared machine hits both alike: trust the ratio.
Prints ms per batch for each, the one-off cost of filling the cache (every episode decoded once), the memory it
holds, and whether every sample was the same tensor both ways.
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from vla.frame_cache import cache_frames, decoded_bytes


def record_demos(root: Path) -> Path:
    from sim.record import record_task

    record_task(
        "pick_left_of_bowl",
        episodes=4,
        first_seed=0,
        noise=0.3,
        image_size=128,
        root=root,
        repo_id="local/bench",
    )
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="a local LeRobotDataset root (default: record 4 demos)")
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    root = Path(args.dataset) if args.dataset else record_demos(Path(tmp.name) / "demos")
    deltas = {"action": [i / 20 for i in range(8)]}
    plain = LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=deltas)
    cached = LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=deltas)
    assert cache_frames(cached, budget_gb=1e3)

    rng = random.Random(0)
    batches = [[rng.randrange(len(plain)) for _ in range(args.batch)] for _ in range(args.batches)]
    t0 = time.perf_counter()  # fill the cache: every episode's cameras decoded once
    for ep in range(plain.meta.total_episodes):
        start = plain.meta.episodes[ep]["dataset_from_index"]
        cached[start]
    fill_s = time.perf_counter() - t0

    seconds = {"decode per sample": 0.0, "frame cache": 0.0}
    same = True
    for batch in batches:
        out = {}
        for name, ds in (("decode per sample", plain), ("frame cache", cached)):
            t = time.perf_counter()
            out[name] = torch.utils.data.default_collate([ds[i] for i in batch])
            seconds[name] += time.perf_counter() - t
        a, b = out.values()
        same &= all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    ms = {k: 1e3 * v / len(batches) for k, v in seconds.items()}
    result = {
        "dataset": str(root),
        "frames": plain.meta.total_frames,
        "episodes": plain.meta.total_episodes,
        "batch": args.batch,
        "threads": args.threads,
        "ms_per_batch": ms,
        "speedup": ms["decode per sample"] / ms["frame cache"],
        "cache_fill_s": fill_s,
        "cache_gb": decoded_bytes(plain.meta) / 1e9,
        "identical_batches": same,
    }
    print(f"| batch of {args.batch} ({plain.meta.total_frames} frames, {args.threads} thread(s)) | ms | x |")
    print("|---|---:|---:|")
    for name, v in ms.items():
        print(f"| {name} | {v:.1f} | {ms['decode per sample'] / v:.2f} |")
    print(f"cache filled in {fill_s:.1f} s, {result['cache_gb']:.2f} GB; identical batches: {same}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
