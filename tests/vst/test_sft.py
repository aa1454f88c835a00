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
from sft_rows import make_rows, write_rows
from transformers import AutoModelForImageTextToText, AutoProcessor

import vst.sft as S
from vst.train import sft_config

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
FAST = ["train.pack_tokens=384", "train.max_seq_len=256", "train.log_every=1", "train.lr=1e-3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state and refuses an Accelerator with another mixed precision: a stage
    runs once per process in real use, here several (bf16 on this CPU, fp32 when asked; later modules' RL and
    lerobot-train in fp32)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rows")
    rows = make_rows(10, 0, "perception") + make_rows(6, 1, "general") + make_rows(6, 2, "spatial_thought")
    return write_rows(rows, d / "train.parquet")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def config(stage, data, out, cache, *overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            "vst_train",
            [f"stage={stage}", f"data={data}", f"output_dir={out}", f"cache_dir={cache}", *FAST, *overrides],
        )
    return sft_config(cfg)


@pytest.mark.parametrize("stage", ["pretrain", "sft", "cot"])
def test_each_stage_trains_and_reloads(stage, data, cache, tmp_path):
    summary = S.train(config(stage, data, tmp_path, cache, "train.max_steps=2"))
    assert summary["steps"] == 2 and Path(summary["model"]) == tmp_path / "model"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and all(r["tokens_per_s"] > 0 for r in lines)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Where is the red cube?"}]}],
        tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True,
    )  # fmt: skip
    assert model.generate(**prompt, max_new_tokens=3).shape[1] > prompt["input_ids"].shape[1]


def test_stage_rows_and_learning_rates(data, cache, tmp_path):
    cot = config("cot", data, tmp_path, cache)
    assert cot.row_types == ["spatial_thought", "general_thought"] and (
        cot.train.lr,
        cot.train.lr_vision,
    ) == (1e-3, 1e-6)
    rows = S.load_rows(cot.data, cot.row_types)
    assert len(rows) == 6 and all(r["conversations"][1]["value"].startswith("<think>") for r in rows)
    with pytest.raises(ValueError, match="no rows of types"):
        S.load_rows(cot.data, ["rl"])


def test_labels_cover_only_assistant_turns(cache):
    from vst.backbone import build_backbone

    model, processor = build_backbone("tiny", cache_dir=cache)
    row = make_rows(1)[0]
    s = S.encode_row(row, processor, model.model.get_rope_index)
    learned = s["input_ids"][1:][s["targets"][:-1] != S.IGNORE]
    assert processor.tokenizer.decode(learned) == row["conversations"][1]["value"] + "<|im_end|>"
    assert len(s["input_ids"]) == S.row_length(row, processor)  # the cheap planning length is exact


def test_param_groups_freezing_and_lora(data, cache, tmp_path):
    from vst.backbone import build_backbone

    model, _ = build_backbone("tiny", cache_dir=cache)
    t = S.TrainConfig(lr=1.0, lr_vision=2.0, lr_merger=3.0)
    groups = {g["name"]: g for g in S.param_groups(S.prepare_model(model, t), S.part_lrs(t))}
    assert {k: g["lr"] for k, g in groups.items()} == {"llm": 1.0, "vision": 2.0, "merger": 3.0}
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == model.num_parameters()
    frozen = S.TrainConfig(freeze_vision=True, freeze_merger=True)
    assert [g["name"] for g in S.param_groups(S.prepare_model(model, frozen), S.part_lrs(frozen))] == ["llm"]
    # LoRA on the LLM with the vision tower frozen: the saved checkpoint is a plain merged model
    cfg = config(
        "sft",
        data,
        tmp_path,
        cache,
        "train.max_steps=1",
        "train.lora.enabled=true",
        "train.freeze_vision=true",
    )
    S.train(cfg)
    before = load_file(next(Path(cache).glob("tiny-*/model.safetensors")))
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert before.keys() == after.keys()  # no adapter keys left
    vision = [k for k in before if k.startswith("model.visual.") and not k.startswith("model.visual.merger.")]
    assert len(vision) > 20 and all(torch.equal(before[k], after[k]) for k in vision)
    q = "model.layers.0.self_attn.q_proj.weight"  # LoRA-adapted, merged on save
    assert not torch.equal(before[q], after[q])
    with pytest.raises(ValueError, match="cannot be combined with freeze_llm"):
        config("sft", data, tmp_path, cache, "train.lora.enabled=true", "train.freeze_llm=true")


