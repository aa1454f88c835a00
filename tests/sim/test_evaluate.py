import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sim.evaluate import evaluate

CONFIG = OmegaConf.load(Path(__file__).parents[2] / "configs" / "sim_eval.yaml")


def _cfg(out, **kw):
    cfg = OmegaConf.merge(CONFIG, {"image_size": 48, "videos": 1}, kw)
    cfg.output_dir = str(out)
    cfg.pop("defaults", None)
    return cfg


def test_expert_succeeds_and_writes_every_artifact(tmp_path):
    s = evaluate(_cfg(tmp_path, policy="expert", task="lift,pick_next_to_ball", episodes=2, workers=2))
    assert s["overall"]["successes"] == 4
    assert s["tasks"]["lift"]["ci95"][1] == pytest.approx(1.0)
    lines = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert {(e["task"], e["seed"]) for e in lines} == {
        ("lift", 1_000_000),
        ("lift", 1_000_001),
        ("pick_next_to_ball", 1_000_000),
        ("pick_next_to_ball", 1_000_001),
    }
    for e in lines:
        assert e["success"] and e["failure_reason"] is None and e["steps"] > 0
    assert (tmp_path / "summary.md").read_text().count("100.0%") >= 3
    assert (tmp_path / "success.png").stat().st_size > 1000
    videos = sorted((tmp_path / "videos").rglob("*.mp4"))
    assert [v.parent.name for v in videos] == ["lift", "pick_next_to_ball"]  # videos=1: first episode of each

    # rerun: everything is already there, nothing is recomputed
    again = evaluate(_cfg(tmp_path, policy="expert", task="lift,pick_next_to_ball", episodes=2, workers=2))
    assert again["throughput"]["episodes_run"] == 0 and again["overall"] == s["overall"]


def test_random_policy_fails_with_reasons_and_settings_are_guarded(tmp_path):
    s = evaluate(
        _cfg(tmp_path, policy="random", task="pick_left_of_bowl", episodes=2, workers=1, max_steps=40)
    )
    assert s["overall"]["successes"] == 0
    reasons = s["tasks"]["pick_left_of_bowl"]["failure_reasons"]
    assert sum(reasons.values()) == 2 and all(r for r in reasons)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(
            _cfg(tmp_path, policy="expert", task="pick_left_of_bowl", episodes=2, workers=1, max_steps=40)
        )


def test_bad_policy_and_task_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'expert', 'random'"):
        evaluate(_cfg(tmp_path / "a", policy="/no/such/dir", task="lift", episodes=1))
    with pytest.raises(KeyError, match="valid tasks"):
        evaluate(_cfg(tmp_path / "b", policy="expert", task="liftt", episodes=1))
    with pytest.raises(ValueError, match="evaluation states"):
        evaluate(_cfg(tmp_path / "c", policy="expert", task="lift", episodes=10_000))
