"""Scoring against hand-worked cases: answer parsing, MRA thresholds, text match, oriented 3D IoU, matching."""

import json
import math
import random
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vst.scoring import (
    MAX_OUTPUT_CHARS,
    Box3D,
    box_iou,
    box_rotation,
    extract_answer,
    match_boxes,
    mean_relative_accuracy,
    parse_boxes,
    parse_choice,
    parse_meta,
    parse_number,
    score_answer,
    text_match,
    within_tolerance,
)

OPTIONS = ["the red cube", "the blue cylinder", "the green sphere", "the yellow box"]


def box(x=0.0, y=0.0, z=2.0, sx=1.0, sy=1.0, sz=1.0, pitch=0.0, yaw=0.0, roll=0.0, label="cube") -> Box3D:
    """A box from bbox_3d values; angles in half-turns (0.25 = 45 degrees) as the rows store them."""
    return Box3D.from_bbox_3d(label, [x, y, z, sx, sy, sz, pitch, yaw, roll])


def boxes_json(*boxes: list[float], label="cube") -> str:
    return json.dumps([{"label": label, "bbox_3d": b} for b in boxes])


# ------------------------------------------------------------------------------------------------ answer text


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("B", "B"),
        ("  B \n", "B"),
        ("<think>the red one is nearer</think> B", "B"),
        ("<think>\nstep 1\nstep 2\n</think>\n\nAnswer: B", "Answer: B"),
        ("<think>open but never closed B", None),
        ("reasoning</think> B", None),
        ("</think> B <think>", None),
        ("<think>a</think><think>b</think> B", None),
        ("<think>a</think> B </think>", None),
        ("<think>all thought, no answer</think>   ", None),
        ("", None),
        ("   \n\t", None),
        (None, None),
        (42, None),
        (["B"], None),
        ("B" * (MAX_OUTPUT_CHARS + 1), None),
    ],
)
def test_extract_answer(output, expected):
    assert extract_answer(output) == expected


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("Answer: B", "B"),
        ("The answer is B.", "B"),
        ("The correct answer is (B).", "B"),
        ("**B**", "B"),
        ("\\boxed{C}", "C"),
        ("B. the blue cylinder", "B"),
        ("(D) the yellow box", "D"),
        ("I think it is option C because it is closest.", "C"),
        ("Option A looks close, but the answer is B", "B"),
        ("The blue cylinder.", "B"),
        ("the green sphere is closer to the camera", "C"),
        ("A chair hides it, so D", "D"),  # the article "A" is not a choice
        ("A", "A"),
        ("E", None),  # out of range for 4 options
        ("A and B", None),
        ("A or B", None),
        ("both the red cube and the blue cylinder", None),
        ("I do not know", None),
        ("closer", None),
    ],
)
def test_parse_choice(answer, letter):
    assert parse_choice(answer, OPTIONS) == letter


@pytest.mark.parametrize(
    ("answer", "unit", "value"),
    [
        ("1.2", "m", 1.2),
        ("1.2 m", "m", 1.2),
        ("120 cm", "m", 1.2),
        ("It is about 1,200 mm away.", "m", 1.2),
        ("1.5m.", "cm", 150.0),
        ("0.8 meters", "cm", 80.0),
        ("2 feet", "m", 0.6096),
        ("The room is 12.5 square meters", "m2", 12.5),
        ("12.5 m²", "m2", 12.5),
        ("20000 cm^2", "m2", 2.0),
        ("Object 3 is 1.5 m from the camera", "m", 1.5),  # the quantity with a length unit wins
        ("There are 3 chairs.", None, 3.0),
        ("three", None, 3.0),
        ("Answer: 7", None, 7.0),
        ("-.5", "m", -0.5),
        ("12 m", "m2", 12.0),  # a length for an area question: taken as the row's unit
        ("no number here", "m", None),
        ("nan m", "m", None),
        ("inf", None, None),
        ("1e999 m", "m", None),
        ("", "m", None),
    ],
)
def test_parse_number(answer, unit, value):
    got = parse_number(answer, unit)
    assert (got is None and value is None) or got == pytest.approx(value)


def test_parse_number_unknown_unit_raises():
    with pytest.raises(ValueError, match="unknown unit"):
        parse_number("1", "parsec")


# ----------------------------------------------------------------------------------------------------- MRA