def test_resume_continues_where_it_stopped(data, cache, tmp_path):
    S.train(config("sft", data, tmp_path, cache, "train.max_steps=2", "train.save_every=1"))
    uninterrupted = load_file(tmp_path / "model" / "model.safetensors")
    shutil.rmtree(tmp_path / "model")  # as if killed right after the step-1 checkpoint
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000002")
    (tmp_path / "metrics.jsonl").write_text("")
    summary = S.train(config("sft", data, tmp_path, cache, "train.max_steps=2", "train.save_every=1"))
    assert summary["steps"] == 2
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        2
    ]  # only 2 ran
    resumed = load_file(tmp_path / "model" / "model.safetensors")
    assert all(
        torch.equal(uninterrupted[k], resumed[k]) for k in resumed
    )  # same data order and optimizer state
    with pytest.raises(ValueError, match="checkpoints of a different run.*seed"):
        S.train(config("sft", data, tmp_path, cache, "train.max_steps=2", "train.seed=1"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, cache, tmp_path, monkeypatch):
    real, calls = S.token_loss_sum, []

    def poisoned(model, batch):
        calls.append(1)
        loss = real(model, batch)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(S, "token_loss_sum", poisoned)
    with pytest.raises(S.NonFiniteLoss, match=r"loss became nan at step 2.*step-00000001"):
        S.train(config("sft", data, tmp_path, cache, "train.max_steps=3", "train.save_every=1"))
    assert [p.name for p in S.checkpoints(tmp_path)] == ["step-00000001"] and not (
        tmp_path / "model"
    ).exists()
    AutoModelForImageTextToText.from_pretrained(tmp_path / "checkpoints" / "step-00000001" / "model")


def test_bad_rows_fail_clearly_and_long_rows_are_dropped(cache, tmp_path):
    rows = make_rows(4)
    rows[2]["images"] = rows[2]["images"][:0]  # placeholders without images
    with pytest.raises(ValueError, match=r"row perception-0-2: 1 <image> placeholders but 0 images"):
        S.row_messages(rows[2])
    with pytest.raises(ValueError, match="unknown speaker"):
        S.row_messages(
            rows[3] | {"conversations": [{"from": "bot", "value": "x"}, {"from": "gpt", "value": "y"}]}
        )
    with pytest.raises(ValueError, match="no non-empty gpt turn"):
        S.row_messages(rows[3] | {"conversations": rows[3]["conversations"][:1]})
    bad = write_rows(make_rows(4) + [rows[2]], tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="perception-0-2"):
        S.train(config("sft", bad, tmp_path / "o1", cache, "train.max_steps=1"))
    long = make_rows(6)
    long[0]["conversations"][0]["value"] += " very long" * 200
    path = write_rows(long, tmp_path / "long.parquet")
    summary = S.train(config("sft", path, tmp_path / "o2", cache, "train.max_steps=1"))
    assert summary["dropped"] == 1
    with pytest.raises(ValueError, match="pack_tokens=128 must be >= max_seq_len=256"):
        config("sft", path, tmp_path, cache, "train.pack_tokens=128")


def test_packing_off_trains_the_same_samples(data, cache, tmp_path):
    summary = S.train(
        config("sft", data, tmp_path, cache, "train.packing=false", "train.batch_size=4", "train.max_steps=1")
    )
    assert summary["steps"] == 1 and summary["samples_per_s"] > 0


def run(args, **kw):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kw)


def test_cli_dispatches_each_stage(data, tmp_path, monkeypatch, capsys):
    import vst.rl
    import vst.train

    seen = []

    def fake(cfg):
        seen.append((cfg.stage, cfg.train.lr))
        return {"main_process": True, "model": "M", "steps": 0}

    monkeypatch.setattr(vst.rl, "train", fake)
    monkeypatch.setattr(S, "train", fake)
    for stage in ("rl", "cot"):
        monkeypatch.setattr(
            sys, "argv", ["vst-train", f"stage={stage}", f"data={data}", f"output_dir={tmp_path}"]
        )
        vst.train.main()
    assert seen == [("rl", 1e-6), ("cot", 1e-5)] and "vst-train: stage cot wrote M" in capsys.readouterr().out


