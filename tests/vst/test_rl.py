"""The RL stage on the tiny preset with rows from the data engine: the recipe's settings, a few steps that write a
reloadable checkpoint, logged rewards equal to vst.rewards, resume, the NaN stop, bad input and two processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import GRPOTrainer

import vst.rl as R
from vst.grpo import VSTGRPOTrainer
from vst.rewards import accuracy_reward, completion_text, format_reward
from vst.sft import NonFiniteLoss

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
FAST = ["rl.prompts_per_step=2", "rl.max_completion_length=4"]
SKILLS = (
    "depth_compare,distance,camera_motion"  # short prompts: choice and numeric answers, one and two images
)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: several threads on the shared 2-core machine are much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_rows(out, mix):
    from vst.data.cli import run as vst_data
    from vst.data.render import close_renderer

    try:
        vst_data(
            {
                "row_mix": mix,
                "skills": SKILLS,
                "n": 6,
                "output_dir": str(out),
                "progress": False,
                "workers": 1,
            }
        )
    finally:
        close_renderer()
    return str(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_rows(tmp_path_factory.mktemp("rl_rows"), {"perception": 0, "cot": 0, "rl": 1, "general": 0})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def overrides(data, out, cache, *more):
    return ["stage=rl", f"data={data}", f"output_dir={out}", f"cache_dir={cache}", *FAST, *more]


def config(*args):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("vst_train", overrides(*args))


def test_recipe_settings(data, cache, tmp_path):
    """configs/stage/rl.yaml is VST's RL recipe, and it reaches TRL as such."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = R.rl_config(compose("vst_train", ["stage=rl", f"data={data}", f"output_dir={tmp_path}"]))
    args = R.grpo_args(cfg, tmp_path, world=1)
    assert cfg.row_types == ["rl"] and (cfg.train.lr, cfg.train.lr_vision, cfg.train.lr_merger) == (1e-6,) * 3
    assert (args.num_generations, args.temperature, args.epsilon, args.epsilon_high) == (5, 1.0, 0.2, 0.28)
    assert (args.beta, args.loss_type, args.scale_rewards, args.reward_weights) == (
        0.0,
        "dapo",
        "group",
        [0.5, 0.5],
    )
    assert cfg.rl.online_filter and args.report_to == [] and args.learning_rate == 1e-6
    assert (
        args.per_device_train_batch_size * args.gradient_accumulation_steps == 8 * 5
    )  # 8 prompts x 5 rollouts
    assert R.grpo_args(cfg, tmp_path, world=2).per_device_train_batch_size == 20
    with pytest.raises(ValueError, match=r"15 completions per step do not split evenly over 2 process"):
        R.grpo_args(
            R.rl_config(config(data, tmp_path, cache, "rl.prompts_per_step=3", "rl.num_generations=5")),
            tmp_path,
            2,
        )


SCRIPTED = ["<think>\nThe first option.\n</think>\nA", "<think>\nhmm\n</think>\nB", "A", "<think></think>\nA"]


def test_steps_checkpoint_and_logged_rewards(data, cache, tmp_path, monkeypatch):
    """Two steps with the project's rewards. Half of the rollouts are replaced by scripted answers (the random
    tiny model never writes a think block), so rewards vary; every reward the trainer computed and logged must
    equal vst.rewards on the same completions and meta_info."""
    real_rollouts, real_rewards, seen = (
        GRPOTrainer._generate_single_turn,
        VSTGRPOTrainer._calculate_rewards,
        [],
    )

    def rollouts(self, prompt_ids, *args, **kwargs):
        ids, logprobs = real_rollouts(self, prompt_ids, *args, **kwargs)
        tok = self.processing_class.tokenizer
        for i in range(0, len(ids), 2):
            ids[i] = tok.encode(SCRIPTED[i // 2 % 4], add_special_tokens=False) + [tok.eos_token_id]
        return ids, logprobs

    def rewards(self, inputs, prompts, completions, completion_ids_list):
        out = real_rewards(self, inputs, prompts, completions, completion_ids_list)
        seen.append(([x["meta_info"] for x in inputs], completions, out))
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", rollouts)
    monkeypatch.setattr(VSTGRPOTrainer, "_calculate_rewards", rewards)
    threads, set_threads = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (threads.append(n), set_threads(n)))
    summary = R.train(config(data, tmp_path, cache, "train.max_steps=2", "train.cpu_threads=1"))
    assert threads == [1]  # the shared train.cpu_threads applies to the RL stage too
    assert (
        summary["steps"] == 2 and Path(summary["model"]) == tmp_path / "model" and summary["tokens_per_s"] > 0
    )

    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and len(seen) == 2
    for rec, (meta, completions, per_func) in zip(logged, seen):
        acc, fmt = accuracy_reward(completions, meta), format_reward(completions)
        assert per_func.tolist() == [[a, f] for a, f in zip(acc, fmt)]
        assert rec["reward"] == pytest.approx(sum(0.5 * a + 0.5 * f for a, f in zip(acc, fmt)) / len(acc))
        assert rec["accuracy"] == pytest.approx(sum(acc) / len(acc))
        assert rec["format"] == pytest.approx(sum(fmt) / len(fmt))
        assert 0 <= rec["filtered_groups"] <= 1 and rec["tokens_per_s"] > 0
        assert completion_text(completions[0]) == SCRIPTED[0]
    assert any(f == 1.0 for _, c, _ in seen for f in format_reward(c))

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    assert (
        processor.tokenizer.padding_side == "right"
    )  # the starting processor, not the rollouts' left padding
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Which is closer?"}]}],
        tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True,
    )  # fmt: skip
    assert model.generate(**prompt, max_new_tokens=3).shape[1] > prompt["input_ids"].shape[1]


