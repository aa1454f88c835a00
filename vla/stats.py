"""The data's own statistics for the low-dimensional features, over every frame.

LeRobot stores, for each quantile, the frame-weighted mean of the per-episode quantiles. For actions that is much
narrower than the data's q01/q99 (on 80 expert demos 16-20% of the dx/dy actions fell outside it and a q01/q99
normaliser clipped them into the end bins), and a binary gripper that stays open in most episodes gets a q99 near
-1, so "close" can no longer be decoded. `sim-record` writes these stats into its datasets; `vla-train
exact_stats=true` recomputes them in memory for any other dataset (a hub one included) without touching it.
"""

from contextlib import contextmanager

import numpy as np

KEYS = ("observation.state", "action")


def frame_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min/max/mean/std/count and LeRobot's quantile keys (q01 ... q99) of an (N, D) array."""
    from lerobot.datasets.compute_stats import DEFAULT_QUANTILES

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or not len(values):
        raise ValueError(f"expected an (N, D) array of frames with N > 0, got shape {values.shape}")
    return {
        "min": values.min(0),
        "max": values.max(0),
        "mean": values.mean(0),
        "std": values.std(0),
        "count": np.array([len(values)]),
    } | {f"q{round(q * 100):02d}": np.quantile(values, q, axis=0) for q in DEFAULT_QUANTILES}


def dataset_frame_stats(dataset, keys: tuple[str, ...] = KEYS) -> dict[str, dict[str, np.ndarray]]:
    """Exact stats of a loaded LeRobotDataset's low-dimensional columns (no video is decoded)."""
    table = dataset.hf_dataset.with_format(None)
    return {k: frame_stats(np.asarray(table[k])) for k in keys if k in dataset.features}


@contextmanager
def exact_stats_in_training():
    """Make LeRobot's training loop see exact state/action stats: they feed the normaliser and are saved with
    the checkpoint's processors. Wraps the loop's own dataset factory, so its code path stays the stock one."""
    import lerobot.scripts.lerobot_train as loop

    make = loop.make_train_eval_datasets

    def make_with_exact_stats(cfg):
        dataset, eval_dataset = make(cfg)
        for key, stats in dataset_frame_stats(dataset).items():
            dataset.meta.stats[key] = stats
        return dataset, eval_dataset

    loop.make_train_eval_datasets = make_with_exact_stats
    try:
        yield
    finally:
        loop.make_train_eval_datasets = make
