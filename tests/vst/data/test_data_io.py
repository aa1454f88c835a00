"""Shards, manifest, determinism across worker counts, resume, the reader (pyarrow and datasets), bad input."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vst.data.cli import run
from vst.data.dataset import build_dataset, shard_name
from vst.data.generate import DataConfig, generate_rows
from vst.data.io import DataFileError, read_rows, write_shard
from vst.data.rows import COLUMNS, META_KEYS, ROW_TYPES

N, SHARD = 40, 16


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_worker")
    manifest = build_dataset(DataConfig(seed=5), N, out, workers=1, shard_size=SHARD, progress=False)
    return out, manifest


def _png(rgb=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), rgb, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_shards_and_manifest(built):
    out, manifest = built
    assert sorted(p.name for p in out.glob("*.parquet")) == [shard_name(k) for k in range(3)]
    assert manifest["complete"] and manifest["n"] == N
    assert sum(manifest["counts"]["skill"].values()) == N == sum(s["rows"] for s in manifest["shards"])
    assert json.loads((out / "manifest.json").read_text()) == manifest
    rows = list(read_rows(out))
    assert len(rows) == N and len({r["id"] for r in rows}) == N
    for r in rows:
        assert r["type"] in ROW_TYPES
        assert set(META_KEYS) <= set(r["meta_info"])
        assert (
            r["conversations"][0]["value"].count("<image>") == len(r["images"]) == r["meta_info"]["n_images"]
        )
        if "thought" in r["type"]:
            assert r["conversations"][1]["value"].startswith("<think>\n")
    by_skill = {}
    for r in rows:
        by_skill[r["meta_info"]["skill"]] = by_skill.get(r["meta_info"]["skill"], 0) + 1
    assert by_skill == manifest["counts"]["skill"]


def test_two_workers_give_identical_bytes(built, tmp_path):
    out, _ = built
    build_dataset(DataConfig(seed=5), N, tmp_path, workers=2, shard_size=SHARD, progress=False)
    for k in range(3):
        assert (tmp_path / shard_name(k)).read_bytes() == (out / shard_name(k)).read_bytes()


def test_resume_keeps_finished_shards(built, tmp_path):
    src, _ = built
    for k in range(3):
        (tmp_path / shard_name(k)).write_bytes((src / shard_name(k)).read_bytes())
    (tmp_path / "manifest.json").write_text((src / "manifest.json").read_text())
    before = os.stat(tmp_path / shard_name(0))
    (tmp_path / shard_name(1)).unlink()
    (tmp_path / "shard-00001.parquet.tmp-999").write_bytes(b"half a shard")  # an interrupted write
    build_dataset(DataConfig(seed=5), N, tmp_path, workers=1, shard_size=SHARD, progress=False)
    after = os.stat(tmp_path / shard_name(0))
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not rewritten
    assert (tmp_path / shard_name(1)).read_bytes() == (src / shard_name(1)).read_bytes()
    assert not list(tmp_path.glob("*.tmp-*"))
    # Extending n keeps the old full shards and completes the rest.
    m = build_dataset(DataConfig(seed=5), N + SHARD, tmp_path, workers=1, shard_size=SHARD, progress=False)
    assert m["n"] == N + SHARD and len(list(read_rows(tmp_path))) == N + SHARD
    assert (tmp_path / shard_name(0)).read_bytes() == (src / shard_name(0)).read_bytes()


def test_other_config_in_same_dir_is_refused(built):
    out, _ = built
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ValueError, match="different config.*seed"):
        build_dataset(DataConfig(seed=6), N, out, workers=1, shard_size=SHARD, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp


def test_shards_without_manifest_are_refused(built, tmp_path):
    src, _ = built
    (tmp_path / shard_name(0)).write_bytes((src / shard_name(0)).read_bytes())
    with pytest.raises(ValueError, match="no manifest.json"):
        build_dataset(DataConfig(seed=5), N, tmp_path, workers=1, shard_size=SHARD, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_name(0)]


def test_read_rows_via_datasets_matches_pyarrow(built, tmp_path):
    out, _ = built
    a = list(read_rows(out / shard_name(0)))
    b = list(read_rows(str(out / "shard-*.parquet"), backend="datasets", cache_dir=str(tmp_path)))[: len(a)]
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert x["images"] == y["images"]
        assert x["conversations"] == y["conversations"]
        assert x["meta_info"] == y["meta_info"]
    import datasets  # the plain Hugging Face route shows images as images

    ds = datasets.load_dataset(
        "parquet", data_files=str(out / shard_name(0)), split="train", cache_dir=str(tmp_path)
    )
    assert set(COLUMNS) <= set(ds.column_names)
    assert isinstance(ds[0]["images"][0], Image.Image)


def test_reads_vst_style_rows_without_our_extras(tmp_path):
    """Real VST-P shards: images as bare bytes or {bytes, path}, other placeholders, no meta_info/type."""
    path = tmp_path / "vst_p.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "conversations": [
                        {"from": "human", "value": "<|image_pad|>Where?"},
                        {"from": "gpt", "value": "A"},
                    ],
                    "images": [_png()],
                    "image_resized_height": 28,
                },
                {
                    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
                    "images": None,
                    "image_resized_height": None,
                },
            ]
        ),
        path,
    )
    rows = list(read_rows(path))
    assert rows[0]["images"] == [_png()] and rows[1]["images"] == []
    assert rows[0]["id"] == "vst_p-0" and rows[0]["type"] == "unknown" and rows[0]["meta_info"] is None
    assert rows[0]["image_resized_height"] == 28


def _row(images):
    return {
        "id": "x",
        "data_source": "t",
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
        "images": [{"bytes": b, "path": "p"} for b in images],
        "type": "general",
        "meta_info": "{}",
    }


def test_bad_files_give_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataFileError, match="corrupt.parquet.*Parquet"):
        list(read_rows(corrupt))
    with pytest.raises(DataFileError, match="corrupt.parquet"):
        list(read_rows(corrupt, backend="datasets", cache_dir=str(tmp_path / "c")))

    schemaless = tmp_path / "other.parquet"
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), schemaless)
    with pytest.raises(DataFileError, match="other.parquet.*no 'conversations' column.*question, answer"):
        list(read_rows(schemaless))

    bad_image = tmp_path / "bad_image.parquet"
    write_shard([_row([_png()]), _row([_png(), b"\x89PNG\r\n\x1a\nbroken"])], bad_image)
    with pytest.raises(DataFileError, match=r"bad_image.parquet: row 1 \(id x\): image 1 does not decode"):
        list(read_rows(bad_image))
    assert len(list(read_rows(bad_image, check_images=False))) == 2
    # a type filter skips rows before their images are checked, and checks the kept ones as before
    assert list(read_rows(bad_image, types=["perception"])) == []
    with pytest.raises(DataFileError, match="image 1 does not decode"):
        list(read_rows(bad_image, types=["general"]))

    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        list(read_rows(tmp_path / "nothing-here"))


def test_write_shard_is_atomic(tmp_path):
    target = tmp_path / shard_name(0)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError, KeyError)):
        write_shard([{"id": 1, "conversations": "not a list"}], target)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_cli_run_with_preview_and_llava_export(tmp_path):
    cfg = {
        "output_dir": str(tmp_path),
        "n": 6,
        "workers": 1,
        "shard_size": 4,
        "progress": False,
        "preview": True,
        "preview_per_skill": 2,
        "export_llava": True,
        "skills": ["det3d", "camera_motion"],
        "seed": 1,
    }
    manifest = run(cfg)
    assert manifest["n"] == 6
    sheets = sorted(p.name for p in (tmp_path / "preview").glob("*.png"))
    assert sheets and set(sheets) <= {"det3d.png", "camera_motion.png"}
    data = json.loads((tmp_path / "llava" / "data.json").read_text())
    assert len(data) == 6
    first = data[0]["image"] if isinstance(data[0]["image"], list) else [data[0]["image"]]
    assert all((tmp_path / "llava" / p).is_file() for p in first)
    with pytest.raises(ValueError, match="unknown vst-data option"):
        run({**cfg, "imgae_width": 100})
    with pytest.raises(ValueError, match="valid skills"):
        run({**cfg, "skills": "det3d,flying"})


def test_bench_split_has_fixed_count_per_skill(tmp_path):
    cfg = {
        "output_dir": str(tmp_path),
        "split": "bench",
        "per_skill": 1,
        "workers": 1,
        "progress": False,
        "skills": "depth_compare,caption,video_count",
    }
    manifest = run(cfg)
    assert manifest["counts"]["skill"] == {"caption": 1, "depth_compare": 1, "video_count": 1}
    rows = list(read_rows(tmp_path))
    assert {r["meta_info"]["split"] for r in rows} == {"bench"}
    assert all(r["meta_info"]["answer_mode"] != "text" for r in rows)  # benchmark answers are rule-checkable


def test_generation_is_deterministic_in_process():
    cfg = DataConfig(seed=11)
    assert generate_rows(cfg, range(3)) == generate_rows(cfg, range(3))


def test_keep_depth_stores_metric_depth(tmp_path):
    cfg = DataConfig(seed=2, keep_depth=True, skills="distance")
    (row,) = generate_rows(cfg, [0])
    write_shard([row], tmp_path / "d.parquet")
    (back,) = list(read_rows(tmp_path / "d.parquet"))
    depth = np.asarray(Image.open(io.BytesIO(back["depths"][0]))) / 1000.0
    assert depth.shape == (168, 224) and 0.2 < float(np.median(depth)) < 10.0
    assert Path(tmp_path / "d.parquet").exists()