@pytest.mark.parametrize(
    ("pred", "gt", "mra"),
    [
        (1.0, 1.0, 1.0),
        (1.04, 1.0, 1.0),
        (1.05, 1.0, 0.9),  # exactly 5% off: strict '<' fails the tightest threshold (theta = 0.95)
        (0.95, 1.0, 0.9),
        (1.1, 1.0, 0.8),  # exactly 10% off
        (1.45, 1.0, 0.1),  # exactly 45% off: only theta = 0.50 passes (floats alone would also pass 0.55)
        (0.55, 1.0, 0.1),
        (1.5, 1.0, 0.0),  # exactly 50% off: theta = 0.50 fails too
        (0.5, 1.0, 0.0),
        (2.2, 2.0, 0.8),
        (30.0, 20.0, 0.0),
        (-1.0, 1.0, 0.0),
        (0.0, 0.0, 1.0),  # gt == 0: only an exact zero is right
        (0.1, 0.0, 0.0),
        (math.nan, 1.0, 0.0),
        (math.inf, 1.0, 0.0),
    ],
)
def test_mean_relative_accuracy(pred, gt, mra):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(mra)


def test_within_tolerance_edges():
    assert within_tolerance(1.05, 1.0) == 1.0  # "within 5%" includes the edge
    assert within_tolerance(0.95, 1.0) == 1.0
    assert within_tolerance(1.0501, 1.0) == 0.0
    assert within_tolerance(1.09, 1.0, rel_tol=0.1) == 1.0
    assert within_tolerance(0.0, 0.0) == 1.0 and within_tolerance(0.01, 0.0) == 0.0


# ---------------------------------------------------------------------------------------------------- text


def test_text_match_normalises_case_punctuation_articles_and_aliases():
    assert text_match("The Red Cube.", "red cube") == 1.0
    assert text_match("Answer: a red cube!", "red cube") == 1.0
    assert text_match("crimson block", "red cube", aliases=["crimson block"]) == 1.0
    assert text_match("red cubes", "red cube") == 0.0
    assert text_match("the", "red cube") == 0.0
    assert text_match("", "") == 0.0


# ----------------------------------------------------------------------------------------------- 3D boxes


def test_rotation_convention_matches_scipy_extrinsic_xyz():
    angles = (0.3, -1.1, 0.7)
    expected = Rotation.from_euler("xyz", angles).as_matrix()
    np.testing.assert_allclose(box_rotation(*angles), expected, atol=1e-12)


def test_corners_agree_with_the_data_engine_geometry():
    from vst.data.geometry import box9_corners

    rng = np.random.default_rng(0)
    for _ in range(20):
        values = [*rng.uniform(-1, 1, 2), rng.uniform(1, 4), *rng.uniform(0.05, 1, 3), *rng.uniform(-1, 1, 3)]
        np.testing.assert_allclose(
            Box3D.from_bbox_3d("x", values).corners(), box9_corners(values), atol=1e-12
        )


def test_yaw_turns_about_the_vertical_axis():
    # A 2 m long (x) box yawed 90 degrees lies along the camera's Z axis; its height (y, down) is unchanged.
    corners = box(sx=2.0, yaw=0.5).corners()
    extent = corners.max(0) - corners.min(0)
    np.testing.assert_allclose(extent, [1.0, 1.0, 2.0], atol=1e-12)
    # Positive yaw turns the box's forward (+Z) axis toward the camera's right (+X).
    np.testing.assert_allclose(box_rotation(0, math.pi / 2, 0) @ [0, 0, 1], [1, 0, 0], atol=1e-12)


def test_iou_identical_disjoint_touching_contained():
    a = box(pitch=0.2, yaw=0.5, roll=-0.3)
    assert box_iou(a, a) == 1.0
    assert box_iou(box(), box(x=5.0)) == 0.0
    assert box_iou(box(), box(x=1.0)) == 0.0  # faces touch, no volume
    assert box_iou(box(), box(x=0.5)) == pytest.approx(0.5 / 1.5)
    assert box_iou(box(sx=2, sy=2, sz=2), box(sx=1, sy=1, sz=1)) == pytest.approx(1 / 8)


@pytest.mark.parametrize("axis", ["pitch", "yaw", "roll"])
def test_iou_of_cube_turned_45_degrees_is_one_over_sqrt2(axis):
    # Two unit cubes, one turned 45 degrees about a face axis: the overlap is a prism over a regular octagon of
    # area 2*sqrt(2) - 2 (the square minus 4 corner triangles with legs 1 - sqrt(2)/2), so
    # IoU = (2*sqrt(2) - 2) / (2 - (2*sqrt(2) - 2)) = 1/sqrt(2).
    turned = box(**{axis: 0.25})
    assert box_iou(box(), turned) == pytest.approx(1 / math.sqrt(2), abs=1e-9)
    assert box_iou(turned, box()) == pytest.approx(1 / math.sqrt(2), abs=1e-9)


def test_iou_is_invariant_to_moving_both_boxes_together():
    a, b = box(x=0.1, sx=1.3, yaw=0.4), box(x=0.5, y=0.2, sz=0.7, pitch=0.3)
    shifted = [box(x=0.1 + 3, z=5, sx=1.3, yaw=0.4), box(x=0.5 + 3, y=0.2, z=5, sz=0.7, pitch=0.3)]
    assert 0 < box_iou(a, b) < 1
    assert box_iou(*shifted) == pytest.approx(box_iou(a, b), abs=1e-9)


