"""What every skill generator shares: the question/answer record, the skill record, and answer builders.

A skill is two functions: `cameras` (where to look, given a scene) and `ask` (a question about the rendered
views, computed from ground truth, or None when this scene cannot support a clean question so the caller draws
another). Builders here keep answers balanced: options are shuffled, yes/no targets are drawn first.
"""

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..geometry import box9_in_camera, canonical_yaw, to_camera
from ..scene import YAW_SYMMETRY, Camera, Entity, Scene

if TYPE_CHECKING:
    from ..render import View

LETTERS = "ABCDEF"
UNIT_WORDS = {"m": "meters", "cm": "centimeters", "m2": "square meters", None: ""}


@dataclass
class QA:
    """One question about rendered views, with its ground truth in the meta_info contract's terms."""

    question: str  # the human turn's text, without <image> placeholders
    answer: str  # the gpt turn's text (for CoT rows it follows the <think> block)
    mode: str  # "choice" | "numeric" | "text" | "boxes3d"
    gt: object
    options: list[str] | None = None
    unit: str | None = None
    aliases: list[str] | None = None
    think: str | None = None  # reasoning trace computed from ground truth (CoT rows)
    images: list[np.ndarray] | None = None  # replaces the rendered RGB (e.g. views with drawn marks)
    extra: dict = field(default_factory=dict)  # extra ground truth kept in meta_info


@dataclass
class Ctx:
    """What `ask` sees: the scene, its rendered views, a seeded generator and the answer-style switch."""

    scene: Scene
    views: list["View"]
    rng: np.random.Generator
    checkable: bool  # benchmark / RL rows: every answer must be rule-checkable (captions become choices)
    min_pixels: int

    def visible(self, k: int = 0, furniture: bool = False) -> list[Entity]:
        pool = self.scene.entities if furniture else self.scene.objects
        return [
            e for e in pool if self.views[k].pixels.get(e.uid, 0) >= self.min_pixels and not self._is_table(e)
        ]

    def seen_anywhere(self, furniture: bool = False) -> list[Entity]:
        return [
            e
            for e in (self.scene.entities if furniture else self.scene.objects)
            if any(v.pixels.get(e.uid, 0) >= self.min_pixels for v in self.views) and not self._is_table(e)
        ]

    def first_frame(self, e: Entity) -> int | None:
        for k, v in enumerate(self.views):
            if v.pixels.get(e.uid, 0) >= self.min_pixels:
                return k
        return None

    def _is_table(self, e: Entity) -> bool:
        return self.scene.layout == "tabletop" and e.furniture

    def pick(self, items: Sequence):
        return items[int(self.rng.integers(len(items)))]


@dataclass(frozen=True)
class Skill:
    name: str
    family: str  # "single_image" | "multi_image" | "video" | "general"
    layouts: tuple[tuple[str, float], ...]  # (layout, probability)
    cameras: Callable  # (rng, scene, width, height, n_frames) -> list[Camera]
    ask: Callable[[Ctx], QA | None]
    cot: bool = False  # fills QA.think
    weight: float = 1.0  # share within its family in the default mix

    def pick_layout(self, rng) -> str:
        names, probs = zip(*self.layouts)
        return names[int(rng.choice(len(names), p=np.asarray(probs) / sum(probs)))]


# ------------------------------------------------------------------------------------------ referring to things


def names(scene: Scene, entities: Sequence[Entity] | None = None) -> dict[int, str]:
    """Unique referring names ("red mug", "larger red mug") for the entities that can be told apart.

    Uniqueness is judged over the whole scene, so a name never fits an object hidden in another view.
    """
    groups: dict[str, list[Entity]] = {}
    for e in scene.entities:
        groups.setdefault(e.label, []).append(e)
    out = {}
    for label, group in groups.items():
        if len(group) == 1:
            out[group[0].uid] = label
        elif len(group) == 2:
            va, vb = (float(np.prod(e.dims)) for e in group)
            if max(va, vb) > 1.6 * min(va, vb):
                big, small = (group[0], group[1]) if va > vb else (group[1], group[0])
                out[big.uid], out[small.uid] = f"larger {label}", f"smaller {label}"
    if entities is not None:
        keep = {e.uid for e in entities}
        out = {u: n for u, n in out.items() if u in keep}
    return out


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(kind: str) -> str:
    return kind + ("es" if kind.endswith(("x", "s")) else "s")


