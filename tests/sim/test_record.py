import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sim.record import record

CONFIG = OmegaConf.load(Path(__file__).parents[2] / "configs" / "sim_record.yaml")


def _cfg(out, **kw):
    cfg = OmegaConf.merge(CONFIG, {"task": "lift,stack", "episodes": 1, "image_size": 48, "workers": 2}, kw)
    cfg.output_dir = str(out)
    cfg.pop("defaults", None)
    cfg.pop("hydra", None)
    return cfg


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "ds"
    summary = record(_cfg(out))
    return out, summary


def test_dataset_round_trips_through_stock_lerobot(recorded):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out, summary = recorded
    assert summary["episodes"] == 2
    ds = LeRobotDataset("local/vst_sim", root=out)
    assert ds.num_episodes == 2
    item = ds[0]
    assert tuple(item["observation.images.agentview"].shape) == (3, 48, 48)
    assert tuple(item["observation.images.wrist"].shape) == (3, 48, 48)
    assert tuple(item["observation.state"].shape) == (8,)
    assert tuple(item["action"].shape) == (7,)
    assert set(ds.meta.tasks.index) == {"lift the red cube", "stack the red cube on the green cube"}
    stats = ds.meta.stats["action"]
    for key in ("q01", "q99", "min", "max", "mean", "std"):
        assert np.asarray(stats[key]).shape == (7,), key
    # the recorded actions are the expert's: the gripper closes at some point in every episode
    grip = np.stack([ds[i]["action"][6].item() for i in range(len(ds))])
    assert grip.max() == 1.0 and grip.min() == -1.0
    # action chunks through delta_timestamps, as VLA training reads them
    chunked = LeRobotDataset(
        "local/vst_sim", root=out, delta_timestamps={"action": [i / 20 for i in range(4)]}
    )
    assert tuple(chunked[0]["action"].shape) == (4, 7)
    # the stored q01/q99 are the dataset's own (LeRobot's are means of per-episode quantiles)
    actions = np.stack([ds[i]["action"].numpy() for i in range(len(ds))])
    np.testing.assert_allclose(stats["q01"], np.quantile(actions, 0.01, axis=0), atol=1e-5)
    np.testing.assert_allclose(stats["q99"], np.quantile(actions, 0.99, axis=0), atol=1e-5)
    assert stats["q99"][6] == 1.0 and stats["q01"][6] == -1.0
    report = json.loads((out / "meta" / "sim_record.json").read_text())
    assert report["tasks"]["lift"]["episodes"] == 1 and not (out.parent / "ds.partial").exists()


def test_existing_dataset_is_never_overwritten(recorded):
    out, _ = recorded
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(FileExistsError, match="overwrite=true"):
        record(_cfg(out))
    assert sorted(p.name for p in out.rglob("*")) == before


def test_interrupted_recording_resumes_keeping_finished_shards(tmp_path, monkeypatch):
    import sim.record as rec

    out = tmp_path / "ds"
    calls = []
    real = rec.record_task

    def flaky(task, *args, **kwargs):
        calls.append(task)
        if task == "stack":
            raise KeyboardInterrupt("simulated interruption")
        return real(task, *args, **kwargs)

    monkeypatch.setattr(rec, "record_task", flaky)
    cfg = _cfg(out, workers=1)
    # workers=1 runs in-process below: swap the pool for a serial executor to see the interruption
    monkeypatch.setattr(rec, "ProcessPoolExecutor", _SerialExecutor)
    with pytest.raises(KeyboardInterrupt):
        record(cfg)
    assert (tmp_path / "ds.partial" / "lift" / "DONE.json").exists()
    calls_after = []
    monkeypatch.setattr(
        rec, "record_task", lambda task, *a, **k: calls_after.append(task) or real(task, *a, **k)
    )
    summary = record(cfg)
    assert calls_after == ["stack"]  # lift was kept
    assert summary["episodes"] == 2


class _SerialExecutor:
    """Runs submitted jobs immediately in this process (same interface as the pool record() uses)."""

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args, **kwargs):
        from concurrent.futures import Future

        f = Future()
        f.set_result(fn(*args[:-1], **kwargs))  # drop the progress queue
        return f


