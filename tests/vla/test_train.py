import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vla import train as vla_train
from vla.modeling_vla import VLAPolicy

CONFIGS = str(Path(vla_train.__file__).resolve().parents[1] / "configs")


def _cfg(vla, out: Path, *overrides: str):
    args = [
        f"dataset={vla.root}",
        f"output_dir={out}",
        f"cache_dir={vla.cache}",
        "batch_size=2",
        "log_freq=1",
    ]
    args += ["chunk_size=4", "policy.image_size=56", "device=cpu", *overrides]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="vla_train", overrides=args)


def _step_of(pretrained: Path) -> int:
    state = pretrained.parent / "training_state" / "training_step.json"
    return json.loads(state.read_text())["step"]


def test_vla_train_writes_checkpoints_and_resumes(vla, tmp_path):
    out = tmp_path / "run"
    final = vla_train.train(_cfg(vla, out, "steps=4", "save_freq=2"))
    assert final == vla_train.last_checkpoint(out)
    checkpoints = out / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["000002", "000004", "last"]
    assert _step_of(final) == 4
    first = (checkpoints / "000004" / "pretrained_model" / "model.safetensors").read_bytes()

    # Rerunning the same command with more steps resumes from `last` (not from scratch).
    vla_train.train(_cfg(vla, out, "steps=6", "save_freq=2"))
    assert _step_of(vla_train.last_checkpoint(out)) == 6
    assert (checkpoints / "000006").is_dir()
    assert (checkpoints / "000004" / "pretrained_model" / "model.safetensors").read_bytes() == first

    policy = VLAPolicy.from_pretrained(vla_train.last_checkpoint(out))
    assert policy.config.chunk_size == 4 and policy.config.image_size == 56
    assert policy.config.scheduler_decay_steps == 6  # the cosine spans the (raised) run, not a fixed 10k

    # Resuming with other policy settings is refused before anything is touched.
    with pytest.raises(ValueError, match="chunk_size"):
        vla_train.train(_cfg(vla, out, "steps=8", "chunk_size=2"))
    assert _step_of(vla_train.last_checkpoint(out)) == 6


