"""The frame cache serves exactly the tensors LeRobot's per-sample decoding gives, decodes each episode's camera
once, stays off over its memory budget, and reaches LeRobot's training loop."""

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from vla.frame_cache import CachedVideoQuery, cache_frames, decoded_bytes, frame_cache_in_training

# two frames per camera (the previous and the current one) and an action chunk: multi-frame queries and padding
DELTAS = {"observation.images.agentview": [-0.05, 0.0], "observation.images.wrist": [0.0], "action": [i / 20 for i in range(4)]}  # fmt: skip


def dataset(root) -> LeRobotDataset:
    return LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=DELTAS)


def test_cached_samples_equal_decoded_ones(lift_dataset):
    plain, cached = dataset(lift_dataset), dataset(lift_dataset)
    assert cache_frames(cached, budget_gb=1)
    query = cached._ensure_reader()._query_videos
    assert isinstance(query, CachedVideoQuery)
    decodes = []
    original = query.original
    query.original = lambda q, ep: (decodes.append((sorted(q), ep)), original(q, ep))[1]
    for i in [*range(len(plain)), 0, 5]:  # every frame, then two again (served from memory)
        a, b = plain[i], cached[i]
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], (
                i,
                key,
            )
    episodes = plain.meta.total_episodes
    assert sorted(decodes) == sorted(([k], ep) for k in plain.meta.video_keys for ep in range(episodes))
    assert a["observation.images.agentview"].shape[0] == 2 and a["observation.images.wrist"].ndim == 3


def test_budget_and_bad_values(lift_dataset):
    ds = dataset(lift_dataset)
    need = decoded_bytes(ds.meta)
    assert need == ds.meta.total_frames * 2 * 64 * 64 * 3
    assert not cache_frames(ds, budget_gb=need / 2e9) and not cache_frames(ds, budget_gb=0)
    assert not isinstance(ds._ensure_reader()._query_videos, CachedVideoQuery)
    with pytest.raises(ValueError, match="frame_cache_gb=-1"):
        cache_frames(ds, budget_gb=-1)
    with pytest.raises(ValueError, match="frame_cache_gb='lots'"):
        cache_frames(ds, budget_gb="lots")


def test_training_loop_datasets_come_cached(lift_dataset, monkeypatch):
    import lerobot.scripts.lerobot_train as loop

    monkeypatch.setattr(loop, "make_train_eval_datasets", lambda cfg: (dataset(lift_dataset), None))
    stock = loop.make_train_eval_datasets
    with frame_cache_in_training(1):
        ds, _ = loop.make_train_eval_datasets(None)
    assert isinstance(ds._ensure_reader()._query_videos, CachedVideoQuery)
    assert loop.make_train_eval_datasets is stock  # restored
