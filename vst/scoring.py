"""Answer parsing and metrics shared by `vst-bench` and the RL rewards.

A model's output is scored against a row's `meta_info` (see `score_answer`). Model output is untrusted: anything
malformed (not a string, unbalanced or repeated `<think>` tags, no parsable answer, NaN/inf, garbage JSON, absurdly
long text) scores 0 and never raises. Bad `meta_info` is our own data's fault and raises `ValueError`.

3D box convention (the data engine's `vst.data.geometry.box9_corners` is the same; a test pins the two together):
`bbox_3d = [x, y, z, x_size, y_size, z_size, pitch, yaw, roll]` in the camera frame (X right, Y down, Z forward),
metres for position and size. The box's own axes carry x/y/z_size and are rotated into the camera frame by
R = Rz(roll) @ Ry(yaw) @ Rx(pitch), i.e. extrinsic rotations about the camera's X (pitch), then Y (yaw, the vertical
axis), then Z (roll): scipy's `Rotation.from_euler("xyz", [pitch, yaw, roll])`. As in VST-P, the angles are written
in half-turns (degrees / 180, so each lies in (-1, 1]); `ANGLE_UNIT` converts them to radians. A camera-frame point
is `center + R @ local`; all angles 0 means the box is aligned with the camera axes.
"""

import json
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment, linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Longer outputs are treated as degenerate rather than parsed: no real answer is this long, and it bounds the cost
# of scoring inside an RL loop.
MAX_OUTPUT_CHARS = 200_000
LETTERS = "ABCDEF"
# VSI-Bench thresholds theta = 0.50, 0.55, ..., 0.95 written as the tolerances 1 - theta = k/20 (exact decimals).
MRA_TOLERANCES = tuple(k / 20 for k in range(1, 11))
# Relative errors are rounded to this many decimals before comparing with a tolerance, so that decimal edge cases
# (1.45 vs 1.0 is exactly 45% off) fall on the side the decimal definition says, not on float noise.
REL_ERROR_DECIMALS = 12
# gt == 0 makes the relative error undefined; such a row counts a prediction as right only if it is zero itself
# (within this absolute tolerance). In practice this is an object count of zero.
ZERO_GT_ATOL = 1e-6
F1_IOU_THRESHOLD = 0.25
ANGLE_UNIT = math.pi  # radians per bbox_3d angle unit (VST-P writes degrees / 180)


# ---------------------------------------------------------------------------------------------------- answer text


def extract_answer(output: object) -> str | None:
    """The answer part of a model output: what follows the single `<think>...</think>` block, or all of it.

    Returns None for anything that cannot hold an answer: non-strings, over-long text, unbalanced or repeated think
    tags, or nothing left after the block.
    """
    if not isinstance(output, str) or len(output) > MAX_OUTPUT_CHARS:
        return None
    n_open, n_close = output.count(THINK_OPEN), output.count(THINK_CLOSE)
    if (n_open, n_close) == (1, 1) and output.index(THINK_OPEN) < output.index(THINK_CLOSE):
        output = output.split(THINK_CLOSE, 1)[1]
    elif n_open or n_close:
        return None
    answer = output.strip()
    return answer or None


