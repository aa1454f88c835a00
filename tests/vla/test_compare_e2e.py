import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_vla_compare_end_to_end_ci_sized(tmp_path):
    """The whole chain with every budget at its smallest: data, the four VST stages, bench, demos, two VLAs and ACT,
    closed-loop evaluation on identical starts, and the paired report."""
    out = tmp_path / "cmp"
    args = [
        str(BIN / "vla-compare"),
        "preset=quick",
        f"output_dir={out}",
        "data.n=120",
        "data.cot_n=16",
        "data.rl_n=8",
        "data.bench_per_skill=1",
        "pipeline.pretrain_steps=2",
        "pipeline.sft_steps=2",
        "pipeline.cot_steps=1",
        "pipeline.rl_steps=1",
        "demos.task=lift",
        "demos.episodes=1",
        "demos.image_size=48",
        "vla.steps=2",
        "vla.batch_size=2",
        "vla.image_size=56",
        "eval.episodes=1",
        "eval.workers=1",
        "cpu_threads=1",
    ]
    subprocess.run(args, check=True)
    report = json.loads((out / "report.json").read_text())
    assert report["paired"]["episodes"] == 1
    assert set(report["policies"]) == {"baseline-VLA", "vst-VLA", "ACT"}
    assert report["bench"]["vst"] and report["bench"]["baseline"]
    backbones = json.loads((out / "backbones.json").read_text())
    assert set(backbones["stages"]) == {"baseline", "sft", "cot", "vst", "cot_think", "vst_think"}
    assert (out / "backbones.md").exists() and (out / "curves.png").exists()
    assert list((out / "eval" / "vst-VLA" / "videos").rglob("*.mp4"))
    assert (out / "logs" / "vla_vst.log").exists()  # the quick preset trains the VLAs side by side
    assert report["picked_target_paired"] is not None
    # a rerun reuses every finished step
    steps_before = json.loads((out / "steps.json").read_text())
    subprocess.run(args, check=True)
    assert json.loads((out / "steps.json").read_text()) == steps_before
