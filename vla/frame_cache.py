"""Decode every episode's video frames once and keep them in memory, for training on datasets that fit.

LeRobot decodes each sample's camera frames from the episode video on every access (a seek and a decode per camera).
For the tiny VLA on a 2-core CPU that is ~7-14 ms per sample, 20-40% of a training step, repeated for every one of a
10k-step run's 80k samples although the demo set holds only ~13k frames. Decoded as uint8 those frames take
1.3 GB (2 cameras at 128 px), so decoding each once is far cheaper. The frames come from the dataset reader's own
decoding (same backend, paths, timestamps and tolerance), so a sample is the same tensor with or without the cache.
"""

import logging
import math
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


def decoded_bytes(meta) -> int:
    """Memory that every frame of every (non-depth) camera of the dataset takes decoded as uint8."""
    per_frame = sum(
        math.prod(meta.features[key]["shape"]) for key in meta.video_keys if key not in meta.depth_keys
    )
    return meta.total_frames * per_frame


class CachedVideoQuery:
    """Stands in for a `DatasetReader._query_videos`: the first query of an episode's camera decodes all of that
    episode's frames through the original method; later queries index them."""

    def __init__(self, reader):
        self.reader, self.original = reader, reader._query_videos
        self.episodes: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, query_timestamps: dict[str, list[float]], ep_idx: int) -> dict[str, torch.Tensor]:
        depth = set(self.reader._meta.depth_keys)
        out = (
            self.original({k: ts for k, ts in query_timestamps.items() if k in depth}, ep_idx)
            if depth
            else {}
        )
        for key, ts in query_timestamps.items():
            if key in depth:
                continue
            times, frames = self._episode(key, ep_idx)
            dist, idx = (torch.tensor(ts, dtype=torch.float64)[:, None] - times[None]).abs().min(1)
            if (dist >= self.reader._tolerance_s).any():
                raise ValueError(
                    f"episode {ep_idx}, {key}: timestamps {ts} are not within {self.reader._tolerance_s} s of "
                    "any frame of the episode"
                )
            picked = frames[idx]
            out[key] = (picked if self.reader._return_uint8 else picked.float() / 255).squeeze(0)
        return out

    def _episode(self, key: str, ep_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if (key, ep_idx) not in self.episodes:
            ep = self.reader._meta.episodes[ep_idx]
            rows = range(ep["dataset_from_index"], ep["dataset_to_index"])
            to_rel = self.reader._absolute_to_relative_idx
            rows = list(rows) if to_rel is None else [to_rel[i] for i in rows]
            times = torch.as_tensor(self.reader.hf_dataset.select_columns("timestamp")[rows]["timestamp"])
            frames = self.original({key: times.tolist()}, ep_idx)[key]
            if frames.ndim == 3:  # a one-frame episode comes back squeezed
                frames = frames[None]
            if frames.dtype != torch.uint8:  # float32 x / 255 -> x exactly
                frames = (frames * 255).round().to(torch.uint8)
            self.episodes[key, ep_idx] = (times.to(torch.float64), frames)
        return self.episodes[key, ep_idx]


def cache_frames(dataset, budget_gb: float) -> bool:
    """Serve `dataset`'s camera frames from memory when they fit in `budget_gb`; returns whether it does."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if not isinstance(budget_gb, int | float) or budget_gb < 0:
        raise ValueError(
            f"frame_cache_gb={budget_gb!r}: give the memory budget in GB, >= 0 (0 turns the cache off)"
        )
    if budget_gb == 0 or not isinstance(dataset, LeRobotDataset) or not dataset.meta.video_keys:
        return False
    need = decoded_bytes(dataset.meta)
    if need > budget_gb * 1e9:
        log.info(
            "frame cache off: the decoded frames would take %.1f GB, over frame_cache_gb=%g; decoding per sample",
            need / 1e9, budget_gb,
        )  # fmt: skip
        return False
    reader = dataset._ensure_reader()
    reader._query_videos = CachedVideoQuery(reader)
    log.info("frame cache on: each episode's frames decoded once, up to %.2f GB in memory", need / 1e9)
    return True


@contextmanager
def frame_cache_in_training(budget_gb: float):
    """Make LeRobot's training loop read frames through the cache; wraps the loop's own dataset factory (as
    vla/stats.py does), so everything else stays the stock code path."""
    import lerobot.scripts.lerobot_train as loop

    make = loop.make_train_eval_datasets

    def make_with_cache(cfg):
        dataset, eval_dataset = make(cfg)
        cache_frames(dataset, budget_gb)
        return dataset, eval_dataset

    loop.make_train_eval_datasets = make_with_cache
    try:
        yield
    finally:
        loop.make_train_eval_datasets = make
