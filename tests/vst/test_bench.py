"""`vst-bench` end to end on a tiny randomly initialised Qwen2.5-VL, plus resume, batching and bad input."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vst import bench
from vst.backbone import preset_checkpoint
from vst.bench import (
    BenchConfig,
    bench_data_from_engine,
    build_messages,
    load_predictions,
    run_bench,
    select_rows,
)
from vst.data.io import read_rows
from vst.data.rows import THINK_INSTRUCTION
from vst.scoring import score_answer

# --------------------------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """A tiny model on a CPU shared with other jobs runs ~10x faster on one thread than on two (see cpu_threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone_cache(tmp_path_factory) -> Path:
    """Where presets are built: $VST_CACHE/backbones, as vst.backbone lays it out."""
    return tmp_path_factory.mktemp("vst_cache") / "backbones"


@pytest.fixture(scope="module")
def tiny_model(backbone_cache) -> str:
    """The `tiny` preset (random weights, shipped tokenizer), saved and loaded like any HF checkpoint."""
    return str(preset_checkpoint("tiny", cache_dir=backbone_cache))


# ------------------------------------------------------------------------------------------------- fixture rows


def png(seed: int, size=(40, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


BOX = {"label": "red cube", "bbox_3d": [0.1, 0.0, 1.5, 0.2, 0.2, 0.2, 0.0, 0.3, 0.0]}
SKILLS = {  # skill: (family, split, n_images, answer_mode, gt, extra meta, a perfect answer)
    "depth_comparison": (
        "single_image",
        "bench",
        1,
        "choice",
        "B",
        {"options": ["red cube", "blue cone"]},
        "B",
    ),
    "detection_3d": ("single_image", "bench", 1, "boxes3d", [BOX], {}, json.dumps([BOX])),
    "camera_motion": ("multi_image", "bench", 2, "numeric", 0.5, {"unit": "m"}, "50 cm"),
    "object_count": ("video", "bench", 3, "numeric", 3, {"unit": None}, "3"),
    "color": ("general", "bench_general", 1, "text", "red", {"aliases": ["crimson"]}, "Red."),
}


def make_rows(n_per_skill: int = 3) -> list[dict]:
    rows = []
    for skill, (family, split, n_images, mode, gt, extra, answer) in SKILLS.items():
        for k in range(n_per_skill):
            placeholders = "".join("<image>" for _ in range(n_images))
            meta = {
                "skill": skill,
                "family": family,
                "answer_mode": mode,
                "gt": gt,
                "split": split,
                "seed": k,
                **extra,
            }
            rows.append({
                "id": f"{skill}-{k}",
                "data_source": "test",
                "conversations": [
                    {"from": "human", "value": f"{placeholders}\nQuestion {k} about {skill}?"},
                    {"from": "gpt", "value": answer},
                ],
                "images": [png(100 * k + i) for i in range(n_images)],
                "type": "general" if family == "general" else "perception",
                "meta_info": json.dumps(meta),
            })  # fmt: skip
    return rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def perfect_answers(rows: list[dict]) -> dict[str, str]:
    return {r["id"]: r["conversations"][-1]["value"] for r in rows}


# ------------------------------------------------------------------------------------------------------ tests


def test_cli_end_to_end_on_a_tiny_model(tiny_model, backbone_cache, tmp_path):
    data = write_parquet(make_rows(3), tmp_path / "data" / "bench.parquet")
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "vst-bench"), "model=tiny", f"data={data.parent}",
           f"output_dir={out}", "batch_size=4", "max_new_tokens=6", "limit=2", "cpu_threads=1"]  # fmt: skip
    env = {**os.environ, "VST_CACHE": str(backbone_cache.parent)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out) in result.stderr + result.stdout  # says where it wrote
    assert json.loads((out / "bench_run.json").read_text())["checkpoint"] == tiny_model  # the preset, by name

    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"{s}-{k}" for s in SKILLS for k in range(2))  # limit=2
    assert all(0.0 <= r["score"] <= 1.0 and 0 < r["new_tokens"] <= 6 for r in records)
    results = json.loads((out / "results.json").read_text())
    spatial, general = results["splits"]["spatial"], results["splits"]["general"]
    assert set(spatial["skills"]) == set(SKILLS) - {"color"} and set(general["skills"]) == {"color"}
    assert spatial["n"] == 8 and general["n"] == 2
    assert set(spatial["families"]) == {"single_image", "multi_image", "video"}
    assert results["speed"]["rows"] == 10 and results["speed"]["rows_per_s"] > 0
    assert "| **overall** |" in (out / "results.md").read_text()
    assert Image.open(out / "results.png").size[0] > 100
    assert (out / ".hydra" / "config.yaml").exists()


