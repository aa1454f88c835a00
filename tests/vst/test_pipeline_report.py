import json
from pathlib import Path

import pytest

from vst.pipeline_report import backbone_table, paired_interval, training_records, write_backbone_report


def _bench(
    root: Path,
    name: str,
    spatial: dict[str, float],
    general: dict[str, float],
    well_formed: float | None = None,
) -> None:
    def split(skills: dict[str, float]) -> dict:
        return {
            "overall": sum(skills.values()) / len(skills),
            "skills": {s: {"family": "single_image", "n": 4, "score": v} for s, v in skills.items()},
        } | ({} if well_formed is None else {"well_formed": well_formed})  # vst-bench think=true

    d = root / "bench" / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(
        json.dumps({"splits": {"spatial": split(spatial), "general": split(general)}})
    )


def test_table_deltas_use_the_rl_trained_skills(tmp_path):
    _bench(tmp_path, "baseline", {"depth_compare": 20.0, "distance": 10.0}, {"general_color": 50.0})
    _bench(tmp_path, "sft", {"depth_compare": 60.0, "distance": 30.0}, {"general_color": 49.0})
    _bench(tmp_path, "cot", {"depth_compare": 62.0, "distance": 30.0}, {"general_color": 49.0})
    _bench(tmp_path, "vst", {"depth_compare": 70.0, "distance": 29.0}, {"general_color": 51.0})
    rl = tmp_path / "data" / "rl"
    rl.mkdir(parents=True)
    (rl / "manifest.json").write_text(json.dumps({"counts": {"skill": {"depth_compare": 30}}}))
    (tmp_path / "backbones" / "sft").mkdir(parents=True)
    (tmp_path / "backbones" / "sft" / "metrics.jsonl").write_text('{"step": 10, "loss": 3.0}\n')

    table = write_backbone_report(tmp_path)
    d = table["deltas"]
    assert d["sft_minus_baseline_spatial"] == pytest.approx(45.0 - 15.0)
    assert d["rl_minus_cot_rl_skills"] == pytest.approx(8.0)  # depth_compare only, not distance
    assert d["vst_minus_baseline_general"] == pytest.approx(1.0)
    md = (tmp_path / "backbones.md").read_text()
    assert "| depth_compare (RL) | 20.0 | 60.0 | 62.0 | 70.0 |" in md
    assert (tmp_path / "backbones.png").exists() and (tmp_path / "curves.png").exists()


def test_rl_delta_uses_the_think_prompt_when_both_think_benches_exist(tmp_path):
    _bench(tmp_path, "baseline", {"depth_compare": 20.0}, {"general_color": 50.0})
    _bench(tmp_path, "cot", {"depth_compare": 30.0}, {"general_color": 49.0})
    _bench(tmp_path, "vst", {"depth_compare": 29.0}, {"general_color": 49.0})
    _bench(tmp_path, "cot_think", {"depth_compare": 40.0}, {"general_color": 45.0}, well_formed=39.0)
    rl = tmp_path / "data" / "rl"
    rl.mkdir(parents=True)
    (rl / "manifest.json").write_text(json.dumps({"counts": {"skill": {"depth_compare": 30}}}))
    assert (
        backbone_table(tmp_path)["deltas"]["rl_minus_cot_mode"] == "direct"
    )  # one think bench is not a pair
    _bench(tmp_path, "vst_think", {"depth_compare": 45.0}, {"general_color": 46.0}, well_formed=51.5)
    table = write_backbone_report(tmp_path)
    d = table["deltas"]
    assert d["rl_minus_cot_mode"] == "think" and d["rl_minus_cot_rl_skills"] == pytest.approx(5.0)
    assert d["rl_minus_cot_rl_skills_direct"] == pytest.approx(-1.0)
    md = (tmp_path / "backbones.md").read_text()
    assert "RL-trained skills (think): 5.0 points" in md and "asked directly: -1.0" in md
    assert "| think outputs well formed (spatial, %) | - | - | - | 39.0 | 51.5 |" in md


def test_missing_stages_leave_gaps_and_no_results_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no vst-bench results"):
        backbone_table(tmp_path)
    _bench(tmp_path, "baseline", {"distance": 10.0}, {"general_color": 50.0})
    table = backbone_table(tmp_path)
    assert table["deltas"]["sft_minus_baseline_spatial"] is None


