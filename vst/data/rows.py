"""The row schema (VST's Parquet layout) and the `meta_info` contract that scorers and rewards rely on.

Columns (one row = one conversation):
    id            str   unique id ("vstsim-<split>-<seed hex>")
    data_source   str   "vst-sim/<skill>"
    conversations list of {"from": "human"|"gpt", "value": str}; the human turn holds one `<image>` per image
    images        list of {"bytes": encoded PNG/JPEG, "path": name}; `read_rows` hands them out as bytes
    type          str   ROW_TYPES: "perception" (VST-P), "spatial_thought"/"general_thought" (CoT: the gpt
                        turn is `<think>...</think>` then the answer), "rl", "general"
    meta_info     str   JSON, the contract below
    depths        (optional) list of 16-bit PNG depth maps in millimetres, when generated with keep_depth=true

meta_info contract (keys always present):
    skill              one of vst.data.skills.SKILLS
    family             "single_image" | "multi_image" | "video" | "general"
    answer_mode        "choice" | "numeric" | "text" | "boxes3d"
    gt                 choice: the letter "A".."F"; numeric: float; text: str;
                       boxes3d: list of {"label": str, "bbox_3d": [x, y, z, x_size, y_size, z_size, pitch, yaw, roll]}
                       (camera frame of the first image, X right / Y down / Z forward, metres; angles are extrinsic
                       x-y-z Euler angles in degrees/180, see vst.data.geometry.box9_corners)
    options            choice: option texts in letter order; otherwise null
    unit               numeric: "m" | "cm" | "m2" | null (counts, degrees); otherwise null
    aliases            text: accepted alternative answers (may be empty); otherwise null
    split              "train" | "bench" | "bench_general"
    seed               int, regenerates this sample (with the same generator_version and config)
    scene_id           str
    generator_version  str
plus ground truth kept for analysis: "video" (bool), "n_images", "cameras" (per image: width, height, fx, fy,
cx, cy, cam_to_world), "scene" (every entity's kind, colour, size, pose), "fov_unified", and skill extras
such as "uids" (entities the question is about).
"""

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the contract stays importable without the renderer and skills
    from .skills.common import QA

GENERATOR_VERSION = "vst-sim-1.1"  # 1.1: CoT rows carry THINK_INSTRUCTION
ROW_TYPES = ("perception", "spatial_thought", "general_thought", "rl", "general")
THOUGHT_ROWS = ("spatial_thought", "general_thought")  # the CoT rows: the answer is a trace, then the answer
FAMILIES = ("single_image", "multi_image", "video", "general")
ANSWER_MODES = ("choice", "numeric", "text", "boxes3d")
UNITS = ("m", "cm", "m2", None)
SPLITS = ("train", "bench", "bench_general")
META_KEYS = (
    "skill",
    "family",
    "answer_mode",
    "gt",
    "options",
    "unit",
    "aliases",
    "split",
    "seed",
    "scene_id",
    "generator_version",
)
COLUMNS = ("id", "data_source", "conversations", "images", "type", "meta_info")
IMAGE_TOKEN = "<image>"

# CoT and RL rows add this so the model knows when to think: the reward checks exactly this shape, and a question
# without it (perception and general rows, the benchmark's default prompt) is answered directly. Without the cue a
# CoT cold start taught the tiny model to think on every question and lost most of what SFT had taught it
# (spatial 21.9 -> 10.9 on vst-bench, video skills 25.8 -> 5.0).
THINK_INSTRUCTION = (
    "First think about the question step by step inside <think> </think> tags, then give the final answer."
)


def human_turn(question: str, n_images: int, video: bool) -> str:
    if video:
        frames = "".join(f"{IMAGE_TOKEN}\n" for _ in range(n_images))
        return f"{frames}These are {n_images} frames of a video of a room, in temporal order.\n{question}"
    if n_images == 1:
        return f"{IMAGE_TOKEN}\n{question}"
    images = "".join(f"Image {k + 1}: {IMAGE_TOKEN}\n" for k in range(n_images))
    return f"{images}{question}"


def gpt_turn(qa: "QA", row_type: str) -> str:
    if row_type in THOUGHT_ROWS:
        if not qa.think:
            raise ValueError("a CoT row needs a reasoning trace")
        return f"<think>\n{qa.think}\n</think>\n{qa.answer}"
    return qa.answer


def meta_info(qa: "QA", *, skill: str, family: str, split: str, seed: int, scene_id: str, **extra) -> dict:
    if qa.mode not in ANSWER_MODES:
        raise ValueError(f"answer mode {qa.mode!r} not in {ANSWER_MODES}")
    if qa.unit not in UNITS:
        raise ValueError(f"unit {qa.unit!r} not in {UNITS}")
    meta = {
        "skill": skill,
        "family": family,
        "answer_mode": qa.mode,
        "gt": qa.gt,
        "options": qa.options if qa.mode == "choice" else None,
        "unit": qa.unit if qa.mode == "numeric" else None,
        "aliases": (qa.aliases or []) if qa.mode == "text" else None,
        "split": split,
        "seed": seed,
        "scene_id": scene_id,
        "generator_version": GENERATOR_VERSION,
    }
    meta.update(qa.extra)
    meta.update(extra)
    return meta


def make_row(qa: "QA", images: list[bytes], image_ext: str, *, row_type: str, video: bool, **meta_kw) -> dict:
    if row_type not in ROW_TYPES:
        raise ValueError(f"row type {row_type!r} not in {ROW_TYPES}")
    meta = meta_info(qa, **meta_kw, video=video, n_images=len(images))
    row_id = f"vstsim-{meta['split']}-{meta['seed']:016x}"
    thinks = row_type == "rl" or row_type in THOUGHT_ROWS
    question = qa.question + (f"\n{THINK_INSTRUCTION}" if thinks else "")
    return {
        "id": row_id,
        "data_source": f"vst-sim/{meta['skill']}",
        "conversations": [
            {"from": "human", "value": human_turn(question, len(images), video)},
            {"from": "gpt", "value": gpt_turn(qa, row_type)},
        ],
        "images": [{"bytes": b, "path": f"{row_id}/{k}.{image_ext}"} for k, b in enumerate(images)],
        "type": row_type,
        "meta_info": json.dumps(meta, separators=(",", ":")),
    }