def test_scores_and_means_with_perfect_and_partly_wrong_answers(tmp_path, monkeypatch):
    rows = make_rows(2)
    answers = perfect_answers(rows)
    answers["depth_comparison-1"] = "A"  # wrong choice: depth_comparison scores 50
    answers["camera_motion-0"] = (
        "<think>moved</think> 0.6 m"  # 20% off passes tolerances 0.25..0.50: MRA 0.6, skill 80
    )
    monkeypatch.setattr(bench, "load_model", lambda *a, **k: (torch.nn.Linear(1, 1), None))
    by_question = {r["conversations"][0]["value"].split("\n", 1)[1]: r["id"] for r in rows}
    calls = []

    def fake_generate(model, processor, messages, max_new_tokens):
        calls.append(len(messages))
        return [(answers[by_question[m[-1]["content"][-1]["text"]]], 1) for m in messages]

    monkeypatch.setattr(bench, "generate", fake_generate)
    data = write_parquet(rows, tmp_path / "bench.parquet")
    results = run_bench(
        BenchConfig(model="test/fake-model", data=str(data), output_dir=str(tmp_path / "out"), batch_size=3)
    )

    spatial = results["splits"]["spatial"]
    scores = {s: e["score"] for s, e in spatial["skills"].items()}
    assert scores == pytest.approx(
        {"depth_comparison": 50.0, "detection_3d": 100.0, "camera_motion": 80.0, "object_count": 100.0}
    )
    assert spatial["overall"] == pytest.approx((50 + 100 + 80 + 100) / 4)  # mean over skills
    assert spatial["families"] == pytest.approx({"single_image": 75.0, "multi_image": 80.0, "video": 100.0})
    assert results["splits"]["general"]["overall"] == 100.0
    assert max(calls) <= 3 and sum(calls) == len(rows)

    # Stored scores are not trusted on resume: the outputs are re-scored, so a stale score changes nothing.
    predictions = tmp_path / "out" / "predictions.jsonl"
    stale = [dict(json.loads(line), score=0.0) for line in predictions.read_text().splitlines()]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in stale))
    again = run_bench(BenchConfig(model="test/fake-model", data=str(data), output_dir=str(tmp_path / "out")))
    assert again["splits"] == results["splits"] and sum(calls) == len(rows)


def test_think_mode_reports_the_well_formed_share(tmp_path, monkeypatch):
    """Asked to think, the report says how many outputs were well formed (`<think>...</think> answer`) and what
    those scored, per skill and split."""
    rows = make_rows(2)
    answers = {k: f"<think>because</think> {v}" for k, v in perfect_answers(rows).items()}
    answers["depth_comparison-1"] = "B"  # no think block: not well formed, yet scored as a direct answer
    answers["camera_motion-0"] = "<think>moved 50 cm"  # never closed: no answer, scores 0
    monkeypatch.setattr(bench, "load_model", lambda *a, **k: (torch.nn.Linear(1, 1), None))
    by_question = {r["conversations"][0]["value"].split("\n", 1)[1]: r["id"] for r in rows}

    def fake_generate(model, processor, messages, max_new_tokens):
        questions = [m[-1]["content"][-1]["text"].removesuffix(f"\n{THINK_INSTRUCTION}") for m in messages]
        return [(answers[by_question[q]], 1) for q in questions]

    monkeypatch.setattr(bench, "generate", fake_generate)
    data = write_parquet(rows, tmp_path / "bench.parquet")
    out = tmp_path / "out"
    spatial = run_bench(
        BenchConfig(model="test/fake-model", data=str(data), output_dir=str(out), think=True)
    )["splits"]["spatial"]
    assert {s: (e["score"], e["well_formed"]) for s, e in spatial["skills"].items()} == {
        "depth_comparison": (100.0, 50.0), "detection_3d": (100.0, 100.0),
        "camera_motion": (50.0, 50.0), "object_count": (100.0, 100.0),
    }  # fmt: skip
    assert spatial["well_formed"] == 75.0 and spatial["score_if_well_formed"] == 100.0
    report = (out / "results.md").read_text()
    assert (
        "75.0% of rows; their mean score 100.00" in report
        and "| camera_motion | multi_image | 2 | 50.00 | 50 |" in report
    )

    direct = run_bench(
        BenchConfig(model="test/fake-model", data=str(data), output_dir=str(tmp_path / "direct"))
    )
    assert "well_formed" not in direct["splits"]["spatial"]
    assert "Well-formed" not in (tmp_path / "direct" / "results.md").read_text()


