"""Contact sheets for people: one PNG per skill with each sample's images, question and answer."""

import io
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .io import read_rows

SHEET_WIDTH = 900
THUMB_HEIGHT = 120
MAX_THUMBS = 8


def _panel(row: dict, font) -> Image.Image:
    thumbs = []
    for b in row["images"][:MAX_THUMBS]:
        im = Image.open(io.BytesIO(b)).convert("RGB")
        w = max(1, round(im.width * THUMB_HEIGHT / im.height))
        thumbs.append(im.resize((w, THUMB_HEIGHT)))
    scale = min(1.0, (SHEET_WIDTH - 8 * (len(thumbs) + 1)) / max(1, sum(t.width for t in thumbs)))
    if scale < 1.0:  # long videos: shrink the strip to the sheet width
        thumbs = [t.resize((max(1, round(t.width * scale)), max(1, round(t.height * scale)))) for t in thumbs]
    human = row["conversations"][0]["value"].replace("<image>\n", "").replace("<image>", "")
    answer = row["conversations"][1]["value"] if len(row["conversations"]) > 1 else ""
    meta = row["meta_info"] or {}
    head = f"[{row['type']}] {meta.get('skill', '?')}  gt={str(meta.get('gt'))[:80]}  {row['id']}"
    lines = [head]
    for label, body, limit in (("Q", human, 900), ("A", answer, 700)):
        body = body if len(body) <= limit else body[:limit] + " ..."
        for para in body.split("\n"):
            lines += textwrap.wrap(f"{label}: {para}" if label else para, width=150) or [""]
            label = ""
    line_h = font.size + 3
    strip_h = max((t.height for t in thumbs), default=0)
    panel = Image.new("RGB", (SHEET_WIDTH, strip_h + 12 + line_h * len(lines) + 8), "white")
    x = 8
    for t in thumbs:
        panel.paste(t, (x, 6))
        x += t.width + 8
    draw = ImageDraw.Draw(panel)
    y = strip_h + 12
    for k, line in enumerate(lines):
        draw.text((8, y), line, fill=(120, 0, 0) if k == 0 else (0, 0, 0), font=font)
        y += line_h
    draw.line((0, panel.height - 1, SHEET_WIDTH, panel.height - 1), fill=(160, 160, 160), width=1)
    return panel


def write_previews(source, out_dir, per_skill: int = 6) -> list[Path]:
    """Read rows from `source` and write `<out_dir>/<skill>.png` with up to `per_skill` samples each."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=11)
    picked: dict[str, list[dict]] = {}
    for row in read_rows(source):
        skill = (row["meta_info"] or {}).get("skill", row["data_source"]).replace("/", "_")
        if len(picked.setdefault(skill, [])) < per_skill:
            picked[skill].append(row)
    written = []
    for skill, rows in sorted(picked.items()):
        panels = [_panel(r, font) for r in rows]
        sheet = Image.new("RGB", (SHEET_WIDTH, sum(p.height for p in panels)), "white")
        y = 0
        for p in panels:
            sheet.paste(p, (0, y))
            y += p.height
        path = out_dir / f"{skill}.png"
        sheet.save(path, optimize=False)
        written.append(path)
    return written
