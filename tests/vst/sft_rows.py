"""Small synthetic rows in the VST schema for the SFT and packing tests (a red square left or right of centre)."""

import io

import numpy as np
from PIL import Image


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def make_rows(n: int, seed: int = 0, row_type: str = "perception") -> list[dict]:
    """Rows with 0-2 images of varied sizes and varied text lengths, so packing meets every case."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        side = str(rng.choice(["left", "right"]))
        h, w = [(120, 160), (112, 112), (112, 140)][i % 3]
        img = np.full((h, w, 3), 200, np.uint8)
        x0 = 8 if side == "left" else w - 40
        img[40:70, x0 : x0 + 30] = (220, 30, 30)
        n_img = [1, 2, 1, 0][i % 4]
        marks = "".join(f"Image {k + 1}: <image>\n" for k in range(n_img))
        question = "Where is the red cube?" + " Answer briefly." * int(rng.integers(0, 4))
        answer = f"The red cube is on the {side}." if n_img else "There is no image."
        if row_type.endswith("thought"):
            answer = f"<think>\nThe red pixels are on the {side} half.\n</think>\n{answer}"
        rows.append(
            {
                "id": f"{row_type}-{seed}-{i}",
                "data_source": "test",
                "type": row_type,
                "conversations": [
                    {"from": "human", "value": marks + question},
                    {"from": "gpt", "value": answer},
                ],
                "images": [png(img)] * n_img,
                "meta_info": "{}",
            }
        )
    return rows


def write_rows(rows: list[dict], path) -> str:
    """Rows as a Parquet shard through the data engine's writer (images as {bytes, path} entries)."""
    from vst.data.io import write_shard

    write_shard(
        [r | {"images": [{"bytes": b, "path": f"{k}.png"} for k, b in enumerate(r["images"])]} for r in rows],
        path,
    )
    return str(path)