def test_hungarian_matching_beats_greedy_and_ignores_order():
    # IoU of unit cubes offset by d along x is (1-d)/(1+d): 0.6 at d=1/4, 0.5 at d=1/3.
    g1, g2 = box(x=0.0), box(x=0.25 + 1 / 3)
    p1, p2 = box(x=0.25), box(x=-1 / 3)
    # Greedy would take p1-g1 (0.6) and leave p2-g2 (0.04); the optimum pairs p1-g2 and p2-g1 (0.5 + 0.5).
    mean_iou, f1 = match_boxes([p1, p2], [g1, g2])
    assert mean_iou == pytest.approx(0.5)
    assert f1 == pytest.approx(1.0)
    assert match_boxes([p2, p1], [g1, g2]) == pytest.approx((mean_iou, f1))
    assert match_boxes([p1, p2], [g2, g1]) == pytest.approx((mean_iou, f1))


def test_f1_and_mean_iou_with_missing_extra_and_wrong_predictions():
    g1, g2 = box(x=-2), box(x=2)
    assert match_boxes([g1, g2], [g1, g2]) == pytest.approx((1.0, 1.0))
    assert match_boxes([g1], [g1, g2]) == pytest.approx((0.5, 2 / 3))  # one missing: P=1, R=1/2
    assert match_boxes([g1, g2, box(z=9)], [g1, g2]) == pytest.approx((2 / 3, 0.8))  # one extra: P=2/3, R=1
    assert match_boxes([g1, None], [g1]) == pytest.approx(
        (0.5, 2 / 3)
    )  # a malformed entry is a false positive
    # IoU 1/3 counts at 0.25, IoU 0.2 (offset 2/3) does not, but both add to the mean IoU.
    assert match_boxes([box(x=-1.5), box(x=2 + 2 / 3)], [g1, g2]) == pytest.approx(((1 / 3 + 0.2) / 2, 0.5))
    assert match_boxes([], [g1]) == (0.0, 0.0)
    assert match_boxes([g1], []) == (0.0, 0.0)
    assert match_boxes([], []) == (1.0, 1.0)


def test_labels_must_agree_unless_disabled():
    assert match_boxes([box(label="Red cube")], [box(label="red cube")]) == pytest.approx((1.0, 1.0))
    assert match_boxes([box(label="blue cube")], [box(label="red cube")]) == (0.0, 0.0)
    assert match_boxes(
        [box(label="blue cube")], [box(label="red cube")], match_labels=False
    ) == pytest.approx((1, 1))


@pytest.mark.parametrize(
    "answer",
    [
        '[{"label": "cube", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}]',
        '```json\n[{"label": "cube", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}]\n```',
        'Here are the boxes:\n```\n[{"label": "cube", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}]\n``` Done.',
        'The cube is at [{"label": "cube", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}] in the camera frame.',
        '{"label": "cube", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}',
    ],
)
def test_parse_boxes_finds_json_in_fences_and_prose(answer):
    parsed = parse_boxes(answer)
    assert parsed is not None and len(parsed) == 1
    assert parsed[0].label == "cube" and box_iou(parsed[0], box()) == pytest.approx(1.0)


def test_parse_boxes_keeps_malformed_entries_as_none():
    entries = [
        {"label": "a", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]},
        {"label": "b", "bbox_3d": [0, 0, 2, 1, 1]},  # too short
        {"label": "c", "bbox_3d": [0, 0, 2, -1, 1, 1, 0, 0, 0]},  # negative size
        {"label": "d", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, "x"]},  # not a number
        {"label": "e", "bbox_3d": [True, 0, 2, 1, 1, 1, 0, 0, 0]},  # a bool is not a number
        {"label": "f"},
        "not a box",
    ]
    parsed = parse_boxes(json.dumps(entries))
    assert parsed[0] is not None and parsed[1:] == [None] * 6
    assert parse_boxes('[{"label": "a", "bbox_3d": [NaN, 0, 2, 1, 1, 1, 0, 0, 0]}]') == [None]
    assert parse_boxes("no json at all") is None
    assert parse_boxes('[{"label": "a", "bbox_3d": [0, 0') is None


# -------------------------------------------------------------------------------------------------- score_answer