def test_resume_keeps_written_rows_and_repairs_a_torn_line(tiny_model, tmp_path, monkeypatch):
    data = write_parquet(make_rows(1), tmp_path / "bench.parquet")
    cfg = BenchConfig(
        model=tiny_model, data=str(data), output_dir=str(tmp_path / "out"), batch_size=4, max_new_tokens=4
    )
    run_bench(cfg)
    path = tmp_path / "out" / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 5

    # Interrupted run: two rows missing and a half-written line at the end.
    path.write_text("".join(lines[:-2]) + lines[-2][:15])
    generated = []
    real_generate = bench.generate
    monkeypatch.setattr(
        bench, "generate", lambda m, p, msgs, n: generated.append(len(msgs)) or real_generate(m, p, msgs, n)
    )
    results = run_bench(cfg)
    assert sum(generated) == 2
    new_lines = path.read_text().splitlines(keepends=True)
    assert new_lines[:-2] == lines[:-2] and sorted(new_lines) == sorted(lines)  # greedy: same outputs again
    assert results["splits"]["spatial"]["n"] == 4

    generated.clear()
    run_bench(cfg)  # nothing left to do: the model is not even loaded
    assert generated == [] and path.read_text().splitlines(keepends=True) == new_lines

    with pytest.raises(ValueError, match="holds results of model"):
        run_bench(BenchConfig(model="other/model", data=str(data), output_dir=cfg.output_dir))
    with pytest.raises(
        ValueError, match="think=False, not think=True"
    ):  # the two prompts never mix in one dir
        run_bench(BenchConfig(model=cfg.model, data=str(data), output_dir=cfg.output_dir, think=True))
    with pytest.raises(ValueError, match="max_new_tokens=.*, not max_new_tokens=3"):
        run_bench(BenchConfig(model=cfg.model, data=str(data), output_dir=cfg.output_dir, max_new_tokens=3))


def test_batched_left_padded_generation_matches_one_by_one(tiny_model):
    model, processor = bench.load_model(tiny_model, "cpu", "float32")
    rows = select_rows(iter(make_rows(1)), ["spatial"], None)
    messages = [build_messages(r) for r in rows[1:]]  # 1, 2 and 3 images: prompts of different lengths
    batched = bench.generate(model, processor, messages, max_new_tokens=5)
    single = [bench.generate(model, processor, [m], max_new_tokens=5)[0] for m in messages]
    assert batched == single


def test_messages_put_images_where_the_placeholders_were():
    row = select_rows(iter(make_rows(1)), ["spatial"], None)[2]  # camera_motion: two images
    row.conversations = [
        {"from": "human", "value": "first <image> then <image> which moved?"},
        {"from": "gpt", "value": "x"},
    ]
    messages = build_messages(row, system_prompt="Be brief.")
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    kinds = [part["type"] for part in messages[1]["content"]]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert messages[1]["content"][1]["image"].size == (48, 40)
    assert len(messages) == 2  # the reference answer is not part of the prompt


def test_think_appends_the_cot_cue_once():

    row = select_rows(iter(make_rows(1)), ["spatial"], None)[0]
    direct = build_messages(row)[-1]["content"][-1]["text"]
    think = build_messages(row, think=True)[-1]["content"][-1]["text"]
    assert THINK_INSTRUCTION not in direct and think == f"{direct}\n{THINK_INSTRUCTION}"
    row.conversations[0]["value"] += f"\n{THINK_INSTRUCTION}"  # an RL row already asks: not twice
    assert build_messages(row, think=True)[-1]["content"][-1]["text"].count(THINK_INSTRUCTION) == 1