_ANSWER_PREFIX = re.compile(
    r"^\s*(?:(?:so|thus|therefore|hence)[\s,]+)?(?:the\s+|my\s+)?(?:final\s+|correct\s+)?answer\s*(?:is\s*)?[:=\-]?\s*",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _core_answer(answer: str) -> str:
    """Drop the wrappers models put around an answer: `\\boxed{}`, markdown emphasis, 'The answer is', quotes."""
    boxed = _BOXED.findall(answer)
    if boxed:
        answer = boxed[-1]
    answer = answer.replace("**", "").replace("`", "")
    answer = _ANSWER_PREFIX.sub("", answer, count=1)
    return answer.strip().strip("\"'").strip()


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed (SQuAD-style normalisation)."""
    text = text.lower().translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


# ---------------------------------------------------------------------------------------------- multiple choice

_LONE_LETTER = re.compile(r"\(?\s*([A-Z])\s*\)?[.:]?")
_LEADING_LETTER = re.compile(r"\(?([A-Z])(?:\)|[.:])\s")
_MARKED_LETTER = re.compile(
    r"(?i:answer|option|choice)\s*(?:(?i:is)\s*)?(?:[:=]\s*)?\(?([A-Z])\)?(?![A-Za-z])"
)
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")
_ARTICLE_FOLLOWER = re.compile(r"\s+(?!(?:and|or|nor)\b)[a-z]")  # "A chair" is an article, "A or B" is not


def parse_choice(answer: str, options: Sequence[str]) -> str | None:
    """The option letter an answer picks, or None when it picks none or several.

    Tried in order: a bare letter ("B", "(B)", "B."), a leading letter ("B. left of"), a marked letter
    ("answer is B", "Option: B", the last one wins), a parenthesised letter, the text of exactly one option, and
    finally exactly one distinct standalone capital letter (an article "A" before a lower-case word does not count).
    """
    valid = LETTERS[: len(options)] if options else LETTERS
    text = _core_answer(answer)

    def pick(letter: str | None) -> str | None:
        return letter if letter is not None and letter in valid else None

    if m := _LONE_LETTER.fullmatch(text):
        return pick(m.group(1))
    if m := _LEADING_LETTER.match(text):
        return pick(m.group(1))
    if marked := _MARKED_LETTER.findall(text):
        return pick(marked[-1])
    if len(parens := set(_PAREN_LETTER.findall(text))) == 1:
        return pick(parens.pop())
    if letter := _option_by_text(text, options):
        return letter
    standalone = {
        m.group(1)
        for m in _STANDALONE_LETTER.finditer(text)
        if not (m.group(1) == "A" and _ARTICLE_FOLLOWER.match(text, m.end()))
    }
    standalone &= set(valid)
    return standalone.pop() if len(standalone) == 1 else None


def _option_by_text(text: str, options: Sequence[str]) -> str | None:
    """The letter of the one option whose normalised text occurs in the answer (longer options shadow parts)."""
    padded = f" {normalize_text(text)} "
    found = {
        LETTERS[i]: norm
        for i, option in enumerate(options[: len(LETTERS)])
        if (norm := normalize_text(str(option))) and f" {norm} " in padded
    }
    # "left of the red cube" also contains the option "red cube": keep only options not inside another match.
    maximal = [
        k for k, v in found.items() if not any(v != w and f" {v} " in f" {w} " for w in found.values())
    ]
    return maximal[0] if len(maximal) == 1 else None


def choice_accuracy(answer: str, gt: str, options: Sequence[str]) -> float:
    return float(parse_choice(answer, options) == gt)


# ----------------------------------------------------------------------------------------------------- numbers

# unit name -> (dimension, metres or square metres per unit); longest names are tried first.
UNITS: dict[str, tuple[str, float]] = {
    **dict.fromkeys(["mm", "millimeter", "millimeters", "millimetre", "millimetres"], ("length", 1e-3)),
    **dict.fromkeys(["cm", "centimeter", "centimeters", "centimetre", "centimetres"], ("length", 1e-2)),
    **dict.fromkeys(["m", "meter", "meters", "metre", "metres"], ("length", 1.0)),
    **dict.fromkeys(["km", "kilometer", "kilometers", "kilometre", "kilometres"], ("length", 1e3)),
    **dict.fromkeys(["inch", "inches"], ("length", 0.0254)),
    **dict.fromkeys(["ft", "foot", "feet"], ("length", 0.3048)),
    **dict.fromkeys(
        ["m2", "m²", "m^2", "sq m", "sqm", "square meter", "square meters", "square metre", "square metres"],
        ("area", 1.0),
    ),
    **dict.fromkeys(
        [
            "cm2",
            "cm²",
            "cm^2",
            "square centimeter",
            "square centimeters",
            "square centimetre",
            "square centimetres",
        ],
        ("area", 1e-4),
    ),
    **dict.fromkeys(["ft2", "ft²", "ft^2", "sq ft", "square foot", "square feet"], ("area", 0.09290304)),
}
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_QUANTITY = re.compile(rf"(?<![\w.])({_NUMBER})(?:\s*({_UNIT})(?![A-Za-z0-9]))?", re.IGNORECASE)
_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)


def parse_number(answer: str, unit: str | None = None) -> float | None:
    """The numeric answer in `unit` (a key of `UNITS`, or None for a plain count), or None.

    Takes the first quantity whose unit has the same dimension as `unit` (converted: "120 cm" -> 1.2 for "m"),
    else the first number (read as already in `unit`), else a number word ("three"). Non-finite values are ignored.
    """
    if unit is not None and unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected one of {sorted(set(UNITS))} or None")
    text = _core_answer(answer)
    quantities = []
    for m in _QUANTITY.finditer(text):
        value = float(m.group(1).replace(",", ""))
        if math.isfinite(value):
            quantities.append((value, m.group(2).lower() if m.group(2) else None))
    if unit is not None:
        dimension, scale = UNITS[unit]
        for value, said in quantities:
            if said is not None and UNITS[said][0] == dimension:
                converted = value * UNITS[said][1] / scale
                if math.isfinite(converted):
                    return converted
    if quantities:
        return quantities[0][0]
    if m := _NUMBER_WORD.search(text):
        return float(_NUMBER_WORDS.index(m.group(1).lower()))
    return None


def relative_error(pred: float, gt: float) -> float:
    """|pred - gt| / |gt| rounded to `REL_ERROR_DECIMALS`; for gt == 0, 0 if pred is zero too else inf."""
    if not (math.isfinite(pred) and math.isfinite(gt)):
        return math.inf
    if gt == 0:
        return 0.0 if abs(pred) <= ZERO_GT_ATOL else math.inf
    return round(abs(pred - gt) / abs(gt), REL_ERROR_DECIMALS)


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """VSI-Bench MRA: the fraction of theta in {0.50, ..., 0.95} with relative error < 1 - theta (strictly)."""
    error = relative_error(pred, gt)
    return sum(error < tol for tol in MRA_TOLERANCES) / len(MRA_TOLERANCES)


def within_tolerance(pred: float, gt: float, rel_tol: float = 0.05) -> float:
    """1.0 when the relative error is at most `rel_tol` (the RL numeric reward), else 0.0."""
    return float(relative_error(pred, gt) <= rel_tol)


# -------------------------------------------------------------------------------------------------------- text


def text_match(answer: str, gt: str, aliases: Sequence[str] = ()) -> float:
    """1.0 when the normalised answer equals the normalised ground truth or one of its aliases."""
    said = normalize_text(_core_answer(answer))
    return float(bool(said) and said in {normalize_text(str(t)) for t in (gt, *aliases)})


# ---------------------------------------------------------------------------------------------------- 3D boxes


def box_rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Box-to-camera rotation R = Rz(roll) @ Ry(yaw) @ Rx(pitch), angles in radians (see the module docstring)."""
    cx, sx, cy, sy, cz, sz = (
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
        math.cos(roll),
        math.sin(roll),
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Box3D:
    """An oriented 3D box in the camera frame; `from_bbox_3d` is the only validated way in."""

    label: str
    center: np.ndarray
    size: np.ndarray
    rotation: np.ndarray

    @classmethod
    def from_bbox_3d(cls, label: object, bbox_3d: object) -> "Box3D":
        if not isinstance(bbox_3d, list | tuple) or len(bbox_3d) != 9:
            raise ValueError(f"bbox_3d must be a list of 9 numbers, got {bbox_3d!r:.200}")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox_3d
        ):
            raise ValueError(f"bbox_3d must hold 9 finite numbers, got {bbox_3d!r:.200}")
        values = np.asarray(bbox_3d, dtype=np.float64)
        if (values[3:6] <= 0).any():
            raise ValueError(f"bbox_3d sizes must be positive, got {values[3:6].tolist()}")
        return cls(
            str(label if label is not None else ""),
            values[:3],
            values[3:6],
            box_rotation(*(values[6:9] * ANGLE_UNIT)),
        )

    @property
    def volume(self) -> float:
        return float(np.prod(self.size))

    def corners(self) -> np.ndarray:
        """The 8 corners in the camera frame, shape (8, 3)."""
        signs = np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
        )
        return self.center + (signs * self.size / 2) @ self.rotation.T

    def halfspaces(self) -> np.ndarray:
        """The 6 faces as rows [n, -n.c - h] with n.x + offset <= 0 inside (scipy's HalfspaceIntersection form)."""
        normals = np.concatenate(
            [self.rotation.T, -self.rotation.T]
        )  # rows: +-local axes in the camera frame
        half = np.concatenate([self.size, self.size]) / 2
        return np.column_stack([normals, -(normals @ self.center) - half])