def test_accelerate_two_processes(data, cache, tmp_path, free_port):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--main_process_port", str(free_port)]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vst.train"]
    args = ["stage=sft", "model=tiny", f"data={data}", f"output_dir={tmp_path}", f"cache_dir={cache}", *FAST]
    r = run([*launch, *args, "train.max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        "2 process(es)" in r.stdout and r.stdout.count("vst-train: stage sft wrote") == 1
    )  # hydra logs to stdout
    AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    AutoProcessor.from_pretrained(tmp_path / "model")


def test_accumulated_gradient_is_the_token_mean_of_the_whole_step(cache):
    """Two micro-batches accumulated give the gradient of one batch holding both (token-weighted, not averaged
    per micro-batch), so grad_accum and world size change speed, not the objective."""
    from accelerate import Accelerator

    from vst.backbone import build_backbone
    from vst.packing import pack

    model, processor = build_backbone("tiny", cache_dir=cache)
    samples = [S.encode_row(r, processor, model.model.get_rope_index) for r in make_rows(5)]
    acc = Accelerator(cpu=True)
    entry = lambda ss: (pack(ss), len(ss), sum(len(s["input_ids"]) for s in ss))  # noqa: E731
    grads = []
    for micro in ([entry(samples[:2]), entry(samples[2:])], [entry(samples)]):
        model.zero_grad()
        loss, n_tokens, n_samples = S.accumulate(model, micro, acc)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (n_samples, n_tokens) == (5, sum(len(s["input_ids"]) for s in samples))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_mix_replay_count_fraction_and_seed():
    rows, replay = make_rows(14, 0, "spatial_thought"), make_rows(20, 1, "general")
    mixed = S.mix_replay(rows, replay, 0.3, seed=0)
    assert mixed[:14] == rows and len(mixed) == 20  # k = round(14 * 0.3 / 0.7) = 6
    ids = [r["id"] for r in mixed[14:]]
    assert len(set(ids)) == 6 and all(i.startswith("general-") for i in ids)  # without replacement
    assert [r["id"] for r in S.mix_replay(rows, replay, 0.3, seed=0)[14:]] == ids
    assert [r["id"] for r in S.mix_replay(rows, replay, 0.3, seed=1)[14:]] != ids
    assert S.mix_replay(rows, replay, 0.0, seed=0) == rows
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        S.mix_replay(rows, replay, 1.0, seed=0)


def test_mix_replay_with_replacement_when_few(caplog):
    rows, replay = make_rows(10, 0, "spatial_thought"), make_rows(3, 1, "general")
    with caplog.at_level("WARNING", logger="vst.sft"):
        mixed = S.mix_replay(rows, replay, 0.5, seed=0)
    assert len(mixed) == 20 and {r["id"] for r in mixed[10:]} <= {r["id"] for r in replay}
    assert "with replacement" in caplog.text


def test_replay_config_is_checked_and_fingerprinted(data, cache, tmp_path):
    cot = config("cot", data, tmp_path, cache)
    assert cot.replay == S.ReplayConfig()  # off by default
    on = ["replay.row_types=[perception,general]", "replay.fraction=0.3"]
    cfg = config("cot", data, tmp_path, cache, f"replay.data={data}", *on)
    assert cfg.replay.data == [data] and cfg.replay.row_types == ["perception", "general"]
    with pytest.raises(ValueError, match=r"replay.fraction=0.3 needs replay.data"):
        config("cot", data, tmp_path, cache, *on)
    with pytest.raises(ValueError, match=r"replay.fraction must be in \[0, 1\)"):
        config("cot", data, tmp_path, cache, f"replay.data={data}", "replay.fraction=1.0")
    with pytest.raises(ValueError, match=r"replay.fraction must be in \[0, 1\)"):
        S.SFTConfig("cot", "tiny", data, str(tmp_path), replay=S.ReplayConfig(data, None, -0.1))
    assert S.SFTConfig("cot", "tiny", data, str(tmp_path), replay=S.ReplayConfig(data)).replay.data == [data]
    fp = S.fingerprint(cfg, 1)
    assert fp["replay"] == {"data": [data], "row_types": ["perception", "general"], "fraction": 0.3}
    assert "replay" not in S.fingerprint(cot, 1)  # off: fingerprints of older checkpoints still match
    other = config("cot", data, tmp_path, cache, f"replay.data={data}", *on[:1], "replay.fraction=0.5")
    assert S.fingerprint(other, 1) != fp


def test_cot_with_replay_trains_and_refuses_other_replay_on_resume(data, cache, tmp_path, caplog):
    replay = [f"replay.data={data}", "replay.row_types=[perception,general]"]
    with caplog.at_level("INFO", logger="vst.sft"):
        summary = S.train(
            config("cot", data, tmp_path, cache, *replay, "replay.fraction=0.5", "train.max_steps=1")
        )
    assert summary["steps"] == 1 and "replay: mixed 6 rows" in caplog.text  # 6 CoT rows + 6 replayed
    with pytest.raises(ValueError, match="checkpoints of a different run.*replay"):
        S.train(config("cot", data, tmp_path, cache, *replay, "replay.fraction=0.3", "train.max_steps=1"))


@pytest.mark.parametrize("bf16", ["true", "false"])
def test_bf16_on_the_cpu_autocasts_keeps_attention_fp32_and_saves_fp32(
    bf16, data, cache, tmp_path, monkeypatch
):
    seen = {"dtypes": set()}
    real = S.token_loss_sum

    def spy(model, batch):
        m = getattr(model, "module", model)
        if "attention" not in seen:
            seen["attention"] = (
                m.config.text_config._attn_implementation,
                m.config.vision_config._attn_implementation,
            )
            mlp = m.model.language_model.layers[0].mlp.down_proj
            mlp.register_forward_hook(lambda mod, i, o: seen["dtypes"].add(o.dtype))
        return real(model, batch)

    monkeypatch.setattr(S, "token_loss_sum", spy)
    summary = S.train(config("sft", data, tmp_path, cache, "train.max_steps=2", f"train.bf16={bf16}"))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    if bf16 == "true":
        assert seen["dtypes"] == {torch.bfloat16}
        assert seen["attention"] == ("varlen_sdpa_fp32", "sdpa_fp32")
    else:
        assert seen["dtypes"] == {torch.float32} and seen["attention"] == ("varlen_sdpa", "sdpa")
    weights = load_file(Path(summary["model"]) / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}  # the master weights, not bf16 copies
    assert "fp32" not in (Path(summary["model"]) / "config.json").read_text()
