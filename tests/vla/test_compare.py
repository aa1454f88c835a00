import json
import sys
from pathlib import Path

import pytest

from vla.compare import Steps, write_report


def _eval_dir(
    root: Path, label: str, outcomes: dict[tuple[str, int], bool], picked=None, lookalike=None
) -> None:
    from sim.report import summarize

    d = root / "eval" / label
    d.mkdir(parents=True)
    eps = [
        {
            "task": t,
            "seed": s,
            "success": ok,
            "steps": 10,
            "failure_reason": None if ok else "target_not_lifted",
            **({"picked": picked[(t, s)]} if picked else {}),
            **({"picked_lookalike": lookalike[(t, s)]} if lookalike else {}),
        }
        for (t, s), ok in outcomes.items()
    ]
    (d / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    (d / "summary.json").write_text(json.dumps(summarize(eps)))


def test_report_pairs_episodes_and_tests_the_difference(tmp_path):
    seeds = range(1_000_000, 1_000_012)
    base = {("a", s): i < 3 for i, s in enumerate(seeds)}
    vst = {("a", s): i < 11 for i, s in enumerate(seeds)}
    _eval_dir(tmp_path, "baseline-VLA", base)
    _eval_dir(tmp_path, "vst-VLA", vst)
    done = {"x": {"command": "vst-data n=1", "seconds": 1.0}}
    r = write_report(tmp_path, ["baseline-VLA", "vst-VLA"], done)
    assert r["paired"]["episodes"] == 12
    assert r["paired"]["vst_minus_baseline"] == pytest.approx(8 / 12)
    m = r["paired"]["mcnemar_vst_vs_baseline"]
    assert (m["a_only"], m["b_only"]) == (8, 0) and m["p_value"] == pytest.approx(2 / 2**8)
    lo, hi = r["paired"]["vst_minus_baseline_ci95"]
    assert 0.0 < lo < 8 / 12 < hi <= 1.0  # 8 VST-only successes of 12 pairs: clearly above 0
    assert r["per_task"]["a"]["vst_minus_baseline_ci95"] == [lo, hi]
    md = (tmp_path / "report.md").read_text()
    assert f"+66.7 points** [95% CI {100 * lo:+.1f}, {100 * hi:+.1f}]" in md and "vst-data n=1" in md
    assert (tmp_path / "success.png").exists()
    assert r["picked_target_paired"] is None and r["picked_lookalike_paired"] is None  # episodes without them


def test_report_pairs_the_spatial_choice(tmp_path):
    keys = [("a", s) for s in range(10)]
    base = dict.fromkeys(keys, False)
    _eval_dir(
        tmp_path,
        "baseline-VLA",
        base,
        {k: "wrong" if k[1] < 6 else "target" for k in keys},
        {k: k[1] < 4 for k in keys},  # 4 of its 6 wrong picks were the look-alike
    )
    _eval_dir(
        tmp_path,
        "vst-VLA",
        base,
        {k: "none" if k[1] < 1 else "target" for k in keys},
        dict.fromkeys(keys, False),
    )
    r = write_report(tmp_path, ["baseline-VLA", "vst-VLA"], {})
    pk = r["picked_target_paired"]
    assert pk["baseline"] == pytest.approx(0.4) and pk["vst"] == pytest.approx(0.9)
    assert (pk["mcnemar"]["a_only"], pk["mcnemar"]["b_only"]) == (5, 0)
    lk = r["picked_lookalike_paired"]
    assert (lk["baseline"], lk["vst"]) == (pytest.approx(0.4), 0.0) and lk["mcnemar"]["b_only"] == 4
    assert "Picked the instructed object first" in (tmp_path / "report.md").read_text()
    assert "look-alike first" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "picked.png").exists()


def test_several_training_seeds_pool_the_pairs_and_show_the_spread(tmp_path):
    keys = [("a", s) for s in range(10)]
    _eval_dir(tmp_path, "baseline-VLA", {k: k[1] < 2 for k in keys})
    _eval_dir(tmp_path, "vst-VLA", {k: k[1] < 6 for k in keys})  # seed 0: +40 points
    _eval_dir(tmp_path, "baseline-VLA-seed1", {k: k[1] < 3 for k in keys})
    _eval_dir(tmp_path, "vst-VLA-seed1", {k: k[1] < 3 for k in keys})  # seed 1: +0
    labels = ["baseline-VLA", "vst-VLA", "baseline-VLA-seed1", "vst-VLA-seed1"]
    r = write_report(tmp_path, labels, {}, seeds=2)
    assert r["paired"]["episodes"] == 20 and r["paired"]["vst_minus_baseline"] == pytest.approx(4 / 20)
    assert r["paired"]["mcnemar_vst_vs_baseline"]["a_only"] == 4
    assert [s["success"]["vst_minus_baseline"] for s in r["per_seed"]] == [pytest.approx(0.4), 0.0]
    spread = r["across_seeds"]["success"]
    assert spread["mean"] == pytest.approx(0.2) and spread["std"] == pytest.approx(0.4 / 2**0.5)
    assert "picked" not in r["across_seeds"]  # episodes without the spatial choice
    md = (tmp_path / "report.md").read_text()
    assert "Pooled over 2 VLA training seeds" in md and "| 1 | 30.0% / 30.0% (1) |" in md
    assert "+20.0 +- 28.3 points" in md
    with pytest.raises(FileNotFoundError):  # a third seed that was never evaluated
        write_report(tmp_path, labels, {}, seeds=3)