def varied_reward(completions, **kwargs):
    """A reward that differs between rollouts of the random model, so that every step really moves the weights."""
    return [float(len(completion_text(c)) % 3) for c in completions]


def test_resume_continues_where_it_stopped(data, cache, tmp_path):
    """Killed after the step-1 checkpoint, a rerun continues at step 2 and ends with the same weights as an
    uninterrupted run (weights, optimizer, sampling RNG and prompt order all restored)."""
    args = (
        data,
        tmp_path,
        cache,
        "train.max_steps=2",
        "train.save_every=1",
        "train.lr=1e-3",
        "train.lr_merger=1e-3",
    )
    R.train(config(*args), reward_funcs=[varied_reward, varied_reward])
    uninterrupted = load_file(tmp_path / "model" / "model.safetensors")
    start = AutoModelForImageTextToText.from_pretrained(
        tmp_path / "checkpoints" / "checkpoint-1"
    ).state_dict()
    shutil.rmtree(tmp_path / "model")
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-2")
    (tmp_path / "metrics.jsonl").write_text("")
    summary = R.train(config(*args), reward_funcs=[varied_reward, varied_reward])
    assert summary["steps"] == 2
    (logged,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged["step"] == 2
    # the LLM's lr, not the vision tower's 1e-6 (Trainer logs the first group's)
    assert logged["lr"] == pytest.approx(1e-3)
    resumed = load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)
    key = "model.language_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(start[key], resumed[key.replace("language_model.", "")])  # step 2 did train
    with pytest.raises(ValueError, match="checkpoints of a different run.*seed"):
        R.train(config(*args, "train.seed=1"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, cache, tmp_path, monkeypatch):
    real, calls = GRPOTrainer._compute_loss, []

    def poisoned(self, model, inputs):
        calls.append(1)
        loss = real(self, model, inputs)
        return loss + float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 2.*checkpoint-1"):
        R.train(config(data, tmp_path, cache, "train.max_steps=3", "train.save_every=1"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (tmp_path / "model").exists()
    AutoModelForImageTextToText.from_pretrained(tmp_path / "checkpoints" / "checkpoint-1")


def test_bad_input_fails_clearly(data, cache, tmp_path):
    from vst.data.io import read_rows, write_shard

    rows = list(read_rows(data))
    shard = [
        r
        | {
            "images": [{"bytes": b, "path": None} for b in r["images"]],
            "meta_info": json.dumps(r["meta_info"]),
        }
        for r in rows
    ]
    shard[1]["meta_info"] = None
    write_shard(shard, tmp_path / "b.parquet")
    with pytest.raises(
        ValueError, match=rf"row {rows[1]['id']}: unusable meta_info.*JSON object, got NoneType"
    ):
        R.train(config(tmp_path / "b.parquet", tmp_path / "o1", cache))
    perception = make_rows(tmp_path / "p", {"perception": 1, "cot": 0, "rl": 0, "general": 0})
    with pytest.raises(ValueError, match=r"no rows of types \['rl'\].*rule-checkable rows"):
        R.train(config(perception, tmp_path / "o2", cache))
    with pytest.raises(ValueError, match="train.lora.enabled=true needs train.freeze_vision=true"):
        R.rl_config(config(data, tmp_path, cache, "train.lora.enabled=true"))
    with pytest.raises(ValueError, match="rl stage takes no replay"):
        R.rl_config(config(data, tmp_path, cache, "replay.fraction=0.3", f"replay.data={data}"))
    with pytest.raises(ValueError, match="every prompt is longer than"):
        R.train(config(data, tmp_path / "o3", cache, "train.max_seq_len=64"))
    assert not (tmp_path / "o1" / "model").exists()


def test_accelerate_two_processes(data, cache, tmp_path, free_port):
    """DDP on CPU (gloo) under `accelerate launch`: groups split across the two processes, rewards gathered."""
    script = tmp_path / "run_rl.py"
    script.write_text(
        "import logging, sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "import vst.rl\n"
        "logging.basicConfig(level=logging.INFO)\n"
        f"with initialize_config_dir(config_dir={CONFIGS!r}, version_base='1.3'):\n"
        "    cfg = compose('vst_train', sys.argv[1:])\n"
        "s = vst.rl.train(cfg)\n"
        # one write per process: two prints can interleave on the shared pipe ("SUMMARYSUMMARY True 2")
        "sys.stdout.write(f\"SUMMARY {s['main_process']} {s['steps']}\\n\"); sys.stdout.flush()\n"
    )
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--main_process_port", str(free_port)]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    r = subprocess.run(
        [*launch, *overrides(data, out, cache, "train.max_steps=2")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    logs = r.stdout + r.stderr
    assert "2 process(es)" in logs and "SUMMARY True 2" in r.stdout and "SUMMARY False 2" in r.stdout
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    AutoModelForImageTextToText.from_pretrained(out / "model")
    AutoProcessor.from_pretrained(out / "model")