def test_vla_train_fine_tunes_from_a_saved_policy(vla, tmp_path):
    """policy.pretrained_path starts from a saved VLA's weights (a DAgger round, a new dataset): with lr 0 the
    fine-tuned policy is the saved one."""
    import torch
    from safetensors.torch import load_file

    first = vla_train.train(_cfg(vla, tmp_path / "a", "steps=2", "save_freq=2"))
    tuned = vla_train.train(
        _cfg(
            vla,
            tmp_path / "b",
            "steps=1",
            "save_freq=1",
            "lr=1e-20",  # lerobot's schedule divides by the peak lr: "zero", not 0
            "policy.optimizer_lr_vision=1e-20",
            "+policy.scheduler_decay_lr=1e-20",
            f"policy.pretrained_path={first.resolve()}",
        )
    )
    before, after = load_file(first / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert before.keys() == after.keys() and all(
        torch.allclose(before[k], after[k], rtol=0, atol=1e-12) for k in before
    )


def test_vla_train_exact_stats_replace_the_datasets_approximate_ones(vla, tmp_path):
    """A dataset whose stored q01/q99 are off (LeRobot's per-episode means, a hub dataset): exact_stats=true
    normalises with the data's own quantiles, in memory; the dataset on disk is left as it was."""
    import shutil

    import numpy as np
    import pyarrow.parquet as pq
    from lerobot.datasets.io_utils import load_stats, write_stats

    from vla.processor_vla import saved_action_stats

    root = tmp_path / "data"
    shutil.copytree(vla.root, root)
    stats = load_stats(root)
    stats["action"]["q01"], stats["action"]["q99"] = np.full(7, -0.01), np.full(7, 0.01)
    write_stats(stats, root)
    before = (root / "meta" / "stats.json").read_text()
    actions = np.concatenate(
        [
            np.asarray(pq.read_table(f, columns=["action"]).column("action").to_pylist())
            for f in root.glob("data/**/*.parquet")
        ]
    )

    stock = vla_train.train(_cfg(vla, tmp_path / "a", "steps=1", "save_freq=1", f"dataset={root}"))
    assert np.allclose(saved_action_stats(stock)["q99"], 0.01)
    exact = vla_train.train(
        _cfg(vla, tmp_path / "b", "steps=1", "save_freq=1", f"dataset={root}", "exact_stats=true")
    )
    saved = saved_action_stats(exact)
    assert np.allclose(saved["q01"], np.quantile(actions, 0.01, axis=0), atol=1e-6)
    assert np.allclose(saved["q99"], np.quantile(actions, 0.99, axis=0), atol=1e-6)
    assert (root / "meta" / "stats.json").read_text() == before


def test_vla_train_bad_inputs(vla, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset root"):
        vla_train.train(_cfg(vla, tmp_path / "a", "steps=1", f"dataset={tmp_path}"))
    with pytest.raises(FileNotFoundError, match="neither an existing dataset root nor a hub id"):
        vla_train.train(_cfg(vla, tmp_path / "a", "steps=1", "dataset=no_such_dir"))
    with pytest.raises(ValueError, match="unknown policy settings"):
        vla_train.train(_cfg(vla, tmp_path / "a", "steps=1", "+policy.chunk_sise=2"))
    with pytest.raises(FileNotFoundError, match="does not exist yet"):
        vla_train.train(_cfg(vla, tmp_path / "a", "steps=1", "backbone=vst", f"pipeline_dir={tmp_path}/vst"))
    assert not (tmp_path / "a").exists()
    stale = tmp_path / "b" / "train"
    stale.mkdir(parents=True)
    (stale / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no checkpoint"):
        vla_train.train(_cfg(vla, tmp_path / "b", "steps=1"))
    assert (stale / "notes.txt").read_text() == "keep me"


def test_stock_lerobot_train_finds_the_policy_under_accelerate(vla, tmp_path, free_port):
    """Stock `lerobot-train --policy.type=vst_vla` (the loop vla-train runs) finds the policy once the plugin
    package is named, and trains it in two CPU processes (gloo DDP: the effective batch doubles)."""
    out = tmp_path / "lerobot"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--main_process_port", str(free_port)]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += [
        "-m",
        "lerobot.scripts.lerobot_train",
        "--policy.discover_packages_path=vla",
        "--policy.type=vst_vla",
    ]
    cmd += [f"--policy.cache_dir={vla.cache}", "--policy.image_size=56", "--policy.chunk_size=2"]
    cmd += ["--policy.n_action_steps=2", "--policy.device=cpu", "--policy.cameras=[agentview]"]
    cmd += ["--dataset.repo_id=local/vla_test_lift", f"--dataset.root={vla.root}", f"--output_dir={out}"]
    cmd += ["--steps=2", "--batch_size=2", "--num_workers=0", "--save_freq=2", "--log_freq=1"]
    # Its own process group: on a timeout the ranks go too (killing accelerate alone left a rank behind,
    # sleeping in a collective for hours).
    proc = subprocess.Popen(
        cmd, env=vla.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()  # keep what the ranks said: a hang is otherwise undiagnosable
        pytest.fail(
            f"the two-process run hung for 300 s; its output ends:\n{stdout[-2000:]}\n{stderr[-2000:]}"
        )
    assert proc.returncode == 0, stderr[-3000:]
    assert "Effective batch size: 2 x 2 = 4" in stdout + stderr
    saved = out / "checkpoints" / "last" / "pretrained_model"
    policy = VLAPolicy.from_pretrained(saved)
    assert policy.config.cameras == ["agentview"] and policy.config.chunk_size == 2


def test_amp_setting_reaches_the_policy(vla, tmp_path, monkeypatch):
    import vst.cpu_amp

    for native in (True, False):
        monkeypatch.setattr(vst.cpu_amp, "native_bf16", lambda native=native: native)
        assert vla_train.policy_config(_cfg(vla, tmp_path)).use_amp is False  # opt-in
        assert vla_train.policy_config(_cfg(vla, tmp_path, "amp=auto")).use_amp is native  # follows the CPU
        assert vla_train.policy_config(_cfg(vla, tmp_path, "amp=false")).use_amp is False
        assert vla_train.policy_config(_cfg(vla, tmp_path, "amp=true")).use_amp is True
    monkeypatch.setattr(vst.cpu_amp, "native_bf16", lambda: True)
    # bf16 weights already autocast through lerobot-train; the policy's own field wins over amp
    assert vla_train.policy_config(_cfg(vla, tmp_path, "amp=auto", "policy.dtype=bfloat16")).use_amp is False
    assert vla_train.policy_config(_cfg(vla, tmp_path, "amp=false", "+policy.use_amp=true")).use_amp is True
    with pytest.raises(ValueError, match="amp must be auto, true or false"):
        vla_train.policy_config(_cfg(vla, tmp_path, "amp=sometimes"))