def box_iou(a: Box3D, b: Box3D) -> float:
    """Exact IoU of two oriented boxes: their intersection is the convex polytope of all 12 face half-spaces."""
    reach = (np.linalg.norm(a.size) + np.linalg.norm(b.size)) / 2
    if np.linalg.norm(a.center - b.center) >= reach:
        return 0.0
    halfspaces = np.vstack([a.halfspaces(), b.halfspaces()])
    inside = _deepest_point(halfspaces, scale=float(min(a.size.min(), b.size.min())))
    if inside is None:
        return 0.0
    try:
        vertices = HalfspaceIntersection(halfspaces, inside).intersections
        intersection = ConvexHull(vertices).volume
    except QhullError:  # an intersection too thin for qhull has no measurable volume
        return 0.0
    # Rounded like relative errors: identical boxes score exactly 1, not 1 - 1e-15 of qhull round-off.
    return round(
        float(np.clip(intersection / (a.volume + b.volume - intersection), 0.0, 1.0)), REL_ERROR_DECIMALS
    )


def _deepest_point(halfspaces: np.ndarray, scale: float) -> np.ndarray | None:
    """The Chebyshev centre of the polytope (a strictly interior point), or None when it has no volume."""
    normals, offsets = halfspaces[:, :3], halfspaces[:, 3]
    norms = np.linalg.norm(normals, axis=1, keepdims=True)
    result = linprog(
        c=[0, 0, 0, -1],
        A_ub=np.hstack([normals, norms]),
        b_ub=-offsets,
        bounds=[(None, None)] * 3 + [(0, None)],
        method="highs",
    )
    if result.status != 0 or result.x[3] <= 1e-7 * scale:
        return None
    return result.x[:3]


