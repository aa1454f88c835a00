"""Parquet in and out: write shards atomically, read any VST-style Parquet (ours or real VST-P shards).

Rows are written in VST's layout (see rows.py) with Hugging Face feature metadata, so
`datasets.load_dataset("parquet", data_files=...)` shows `images` as a list of images. `read_rows` accepts a
file, a directory (searched recursively) or a glob, through pyarrow or through `datasets`, and returns plain
dicts: `images` as a list of encoded bytes and `meta_info` parsed from JSON.
"""

import glob
import io
import json
import os
from collections.abc import Collection, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

_CONV = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
_IMAGES = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("data_source", pa.string()),
        ("conversations", _CONV),
        ("images", _IMAGES),
        ("type", pa.string()),
        ("meta_info", pa.string()),
    ]
)
DEPTHS_FIELD = pa.field("depths", pa.list_(pa.binary()))
_STRING = {"dtype": "string", "_type": "Value"}
_HF_FEATURES = {
    "id": _STRING,
    "data_source": _STRING,
    "conversations": {"feature": {"from": _STRING, "value": _STRING}, "_type": "List"},
    "images": {"feature": {"_type": "Image"}, "_type": "List"},
    "type": _STRING,
    "meta_info": _STRING,
}


class DataFileError(ValueError):
    """A file that is not readable VST-row Parquet (corrupt, wrong schema, undecodable image)."""


# ------------------------------------------------------------------------------------------ writing


def write_shard(rows: list[dict], path: Path) -> None:
    """Write rows to `path` via a temporary name and an atomic rename, so a partial shard never looks done."""
    path = Path(path)
    schema = SCHEMA.append(DEPTHS_FIELD) if rows and "depths" in rows[0] else SCHEMA
    features = dict(_HF_FEATURES)
    if "depths" in schema.names:
        features["depths"] = {"feature": {"dtype": "binary", "_type": "Value"}, "_type": "List"}
    hf = json.dumps({"info": {"features": features}}, sort_keys=True).encode()
    table = pa.Table.from_pylist(rows, schema=schema.with_metadata({b"huggingface": hf}))
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, len(rows)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------------------------ reading


def parquet_files(source) -> list[Path]:
    """A file, a directory (recursively) or a glob pattern -> sorted Parquet files; errors if there are none."""
    s = str(source)
    p = Path(s)
    if p.is_dir():
        files = sorted(p.rglob("*.parquet"))
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).is_file())
    if not files:
        raise FileNotFoundError(f"no Parquet files at {s!r} (give a .parquet file, a directory or a glob)")
    return files


def read_rows(
    source,
    *,
    backend: str = "pyarrow",
    check_images: bool = True,
    cache_dir: str | None = None,
    types: Collection[str] | None = None,
) -> Iterator[dict]:
    """Yield rows from VST-style Parquet: dicts with id, data_source, conversations, images (list of bytes),
    type, meta_info (parsed JSON, or None) and any extra columns. Raises DataFileError naming the file (and row)
    for corrupt files, missing columns, malformed conversations or images that do not decode. `types` keeps only
    rows of those types, skipped before their images are checked (general pretraining reads 10% of the mix)."""
    if backend not in ("pyarrow", "datasets"):
        raise ValueError(f"backend={backend!r}: use 'pyarrow' or 'datasets'")
    reader = _pyarrow_records if backend == "pyarrow" else _datasets_records
    for path in parquet_files(source):
        for i, record in enumerate(reader(path, cache_dir)):
            if types is None or (record.get("type") or "unknown") in types:
                yield normalize_row(record, path, i, check_images)


def _pyarrow_records(path: Path, cache_dir=None) -> Iterator[dict]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataFileError(f"{path}: cannot be read as Parquet ({e})") from e
    _check_columns(path, pf.schema_arrow.names)
    try:
        for batch in pf.iter_batches(batch_size=64):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataFileError(f"{path}: corrupt Parquet data ({e})") from e


def _datasets_records(path: Path, cache_dir=None) -> Iterator[dict]:
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as e:  # datasets wraps arrow errors in several exception types
        raise DataFileError(f"{path}: cannot be loaded with datasets ({type(e).__name__}: {e})") from e
    _check_columns(path, ds.column_names)
    for name, feature in ds.features.items():  # keep encoded bytes; decoding is ours to check
        if isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Image):
            ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
        elif isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    yield from ds


def _check_columns(path: Path, names: list[str]) -> None:
    if "conversations" not in names:
        raise DataFileError(
            f"{path}: not VST row data: no 'conversations' column (columns: {', '.join(names) or 'none'}; "
            f"expected {', '.join(SCHEMA.names)})"
        )


def _image_bytes(item) -> bytes | None:
    if item is None:
        return None
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, dict):
        b = item.get("bytes") or item.get("byres")  # VST-P shards spell it both ways
        if b is None and item.get("path") and Path(item["path"]).is_file():
            return Path(item["path"]).read_bytes()
        return b
    raise TypeError(f"unsupported image entry of type {type(item).__name__}")


def normalize_row(record: dict, path: Path, i: int, check_images: bool = True) -> dict:
    where = f"{path}: row {i}"
    row = dict(record)
    row.setdefault("id", None)
    row["id"] = row["id"] if row["id"] is not None else f"{path.stem}-{i}"
    where += f" (id {row['id']})"
    conv = row.get("conversations")
    if (
        not isinstance(conv, list)
        or not conv
        or not all(
            isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
            for t in conv
        )
    ):
        raise DataFileError(
            f"{where}: 'conversations' must be a non-empty list of {{'from', 'value'}} strings"
        )
    row["data_source"] = row.get("data_source") or path.stem
    row["type"] = row.get("type") or "unknown"
    raw = row.get("images")
    images = []
    for k, item in enumerate(raw if isinstance(raw, list) else ([] if raw is None else [raw])):
        try:
            b = _image_bytes(item)
        except TypeError as e:
            raise DataFileError(f"{where}: image {k}: {e}") from e
        if b is None:
            raise DataFileError(f"{where}: image {k} has no bytes")
        if check_images:
            try:
                with Image.open(io.BytesIO(b)) as im:
                    im.load()
            except Exception as e:
                raise DataFileError(f"{where}: image {k} does not decode ({type(e).__name__}: {e})") from e
        images.append(b)
    row["images"] = images
    meta = row.get("meta_info")
    if isinstance(meta, str):
        try:
            row["meta_info"] = json.loads(meta) if meta.strip() else None
        except json.JSONDecodeError as e:
            raise DataFileError(f"{where}: meta_info is not valid JSON ({e})") from e
    else:
        row["meta_info"] = meta
    return row


def decode_images(row: dict) -> list[Image.Image]:
    """The row's images as RGB PIL images."""
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in row["images"]]


# ------------------------------------------------------------------------------------------ LLaVA export


def export_llava(source, out_dir: Path) -> Path:
    """LLaVA-style `data.json` (id, image paths, conversations, type, meta_info) plus image files."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for row in read_rows(source, check_images=False):
        paths = []
        for k, b in enumerate(row["images"]):
            ext = "png" if b[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"
            rel = f"images/{row['id']}_{k}.{ext}"
            (out_dir / rel).write_bytes(b)
            paths.append(rel)
        entry = {
            "id": row["id"],
            "conversations": row["conversations"],
            "type": row["type"],
            "data_source": row["data_source"],
            "meta_info": json.dumps(row["meta_info"]),
        }
        if paths:
            entry["image"] = paths[0] if len(paths) == 1 else paths
        entries.append(entry)
    target = out_dir / "data.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    os.replace(tmp, target)
    return target