CHOICE = {"answer_mode": "choice", "gt": "B", "options": OPTIONS, "skill": "depth_comparison"}
NUMERIC = {"answer_mode": "numeric", "gt": 1.2, "unit": "m", "skill": "distance"}
COUNT = {"answer_mode": "numeric", "gt": 4, "unit": None, "skill": "object_count"}
TEXT = {"answer_mode": "text", "gt": "red cube", "aliases": ["crimson cube"], "skill": "caption"}
BOXES = {
    "answer_mode": "boxes3d",
    "gt": [
        {"label": "cube", "bbox_3d": [-2, 0, 2, 1, 1, 1, 0, 0, 0]},
        {"label": "cube", "bbox_3d": [2, 0, 2, 1, 1, 1, 0, 0, 0]},
    ],
    "skill": "detection_3d",
}


def test_score_answer_by_mode():
    assert score_answer("<think>blue is nearer</think> The answer is (B).", json.dumps(CHOICE)) == 1.0
    assert score_answer("A", CHOICE) == 0.0
    assert score_answer("<think>x</think> 120 cm", NUMERIC) == 1.0
    assert score_answer("1.32 m", NUMERIC) == pytest.approx(0.8)  # 10% off
    assert score_answer("1.26 m", NUMERIC, numeric="tolerance") == 1.0  # 5% off, the RL rule
    assert score_answer("1.32 m", NUMERIC, numeric="tolerance") == 0.0
    assert score_answer("There are four.", COUNT) == 1.0
    assert score_answer("Crimson cube.", TEXT) == 1.0
    assert score_answer(boxes_json([2, 0, 2, 1, 1, 1, 0, 0, 0], [-2, 0, 2, 1, 1, 1, 0, 0, 0]), BOXES) == 1.0
    assert score_answer(boxes_json([-2, 0, 2, 1, 1, 1, 0, 0, 0]), BOXES) == pytest.approx(
        0.5 * 0.5 + 0.5 * 2 / 3
    )


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"answer_mode": "essay", "gt": "x"}, "answer_mode"),
        ({"answer_mode": "choice"}, "no 'gt'"),
        ({"answer_mode": "choice", "gt": "F", "options": ["a", "b"]}, "not a letter"),
        ({"answer_mode": "numeric", "gt": "far"}, "finite number"),
        ({"answer_mode": "numeric", "gt": 1.0, "unit": "furlong"}, "unit"),
        ({"answer_mode": "boxes3d", "gt": [{"label": "x", "bbox_3d": [1, 2, 3]}]}, "9 numbers"),
    ],
)
def test_bad_meta_info_raises_a_clear_error(meta, message):
    with pytest.raises(ValueError, match=message):
        parse_meta(meta)


MALFORMED = [
    None,
    "",
    " ",
    b"B",
    123,
    1.5,
    float("nan"),
    ["B"],
    {"answer": "B"},
    "<think>",
    "</think>",
    "<think>B",
    "B</think>",
    "<think></think>",
    "<think>x</think>",
    "<think>a</think><think>b</think>B",
    "<think><think>x</think></think>B",
    "</think>B<think>",
    "NaN",
    "nan m",
    "inf",
    "-inf cm",
    "Infinity",
    "1e309",
    "9" * 400,
    "[",
    "{",
    '```json\n[{"label": "cube", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]\n```',
    '[{"label": "cube", "bbox_3d": [NaN, 0, 2, 1, 1, 1, 0, 0, 0]}, {"label": "cube", "bbox_3d": "oops"}]',
    '[{"label": "cube", "bbox_3d": [0, 0, 2, 0, 0, 0, 0, 0, 0]}, {"label": "cube", "bbox_3d": [1e308, 0, 2, 1e308, 1, 1, 0, 0, 0]}]',
    "[" * 100_000,
    '{"a":' * 40_000,
    "\x00\x01\x02\ufffd",
    "🙂" * 1000,
    "answer" + " " * 150_000,
    "A " * 90_000,
    "B" * (MAX_OUTPUT_CHARS + 1),
    "x" * 10_000_000,
]


@pytest.mark.parametrize("meta", [CHOICE, NUMERIC, COUNT, TEXT, BOXES], ids=lambda m: m["answer_mode"])
def test_malformed_outputs_score_zero_and_never_raise(meta):
    start = time.perf_counter()
    for output in MALFORMED:
        assert score_answer(output, meta) == 0.0, repr(output)[:80]
    assert time.perf_counter() - start < 10  # nothing quadratic on huge strings


def test_random_garbage_never_raises():
    rng = random.Random(0)
    pieces = [
        "<think>",
        "</think>",
        "B",
        "(C)",
        " ",
        "1.5",
        "cm",
        "m",
        "[",
        "]",
        "{",
        "}",
        '"bbox_3d":',
        '"label":',
        ",",
        "NaN",
        "-",
        "e9",
        "```json\n",
        "```",
        "answer:",
        "the",
        "red cube",
        "\n",
        "0",
        "1e400",
        "\\boxed{",
    ]
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        for meta in (CHOICE, NUMERIC, COUNT, TEXT, BOXES):
            assert 0.0 <= score_answer(text, meta) <= 1.0