def match_boxes(
    pred: Sequence[Box3D | None], gt: Sequence[Box3D], match_labels: bool = True
) -> tuple[float, float]:
    """(mean IoU over max(#pred, #gt), F1 at IoU 0.25) after Hungarian matching on IoU.

    `None` predictions stand for malformed entries: they match nothing and count as false positives. With
    `match_labels`, a pair whose normalised labels differ has IoU 0. No boxes on either side is a perfect (1, 1).
    """
    if not pred and not gt:
        return 1.0, 1.0
    if not pred or not gt:
        return 0.0, 0.0
    ious = np.zeros((len(pred), len(gt)))
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            if p is not None and (not match_labels or normalize_text(p.label) == normalize_text(g.label)):
                ious[i, j] = box_iou(p, g)
    rows, cols = linear_sum_assignment(ious, maximize=True)
    matched = ious[rows, cols]
    mean_iou = float(matched.sum() / max(len(pred), len(gt)))
    true_positives = int((matched >= F1_IOU_THRESHOLD).sum())
    f1 = 2 * true_positives / (len(pred) + len(gt))
    return mean_iou, f1


_CODE_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def parse_boxes(answer: str) -> list[Box3D | None] | None:
    """The JSON list of {"label", "bbox_3d"} in an answer (fenced, bare, or inside prose); None if there is none.

    Entries that are not valid boxes come back as None so that they still count as (wrong) predictions.
    """
    candidates = [*_CODE_FENCE.findall(answer), answer]
    for open_, close in ("[]", "{}"):
        start, end = answer.find(open_), answer.rfind(close)
        if 0 <= start < end:
            candidates.append(answer[start : end + 1])
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(data, dict):
            data = [data]
        if isinstance(data, list):
            return [_box_or_none(item) for item in data]
    return None


def _box_or_none(item: object) -> Box3D | None:
    if not isinstance(item, dict):
        return None
    try:
        return Box3D.from_bbox_3d(item.get("label"), item.get("bbox_3d"))
    except ValueError:
        return None


def box_score(answer: str, gt: Sequence[Box3D], match_labels: bool = True) -> float:
    """0.5 * Hungarian mean IoU + 0.5 * F1@0.25; 0 when the answer holds no JSON box list."""
    pred = parse_boxes(answer)
    if pred is None:
        return 0.0
    mean_iou, f1 = match_boxes(pred, gt, match_labels)
    return 0.5 * mean_iou + 0.5 * f1