# ------------------------------------------------------------------------------------------ geometry helpers


def cam_xyz(cam: Camera, e: Entity) -> np.ndarray:
    return to_camera(cam.cam_to_world, np.asarray(e.pos))


def center_distance(a: Entity, b: Entity) -> float:
    return float(np.linalg.norm(np.asarray(a.pos) - np.asarray(b.pos)))


def box_entry(label: str, e: Entity, cam: Camera) -> dict:
    """The answer box of an entity; symmetric objects get the yaw that faces the camera (see canonical_yaw)."""
    yaw = canonical_yaw(e.yaw, YAW_SYMMETRY.get(e.kind, 1), cam.cam_to_world)
    box = box9_in_camera(e.pos, e.dims, yaw, cam.cam_to_world)
    return {"label": label, "bbox_3d": [round(v, 2) + 0.0 for v in box]}  # + 0.0 turns -0.0 into 0.0


def boxes_json(entries: list[dict]) -> str:
    """A fenced JSON list with one box per line, the layout VST-P answers use."""
    lines = ",\n".join(f"\t{json.dumps(e)}" for e in entries)
    return f"```json\n[\n{lines}\n]\n```"


def fmt(v: float, d: int = 2) -> str:
    s = f"{v:.{d}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0.00"


def fmt_xyz(p) -> str:
    return "(" + ", ".join(fmt(float(x)) for x in p) + ")"


def heading_deg(v) -> float:
    return math.degrees(math.atan2(v[1], v[0]))


def signed_turn_deg(a, b) -> float:
    """Signed angle from floor direction a to b, counter-clockwise (a left turn) positive."""
    d = heading_deg(b) - heading_deg(a)
    return (d + 180.0) % 360.0 - 180.0


# ------------------------------------------------------------------------------------------ answer builders

CHOICE_INSTRUCTIONS = (
    "Answer with the option's letter from the given choices directly.",
    "Reply with only the letter of the correct option.",
    "Choose the correct option and answer with its letter.",
)


def choice(rng, question: str, correct: str, distractors: Sequence[str], **kw) -> QA:
    """A multiple-choice QA with shuffled options (so the right letter is uniform over positions)."""
    options = [correct, *distractors]
    if len(set(options)) != len(options):
        raise ValueError(f"duplicate options: {options}")
    order = rng.permutation(len(options))
    options = [options[i] for i in order]
    letter = LETTERS[options.index(correct)]
    body = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    instr = CHOICE_INSTRUCTIONS[int(rng.integers(len(CHOICE_INSTRUCTIONS)))]
    return QA(f"{question}\nOptions:\n{body}\n{instr}", letter, "choice", letter, options=options, **kw)


def yes_no(rng, make_question: Callable[[bool], tuple[str, bool] | None], **kw) -> QA | None:
    """Draw the wanted answer first, then ask the question that has it, so yes and no are equally common."""
    want = bool(rng.random() < 0.5)
    made = make_question(want)
    if made is None:
        return None
    question, truth = made
    return choice(rng, question, "yes" if truth else "no", ["no" if truth else "yes"], **kw)


NUMERIC_INSTRUCTIONS = {
    "m": ("Answer with a number in meters.", "Give the answer in meters as a single number."),
    "cm": ("Answer with a number in centimeters.", "Give the answer in centimeters as a single number."),
    "m2": ("Answer with a number in square meters.", "Give the area in square meters as a single number."),
    None: ("Answer with a single number.", "Reply with just the number."),
}


def numeric(rng, question: str, value: float, unit: str | None, decimals: int, **kw) -> QA:
    v = round(float(value), decimals)
    instr = NUMERIC_INSTRUCTIONS[unit][int(rng.integers(2))]
    words = UNIT_WORDS[unit]
    answer = f"{v:.{decimals}f}" + (f" {words}" if words else "")
    return QA(f"{question}\n{instr}", answer, "numeric", v, unit=unit, **kw)


def text(question: str, answer: str, aliases: list[str] | None = None, **kw) -> QA:
    return QA(question, answer, "text", answer, aliases=aliases, **kw)


def describe_count(counter: Counter) -> str:
    parts = []
    for label, n in sorted(counter.items()):
        kind_words = label.split()
        if n == 1:
            parts.append(f"{article(label)} {label}")
        else:
            parts.append(f"{n} {' '.join(kind_words[:-1] + [plural(kind_words[-1])])}")
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]