def test_select_rows_limits_per_skill_and_splits():
    rows = make_rows(3)
    assert len(select_rows(iter(rows), ["spatial", "general"], None)) == 15
    assert len(select_rows(iter(rows), ["spatial", "general"], 1)) == 5
    general = select_rows(iter(rows), ["general"], None)
    assert {r.skill for r in general} == {"color"} and all(r.split == "general" for r in general)


# --------------------------------------------------------------------------------------------------- bad input


def test_bad_rows_raise_errors_naming_the_row():
    rows = make_rows(1)
    wrong_count = dict(rows[0], id="bad-count", images=[])
    with pytest.raises(ValueError, match="bad-count: 1 <image> placeholders but 0 images"):
        build_messages(select_rows(iter([wrong_count]), ["spatial"], None)[0])
    selected = select_rows(iter(rows[:1]), ["spatial"], None)[0]
    selected.images = selected.images + selected.images
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        build_messages(selected)
    corrupt = dict(rows[0], id="bad-image", images=[b"\x89PNG not really"])
    with pytest.raises(ValueError, match="bad-image: an image does not decode"):
        build_messages(select_rows(iter([corrupt]), ["spatial"], None)[0])
    bad_meta = dict(rows[0], id="bad-meta", meta_info=json.dumps({"answer_mode": "choice"}))
    with pytest.raises(ValueError, match="bad-meta: .*no 'gt'"):
        select_rows(iter([bad_meta]), ["spatial"], None)
    with pytest.raises(ValueError, match="duplicate row id"):
        select_rows(iter([rows[0], rows[0]]), ["spatial"], None)


def test_bad_files_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        select_rows(read_rows(str(tmp_path / "nothing*.parquet")), ["spatial"], None)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="corrupt.parquet: cannot be read as Parquet"):
        select_rows(read_rows(str(corrupt)), ["spatial"], None)
    schemaless = write_parquet([{"question": "hi"}], tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="other.parquet: not VST row data"):
        select_rows(read_rows(str(schemaless)), ["spatial"], None)
    with pytest.raises(ValueError, match="unknown splits"):
        BenchConfig(model="test/fake-model", output_dir="o", splits=["spatial", "vibes"])
    with pytest.raises(ValueError, match="dtype"):
        BenchConfig(model="test/fake-model", output_dir="o", dtype="int8")
    with pytest.raises(ValueError, match="cpu_threads"):
        BenchConfig(model="test/fake-model", output_dir="o", cpu_threads=0)


def test_a_corrupt_line_in_the_middle_is_not_silently_dropped(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(
        '{"id": "a", "output": "B", "score": 1}\nnot json\n{"id": "b", "output": "C", "score": 0}\n'
    )
    with pytest.raises(ValueError, match="corrupt line"):
        load_predictions(path)
    assert path.read_text().count("\n") == 3  # untouched
    path.write_text('{"id": "a", "output": "B", "score": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="not a vst-bench record"):
        load_predictions(path)


# -------------------------------------------------------------------------------------- the data engine's rows


def test_the_data_engines_benchmark_fits_the_bench_and_its_answers_score_perfectly(tmp_path):
    """data=null: the engine writes one row per skill; every row builds a prompt and its reference answer scores 1."""
    root = bench_data_from_engine(tmp_path, per_skill=1, seed=0, splits=["spatial", "general"])
    rows = select_rows(read_rows(str(root)), ["spatial", "general"], None)
    families = {r.family for r in rows}
    assert families == {"single_image", "multi_image", "video", "general"}
    assert {r.split for r in rows if r.family == "general"} == {"general"}
    for row in rows:
        messages = build_messages(row)
        assert sum(p["type"] == "image" for p in messages[-1]["content"]) == len(row.images) > 0
        assert score_answer(row.conversations[-1]["value"], row.meta_info) == 1.0, row.id

    shards = sorted(root.rglob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    assert bench_data_from_engine(tmp_path, per_skill=1, seed=0, splits=["spatial", "general"]) == root
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # reused, not regenerated