def test_report_sums_the_pipeline_steps_time_and_ignores_the_robot_steps(tmp_path):
    _bench(tmp_path, "baseline", {"distance": 10.0}, {"general_color": 50.0})
    steps = {
        "data_train": 90.0,
        "data_bench": 30.0,
        "train_pretrain": 600.0,
        "train_sft": 1200.0,
        "train_cot": 300.0,
        "train_rl": 240.0,
        "bench_baseline": 60.0,
        "bench_vst_think": 120.0,
        "demos": 300.0,  # robot steps: not the pipeline's budget
        "vla_vst": 3000.0,
    }
    (tmp_path / "steps.json").write_text(
        json.dumps({k: {"command": "x", "seconds": v} for k, v in steps.items()})
    )
    table = write_backbone_report(tmp_path)
    assert table["minutes"] == {
        "data": 2.0,
        "pretrain": 10.0,
        "sft": 20.0,
        "cot": 5.0,
        "rl": 4.0,
        "bench": 3.0,
        "total": 44.0,
    }
    assert "**total 44.0** (target < 90)" in (tmp_path / "backbones.md").read_text()
    assert json.loads((tmp_path / "backbones.json").read_text())["minutes"]["total"] == 44.0


def test_curves_keep_one_record_per_step_after_a_resume(tmp_path):
    d = tmp_path / "backbones" / "pretrain"
    d.mkdir(parents=True)
    steps = [10, 20, 30, 20, 30, 40]  # interrupted after 30, resumed from the step-10 checkpoint
    d.joinpath("metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": float(i)}) + "\n" for i, s in enumerate(steps))
    )
    recs = training_records(tmp_path, "pretrain")
    assert [r["step"] for r in recs] == [10, 20, 30, 40]
    assert [r["loss"] for r in recs] == [0.0, 3.0, 4.0, 5.0]  # the resumed run's values
    assert training_records(tmp_path, "sft") == []


def _predictions(root: Path, name: str, scores: dict[str, list[float]]) -> None:
    """Per-question scores as vst-bench writes them; question i of a skill has the same id in every stage."""
    lines = [
        json.dumps({"id": f"{skill}-{i}", "skill": skill, "score": v, "output": "x"})
        for skill, values in scores.items()
        for i, v in enumerate(values)
    ]
    (root / "bench" / name / "predictions.jsonl").write_text("\n".join(lines) + "\n")


def test_deltas_get_a_paired_bootstrap_interval_over_the_questions(tmp_path):
    import random

    rng = random.Random(0)
    base = {s: [rng.random() for _ in range(20)] for s in ("depth_compare", "distance")}
    shifted = {s: [v + 0.1 for v in vs] for s, vs in base.items()}  # every question +10 points
    noisy = {s: [min(1.0, max(0.0, v + rng.gauss(0.05, 0.3))) for v in vs] for s, vs in base.items()}
    for name, scores in (("baseline", base), ("sft", shifted), ("vst", noisy)):
        mean = {s: 100 * sum(v) / len(v) for s, v in scores.items()}
        _bench(tmp_path, name, mean, {"general_color": 50.0})
        _predictions(tmp_path, name, scores)

    skills = ["depth_compare", "distance"]
    # a shift shared by every question leaves nothing to resample: the interval is the point
    assert paired_interval(tmp_path, "sft", "baseline", skills) == pytest.approx([10.0, 10.0], abs=1e-6)
    table = write_backbone_report(tmp_path)
    lo, hi = table["intervals"]["vst_minus_baseline_spatial"]
    delta = table["deltas"]["vst_minus_baseline_spatial"]
    assert lo < delta < hi and hi - lo > 2.0  # 40 noisy questions: several points wide
    assert table["intervals"] == backbone_table(tmp_path)["intervals"]  # seeded: the same interval every time
    assert table["intervals"]["vst_minus_baseline_general"] is None  # no per-question scores for that split
    md = (tmp_path / "backbones.md").read_text()
    assert f"[95% CI {lo:.1f}, {hi:.1f}]" in md and "Intervals: paired bootstrap" in md


def test_no_interval_without_per_question_scores_of_both_stages(tmp_path):
    _bench(tmp_path, "baseline", {"distance": 10.0}, {"general_color": 50.0})
    _bench(tmp_path, "sft", {"distance": 30.0}, {"general_color": 50.0})
    _predictions(tmp_path, "sft", {"distance": [0.3]})
    table = write_backbone_report(tmp_path)
    assert table["intervals"]["sft_minus_baseline_spatial"] is None
    assert "95% CI" not in (tmp_path / "backbones.md").read_text()
    # a torn last line (a bench interrupted mid-write) is skipped, not an error
    _predictions(tmp_path, "baseline", {"distance": [0.1]})
    with (tmp_path / "bench" / "baseline" / "predictions.jsonl").open("a") as f:
        f.write('{"id": "distance-1", "sk')
    assert paired_interval(tmp_path, "sft", "baseline", ["distance"]) == pytest.approx([20.0, 20.0])
    (tmp_path / "bench" / "baseline" / "predictions.jsonl").write_text('{"id": "distance-0"}\n')
    with pytest.raises(ValueError, match="not a vst-bench predictions file"):
        paired_interval(tmp_path, "sft", "baseline", ["distance"])