def test_failed_expert_episodes_are_dropped_and_counted(tmp_path, monkeypatch):
    """A failed attempt leaves nothing behind, not even in the streaming video encoder."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from sim.env import SimEnv
    from sim.record import record_task

    real_step = SimEnv.step

    def step(self, action):
        obs, r, terminated, truncated, info = real_step(self, action)
        if self.seed_used == 0 and self._steps == 5:  # the first attempt fails early
            info = {**info, "is_success": False, "failure_reason": "forced"}
            return obs, 0.0, False, True, info
        return obs, r, terminated, truncated, info

    monkeypatch.setattr(SimEnv, "step", step)
    report = record_task("lift", 1, 0, 0.0, 32, tmp_path / "ds", "local/x")
    assert report["failed_attempts"] == 1 and report["failure_reasons"] == {"forced": 1}
    assert report["seeds"] == [1]
    ds = LeRobotDataset("local/x", root=tmp_path / "ds")
    assert ds.num_episodes == 1
    assert ds[len(ds) - 1]["observation.images.agentview"].shape == (
        3,
        32,
        32,
    )  # video frames line up with data


def test_noise_perturbs_execution_but_labels_stay_the_experts_clean_actions(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from sim.env import SimEnv
    from sim.record import record_task

    executed, real_step = [], SimEnv.step
    monkeypatch.setattr(SimEnv, "step", lambda self, a: executed.append(np.array(a)) or real_step(self, a))
    report = record_task("lift", 1, 0, 0.3, 32, tmp_path / "ds", "local/x")
    labels = np.concatenate(
        [
            np.stack(pq.read_table(f).column("action").to_pylist())
            for f in sorted((tmp_path / "ds").glob("data/*/*"))
        ]
    )
    executed = np.stack(executed[-len(labels) :])  # the successful attempt
    assert report["episodes"] == 1
    assert np.abs(executed[:, :6] - labels[:, :6]).mean() > 0.1  # the arm was perturbed ...
    assert np.array_equal(executed[:, 6], labels[:, 6])  # ... not the gripper
    # ... while the labels are the smooth closed-loop corrections, not noise
    assert np.median(np.abs(np.diff(labels[:, 3:6], axis=0))) < 0.05
    assert np.median(np.abs(np.diff(executed[:, 3:6], axis=0))) > 0.2


def test_a_policy_drives_while_the_expert_labels_every_frame(tmp_path, monkeypatch):
    """DAgger: the executed actions are the policy's, the recorded ones the expert's, failures are kept."""
    import pyarrow.parquet as pq

    from sim.env import SimEnv
    from sim.record import record_task

    executed, real_step = [], SimEnv.step
    monkeypatch.setattr(SimEnv, "step", lambda self, a: executed.append(np.array(a)) or real_step(self, a))
    report = record_task("lift", 2, 0, 0.0, 32, tmp_path / "ds", "local/x", policy="random")
    assert report["episodes"] == 2 and report["policy_successes"] == 0  # random never lifts; both kept
    assert report["seeds"] == [0, 1] and report["policy"] == "random"
    labels = np.concatenate(
        [
            np.stack(pq.read_table(f).column("action").to_pylist())
            for f in sorted((tmp_path / "ds").glob("data/*/*"))
        ]
    )
    acted = np.stack(executed)
    assert len(labels) == len(acted)
    assert np.abs(acted[:, 6]).mean() > 0.3 and set(np.unique(labels[:, 6])) <= {-1.0, 1.0}
    assert np.abs(acted - labels).mean() > 0.3  # the random policy drove, the expert labelled

    mixed = record_task("lift", 1, 0, 0.0, 32, tmp_path / "mixed", "local/y", policy="random", expert_mix=1.0)
    assert mixed["policy_successes"] == 1  # expert_mix=1: the expert drives every step


def test_policy_recording_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="needs policy=CKPT"):
        record(_cfg(tmp_path / "a", expert_mix=0.5))
    with pytest.raises(ValueError, match=r"expert_mix must lie in \[0, 1\]"):
        record(_cfg(tmp_path / "b", policy="random", expert_mix=2.0))
    with pytest.raises(FileNotFoundError, match="neither 'expert', 'random'"):
        record(_cfg(tmp_path / "c", policy="/no/such/ckpt"))


def test_exact_stats_replace_means_of_per_episode_quantiles(tmp_path):
    """Two episodes: the gripper closes in one only. LeRobot's aggregate puts q99 between -1 and +1."""
    from lerobot.datasets.io_utils import load_stats

    from sim.record import write_exact_stats

    root = tmp_path / "ds"
    data = root / "data" / "chunk-000"
    data.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    grip = np.r_[-np.ones(100), -np.ones(50), np.ones(50)]
    action = np.stack([np.linspace(-2, 2, 200), grip], axis=1)
    table = pa.table({"action": action.tolist(), "observation.state": action[:, :1].tolist()})
    pq.write_table(table, data / "file-000.parquet")
    (root / "meta").mkdir()
    (root / "meta" / "stats.json").write_text(
        json.dumps({"action": {"q99": [1.0, 0.0]}, "other": {"x": [1]}})
    )
    write_exact_stats(root)
    stats = load_stats(root)
    np.testing.assert_allclose(stats["action"]["q99"], [np.quantile(action[:, 0], 0.99), 1.0])
    np.testing.assert_allclose(stats["action"]["q01"], [np.quantile(action[:, 0], 0.01), -1.0])
    assert stats["observation.state"]["max"][0] == 2.0 and stats["other"]["x"][0] == 1  # other keys kept
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset root"):
        write_exact_stats(tmp_path / "empty")