def test_report_records_the_shared_episode_budget_and_refuses_different_ones(tmp_path):
    outcomes = {("a", s): s % 2 == 0 for s in range(6)}
    for label, budget in (("baseline-VLA", 400), ("vst-VLA", 400)):
        _eval_dir(tmp_path, label, outcomes)
        config = {
            "policy": f"/ckpt/{label}",
            "init_states": "v1",
            "max_steps": budget,
            "n_action_steps": None,
        }
        (tmp_path / "eval" / label / "eval_config.json").write_text(json.dumps(config))
    r = write_report(tmp_path, ["baseline-VLA", "vst-VLA"], {})
    assert r["eval_settings"]["max_steps"] == 400 and "policy" not in r["eval_settings"]
    assert "400 steps per episode" in (tmp_path / "report.md").read_text()
    # a newer sim-eval records a setting an older one did not: left at its default, still the same settings
    newer = {**config, "temporal_ensemble": None}
    (tmp_path / "eval" / "vst-VLA" / "eval_config.json").write_text(json.dumps(newer))
    assert write_report(tmp_path, ["baseline-VLA", "vst-VLA"], {})["eval_settings"]["max_steps"] == 400
    newer["temporal_ensemble"] = 0.01
    (tmp_path / "eval" / "vst-VLA" / "eval_config.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="different settings"):
        write_report(tmp_path, ["baseline-VLA", "vst-VLA"], {})
    (tmp_path / "eval" / "baseline-VLA" / "eval_config.json").write_text(json.dumps(newer))
    write_report(tmp_path, ["baseline-VLA", "vst-VLA"], {})
    assert (
        "temporal ensembling, coefficient 0.01 (`eval.temporal_ensemble`), a chunk every 1 step"
        in (tmp_path / "report.md").read_text()
    )
    for label in ("baseline-VLA", "vst-VLA"):
        (tmp_path / "eval" / label / "eval_config.json").write_text(
            json.dumps({**newer, "n_action_steps": 2})
        )
    write_report(tmp_path, ["baseline-VLA", "vst-VLA"], {})
    assert "a chunk every 2 step(s)" in (tmp_path / "report.md").read_text()
    config["max_steps"] = 220
    (tmp_path / "eval" / "vst-VLA" / "eval_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="different settings"):
        write_report(tmp_path, ["baseline-VLA", "vst-VLA"], {})


def test_report_refuses_unpaired_evaluations(tmp_path):
    _eval_dir(tmp_path, "baseline-VLA", {("a", 1): True, ("a", 2): False})
    _eval_dir(tmp_path, "vst-VLA", {("a", 1): True, ("a", 3): False})
    with pytest.raises(ValueError, match="not paired"):
        write_report(tmp_path, ["baseline-VLA", "vst-VLA"], {})


def test_steps_run_once_and_refuse_a_changed_command(tmp_path):
    steps = Steps(tmp_path, dry_run=False, env=None)
    marker = tmp_path / "ran"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    steps.run("s", cmd)
    Steps(tmp_path, dry_run=False, env=None).run("s", cmd)  # a rerun reuses the finished step
    assert marker.read_text() == "x"
    with pytest.raises(ValueError, match="another command"):
        Steps(tmp_path, dry_run=False, env=None).run("s", [*cmd, "--changed"])
    with pytest.raises(RuntimeError, match="failed"):
        steps.run("bad", [sys.executable, "-c", "raise SystemExit(3)"])
    assert "bad" not in json.loads((tmp_path / "steps.json").read_text())


def test_a_moved_output_dir_reuses_its_steps(tmp_path):
    first, moved = tmp_path / "first", tmp_path / "moved"
    marker = tmp_path / "ran"

    def cmd(out):
        return [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')", f"output_dir={out}/vla"]

    first.mkdir()
    Steps(first, dry_run=False, env=None).run("s", cmd(first))
    recorded = json.loads((first / "steps.json").read_text())["s"]["command"]
    assert str(first) not in recorded and "output_dir=$OUTPUT_DIR/vla" in recorded
    first.rename(moved)
    Steps(moved, dry_run=False, env=None).run("s", cmd(moved))
    assert marker.read_text() == "x"  # not rerun


def test_parallel_steps_keep_the_finished_ones_when_one_fails(tmp_path):
    steps = Steps(tmp_path, dry_run=False, env=None)
    write = "import os, sys; open(sys.argv[1], 'w').write(os.environ['OMP_NUM_THREADS'])"
    ok = [sys.executable, "-c", write, str(tmp_path / "a")]
    bad = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match=r"bad \(exit 3"):
        steps.run_parallel([("a", ok, None), ("bad", bad, None)], width=2, threads=3)
    assert (tmp_path / "a").read_text() == "3"
    assert set(json.loads((tmp_path / "steps.json").read_text())) == {"a"}
    assert "boom" in (tmp_path / "logs" / "bad.log").read_text()
    (tmp_path / "a").unlink()
    fixed = [sys.executable, "-c", "pass"]
    Steps(tmp_path, dry_run=False, env=None).run_parallel([("a", ok, None), ("bad", fixed, None)], 2, 1)
    assert not (tmp_path / "a").exists()  # the finished step was reused, not rerun


def test_unknown_stop_after_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from vla.compare import run_chain

    with pytest.raises(ValueError, match="stop_after"):
        run_chain(OmegaConf.create({"stop_after": "vla", "output_dir": str(tmp_path)}))
    assert not list(tmp_path.iterdir())  # nothing written


def test_cot_replay_mixes_sft_rows_into_the_cot_stage(tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from vla.compare import run_chain

    configs = str(Path(__file__).parents[2] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("vla_compare", [f"output_dir={tmp_path}", "dry_run=true", "pipeline.cot_replay=0.3"])
    with caplog.at_level("INFO", logger="vla.compare"):
        run_chain(cfg)
    cot = next(r.message for r in caplog.records if r.message.startswith("step train_cot:"))
    assert f"replay.data={tmp_path}/data/train" in cot and "replay.fraction=0.3" in cot
    sft = next(r.message for r in caplog.records if r.message.startswith("step train_sft:"))
    assert "replay.fraction" not in sft


def test_vst_stage_picks_the_vst_vla_backbone(tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from vla.compare import run_chain

    configs = str(Path(__file__).parents[2] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("vla_compare", [f"output_dir={tmp_path}", "dry_run=true", "vst_stage=sft"])
        bad = compose("vla_compare", [f"output_dir={tmp_path}", "dry_run=true", "vst_stage=pretrain"])
    with caplog.at_level("INFO", logger="vla.compare"):
        run_chain(cfg)
    vla = next(r.message for r in caplog.records if r.message.startswith("step vla_vst:"))
    assert f"backbone={tmp_path}/backbones/sft/model" in vla
    bench = next(r.message for r in caplog.records if r.message.startswith("step bench_vst:"))
    assert f"model={tmp_path}/backbones/rl/model" in bench  # the benchmark rows keep their stage names
    with pytest.raises(ValueError, match="vst_stage"):
        run_chain(bad)


def test_vla_seeds_plan_paired_trainings_per_backbone(tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from vla.compare import run_chain

    configs = str(Path(__file__).parents[2] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose(
            "vla_compare", [f"output_dir={tmp_path}", "dry_run=true", "vla.seeds=2", "act.enabled=false"]
        )
        bad = compose("vla_compare", [f"output_dir={tmp_path}", "dry_run=true", "vla.seeds=0"])
    with caplog.at_level("INFO", logger="vla.compare"):
        run_chain(cfg)
    steps = {r.message.split(":")[0]: r.message for r in caplog.records if r.message.startswith("step ")}
    assert "seed=1000" in steps["step vla_vst"] and f"output_dir={tmp_path}/vla/vst" in steps["step vla_vst"]
    for name in ("vst", "baseline"):
        assert "seed=1001" in steps[f"step vla_{name}-seed1"]
        assert f"{tmp_path}/vla/{name}-seed1/train" in steps[f"step eval_{name}-VLA-seed1"]
    assert not any("seed2" in k for k in steps)
    assert (
        "max_steps" not in steps["step eval_vst-VLA"]
    )  # each task's own budget unless eval.max_steps is set
    assert steps["step data_train"].endswith(
        f"workers=2 output_dir={tmp_path}/data/train"
    )  # no extra overrides
    with pytest.raises(ValueError, match="vla.seeds"):
        run_chain(bad)
    assert "amp=" not in steps["step vla_vst"]  # vla-train's own default unless vla.amp is set
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        amp = compose("vla_compare", [f"output_dir={tmp_path}", "dry_run=true", "vla.amp=true"])
    caplog.clear()
    with caplog.at_level("INFO", logger="vla.compare"):
        run_chain(amp)
    steps = {r.message.split(":")[0]: r.message for r in caplog.records if r.message.startswith("step ")}
    assert all(" amp=true " in steps[f"step vla_{name}"] for name in ("vst", "baseline"))
    assert "--policy.use_amp=true" in steps["step act"]  # the reference trains in the same precision
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        plain = compose("vla_compare", [f"output_dir={tmp_path}", "dry_run=true"])
    caplog.clear()
    with caplog.at_level("INFO", logger="vla.compare"):
        run_chain(plain)
    assert any(r.message.startswith("step act:") and "use_amp" not in r.message for r in caplog.records)


def _full_preset(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    configs = str(Path(__file__).parents[2] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        return compose("vla_compare", ["preset=full", f"output_dir={tmp_path}", "dry_run=true", *overrides])


def _planned_steps(cfg, caplog) -> dict[str, str]:
    """Step name -> the command line the dry run logged for it."""
    from vla.compare import run_chain

    caplog.clear()
    with caplog.at_level("INFO", logger="vla.compare"):
        run_chain(cfg)
    return {
        r.message.split(":")[0].removeprefix("step "): r.message
        for r in caplog.records
        if r.message.startswith("step ")
    }


def test_full_preset_plans_the_measured_chain(tmp_path, caplog):
    """The full preset composes and plans every step with the project's own commands (dry run: nothing runs)."""
    from vla.compare import run_chain

    steps = _planned_steps(_full_preset(tmp_path), caplog)
    assert {"train_rl", "bench_vst", "demos", "vla_baseline", "vla_vst", "eval_vst-VLA"} <= set(steps)
    assert "act" not in steps  # off on a CPU budget
    assert "replay.fraction=0.3" in steps["train_cot"]
    assert "'family_mix={single_image: 0.27, multi_image: 0.27, video: 0.46}'" in steps["data_train"]
    assert "skills=" not in steps["data_rl"] and "family_mix" not in steps["data_rl"]  # the paper's draw
    assert "train.max_steps=2000" in steps["train_sft"]
    assert "think=true" in steps["bench_vst_think"] and "backbones/rl/model" in steps["bench_vst_think"]
    assert "think=true" not in steps["bench_vst"]
    assert "episodes=50" in steps["eval_vst-VLA"] and "steps=10000" in steps["vla_vst"]
    assert "max_new_tokens=768" in steps["bench_sft"]  # room for the longest 3D-box answer
    assert all("train.bf16=true" in steps[f"train_{s}"] for s in ("pretrain", "sft", "cot"))
    assert "bf16" not in steps["train_rl"] and " amp=true " in steps["vla_vst"]
    assert all(
        " temporal_ensemble=0.01 n_action_steps=2 " in steps[f"eval_{p}-VLA"] for p in ("vst", "baseline")
    )

    traced = (
        'data.rl_overrides=["family_mix={single_image: 0.27, multi_image: 0.27, video: 0.46}","skills=cot"]'
    )
    steps = _planned_steps(_full_preset(tmp_path, traced), caplog)
    assert " skills=cot " in steps["data_rl"] and "'family_mix={single_image: 0.27" in steps["data_rl"]
    assert "skills=" not in steps["data_cot"]
    steps = _planned_steps(_full_preset(tmp_path, 'data.cot_overrides=["skills=cot"]'), caplog)
    assert " skills=cot " in steps["data_cot"] and "skills=" not in steps["data_rl"]
    with pytest.raises(ValueError, match="data.rl_overrides='skills=cot': a list of vst-data overrides"):
        run_chain(_full_preset(tmp_path, 'data.rl_overrides="skills=cot"'))

    steps = _planned_steps(_full_preset(tmp_path, "eval.max_steps=400"), caplog)
    assert "max_steps=400" in steps["eval_vst-VLA"] and "max_steps=400" in steps["eval_baseline-VLA"]
    with pytest.raises(ValueError, match="eval.max_steps"):
        run_chain(_full_preset(tmp_path, "eval.max_steps=0"))

    steps = _planned_steps(
        _full_preset(tmp_path, "eval.temporal_ensemble=null", "eval.n_action_steps=null"), caplog
    )
    assert not any(k in steps["eval_vst-VLA"] for k in ("temporal_ensemble", "n_action_steps"))
    with pytest.raises(ValueError, match="eval.n_action_steps"):
        run_chain(_full_preset(tmp_path, "eval.n_action_steps=0"))
    with pytest.raises(ValueError, match="ACT's ensembling predicts at every step"):
        run_chain(_full_preset(tmp_path, "act.enabled=true"))
    bad = _full_preset(tmp_path, "eval.temporal_ensemble=-1")
    with pytest.raises(ValueError, match="eval.temporal_ensemble"):
        run_chain(bad)
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