# ------------------------------------------------------------------------------------------------ one entry point


def parse_meta(meta_info: str | Mapping) -> dict:
    """A row's `meta_info` (JSON string or mapping) checked for what scoring needs; raises ValueError if unusable."""
    if isinstance(meta_info, str | bytes):
        try:
            meta_info = json.loads(meta_info)
        except ValueError as e:
            raise ValueError(f"meta_info is not valid JSON: {meta_info!r:.200}") from e
    if not isinstance(meta_info, Mapping):
        raise ValueError(f"meta_info must be a JSON object, got {type(meta_info).__name__}")
    meta = dict(meta_info)
    mode = meta.get("answer_mode")
    if mode not in SCORERS:
        raise ValueError(f"meta_info answer_mode {mode!r} is not one of {sorted(SCORERS)}")
    if "gt" not in meta or meta["gt"] is None:
        raise ValueError(f"meta_info for answer_mode {mode!r} has no 'gt'")
    if mode == "choice":
        options = meta.get("options") or []
        if not isinstance(options, list) or meta["gt"] not in LETTERS[: len(options) or len(LETTERS)]:
            raise ValueError(f"choice gt {meta['gt']!r} is not a letter of its {len(options)} options")
    elif mode == "numeric":
        if not isinstance(meta["gt"], int | float) or not math.isfinite(meta["gt"]):
            raise ValueError(f"numeric gt must be a finite number, got {meta['gt']!r}")
        if meta.get("unit") is not None and meta["unit"] not in UNITS:
            raise ValueError(f"numeric unit {meta['unit']!r} is not one of {sorted(set(UNITS))}")
    elif mode == "boxes3d":
        if not isinstance(meta["gt"], list):
            raise ValueError("boxes3d gt must be a list of {label, bbox_3d}")
        meta["gt_boxes"] = [Box3D.from_bbox_3d(b.get("label"), b.get("bbox_3d")) for b in meta["gt"]]
    return meta


def _score_choice(answer: str, meta: dict, **_) -> float:
    return choice_accuracy(answer, meta["gt"], meta.get("options") or [])


def _score_numeric(answer: str, meta: dict, numeric: str = "mra", rel_tol: float = 0.05, **_) -> float:
    pred = parse_number(answer, meta.get("unit"))
    if pred is None:
        return 0.0
    if numeric == "mra":
        return mean_relative_accuracy(pred, float(meta["gt"]))
    if numeric == "tolerance":
        return within_tolerance(pred, float(meta["gt"]), rel_tol)
    raise ValueError(f"numeric scoring must be 'mra' or 'tolerance', got {numeric!r}")


def _score_text(answer: str, meta: dict, **_) -> float:
    return text_match(answer, str(meta["gt"]), meta.get("aliases") or ())


def _score_boxes(answer: str, meta: dict, match_labels: bool = True, **_) -> float:
    return box_score(answer, meta["gt_boxes"], match_labels)


SCORERS: dict[str, Callable[..., float]] = {
    "choice": _score_choice,
    "numeric": _score_numeric,
    "text": _score_text,
    "boxes3d": _score_boxes,
}


def score_answer(
    output_text: object,
    meta_info: str | Mapping,
    *,
    numeric: str = "mra",
    rel_tol: float = 0.05,
    match_labels: bool = True,
) -> float:
    """Score in [0, 1] of a model output for one row, by the row's `answer_mode`.

    choice: 1 if the picked letter is `gt`; numeric: MRA (`numeric="mra"`, the benchmark) or 1 within `rel_tol`
    relative error (`numeric="tolerance"`, the RL reward); text: normalised exact match with `gt` or an alias;
    boxes3d: 0.5 * mean IoU + 0.5 * F1@0.25. Malformed output scores 0; malformed `meta_info` raises ValueError.
    """
    meta = parse_meta(meta_info)
    answer = extract_answer(output_text)
    if answer is None:
        return 0.0
    return SCORERS[meta["answer_mode"]](
        answer, meta, numeric=numeric, rel_tol=rel_tol, match_labels=match_labels
    )
