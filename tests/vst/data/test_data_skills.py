"""Skill answers checked against the rendered ground truth, recomputed here independently of the generators."""

import json
import math
import re
from collections import Counter

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vst.data.generate import DataConfig, generate_row, render_question
from vst.data.geometry import box9_corners, canonical_yaw, project, to_camera
from vst.data.scene import HELD_OUT_COMBOS, YAW_SYMMETRY
from vst.data.skills import SKILLS, resolve_skills
from vst.data.skills.common import LETTERS, names


def _meta(row):
    return json.loads(row["meta_info"])


def _option(meta):
    return meta["options"][LETTERS.index(meta["gt"])]


def _questions(skill, n, seed0=100, split="train", checkable=False):
    cfg = DataConfig(skills=skill, split=split)
    return [(cfg, *render_question(cfg, SKILLS[skill], seed0 + i, checkable)) for i in range(n)]


def test_depth_compare_agrees_with_rendered_depth():
    checked = 0
    for _, qa, scene, views in _questions("depth_compare", 30):
        view = views[0]
        n = names(scene)
        by_name = {v: k for k, v in n.items()}
        surface = {u: float(np.median(view.depth[view.seg == u])) for u in qa.extra["uids"]}
        options = qa.options
        picked = options[LETTERS.index(qa.gt)]
        q = qa.question.split("\n")[0]
        if picked in ("yes", "no"):
            a, b = re.match(
                r"Is the (.+?) (?:closer to the camera|nearer to the viewer) than the (.+?)\?", q
            ).groups()
            truth = surface[by_name[a]] < surface[by_name[b]]
            assert picked == ("yes" if truth else "no"), q
        elif "farthest" in q:
            assert by_name[picked] == max(surface, key=surface.get), q
        else:  # closest / closer
            assert by_name[picked] == min(surface, key=surface.get), q
        checked += 1
    assert checked == 30


def test_camera_motion_answers_follow_extrinsics():
    cfg = DataConfig(skills="camera_motion")
    labels = Counter()
    for i in range(30):
        row = generate_row(cfg, "camera_motion", "perception", 500 + i)
        meta = _meta(row)
        T1, T2 = (np.array(c["cam_to_world"]) for c in meta["cameras"])
        # Independent recomputation: displacement in camera 1's floor axes and change of heading.
        f1 = T1[:2, 2] / np.linalg.norm(T1[:2, 2])
        r1 = np.array([f1[1], -f1[0]])  # the floor direction 90 degrees clockwise of forward (z up)
        f2 = T2[:2, 2] / np.linalg.norm(T2[:2, 2])
        d = T2[:2, 3] - T1[:2, 3]
        fwd, right = float(d @ f1), float(d @ r1)
        turn = math.degrees(math.atan2(f1[0] * f2[1] - f1[1] * f2[0], f1 @ f2))
        if abs(turn) > 8:
            truth = "turned left" if turn > 0 else "turned right"
        elif abs(fwd) > abs(right):
            truth = "moved forward" if fwd > 0 else "moved backward"
        else:
            truth = "moved right" if right > 0 else "moved left"
        assert meta["motion_label"] == truth
        if meta["answer_mode"] == "choice":
            assert _option(meta) == f"The camera {truth}."
        elif truth.startswith("turned"):
            assert meta["gt"] == pytest.approx(abs(turn), abs=0.51)
        else:
            assert meta["gt"] == pytest.approx(float(np.linalg.norm(T2[:3, 3] - T1[:3, 3])), abs=0.006)
        labels[truth] += 1
    assert len(labels) >= 5  # all kinds of motion occur


def test_counting_matches_scene_and_frames():
    for _, qa, scene, views in _questions("video_count", 12):
        kind = qa.extra["kind"]
        same_kind = [e for e in scene.entities if e.kind == kind]
        assert qa.gt == len(same_kind)
        for e in same_kind:  # every counted thing is actually seen in some frame
            assert max(v.pixels.get(e.uid, 0) for v in views) >= 12


def test_general_count_matches_visible_objects():
    for _, qa, scene, views in _questions("general_count_color", 15):
        color = qa.extra["color"]
        assert qa.gt == sum(e.color == color for e in scene.objects)
        assert all(views[0].pixels.get(u, 0) > 0 for u in qa.extra["uids"])


def test_det3d_boxes_are_visible_objects_in_first_camera():
    for _, qa, scene, views in _questions("det3d", 10) + _questions("mv_det3d", 6):
        cam = views[0].camera
        assert len(qa.gt) == len(qa.extra["uids"])
        for entry, uid in zip(qa.gt, qa.extra["uids"]):
            e = scene.by_uid(uid)
            assert entry["label"] == e.label
            box = entry["bbox_3d"]
            assert np.allclose(box[:3], to_camera(cam.cam_to_world, e.pos), atol=0.0051)
            assert np.allclose(box[3:6], [e.dims[0], e.dims[2], e.dims[1]], atol=0.0051)
            # The box's x axis in the world is horizontal; its yaw is the object's, up to the kind's symmetry.
            R_world = (
                cam.cam_to_world[:3, :3]
                @ Rotation.from_euler("xyz", np.array(box[6:]) * 180, degrees=True).as_matrix()
            )
            x_axis = R_world[:, 0]
            assert abs(x_axis[2]) < 0.06
            box_yaw = math.degrees(math.atan2(x_axis[1], x_axis[0]))
            sym = YAW_SYMMETRY.get(e.kind, 1)
            if sym == 0:  # round: faces the camera (x axis along the camera's right direction)
                right = cam.cam_to_world[:2, 0]
                off = box_yaw - math.degrees(math.atan2(right[1], right[0]))
            else:
                off = (box_yaw - math.degrees(e.yaw)) * sym
            assert abs((off + 180) % 360 - 180) < 4 * max(sym, 1), (e.kind, off)
            assert any(v.pixels.get(uid, 0) >= 12 for v in views)
        assert json.loads(qa.answer.split("```json")[1].split("```")[0]) == qa.gt


def test_correspondence_point_is_the_same_3d_point():
    for _, qa, _scene, views in _questions("mv_correspondence", 10):
        v1, v2 = views[:2]
        u, w = qa.extra["point_image1"]
        z = float(v1.depth[int(w), int(u)])
        K = v1.camera.K
        p = np.array([(u - K[0, 2]) / K[0, 0] * z, (w - K[1, 2]) / K[1, 1] * z, z])
        world = v1.camera.cam_to_world[:3, :3] @ p + v1.camera.cam_to_world[:3, 3]
        uv2 = project(v2.camera.K, to_camera(v2.camera.cam_to_world, world))
        assert np.allclose(uv2, qa.extra["point_image2"], atol=0.6)
        assert v2.seg[int(uv2[1]), int(uv2[0])] == qa.extra["uids"][0]
        assert qa.images is not None and not np.array_equal(qa.images[1], v2.rgb)  # marks were drawn


def test_relative_direction_and_route_from_floor_plan():
    for _, qa, scene, _ in _questions("video_rel_direction", 10):
        a, b, c = (np.array(scene.by_uid(u).pos[:2]) for u in qa.extra["uids"])
        h, t = b - a, c - a
        bearing = math.degrees(math.atan2(h[0] * t[1] - h[1] * t[0], h @ t))  # + = counter-clockwise = left
        side = _option({"options": qa.options, "gt": qa.gt})
        if side in ("left", "right"):
            assert (bearing > 0) == (side == "left")
        elif side == "back":
            assert abs(bearing) > 90
        else:
            assert side.startswith("front" if abs(bearing) < 90 else "back")
            assert side.endswith("left" if bearing > 0 else "right")
    for _, qa, scene, _ in _questions("video_route", 6):
        pts = [np.array(scene.by_uid(u).pos[:2]) for u in qa.extra["uids"]]
        legs = [pts[1] - pts[0], pts[2] - pts[1], pts[3] - pts[2]]
        words = []
        for x, y in zip(legs, legs[1:]):
            ang = math.degrees(math.atan2(x[0] * y[1] - x[1] * y[0], x @ y))
            words.append("turn back" if abs(ang) > 150 else ("turn left" if ang > 0 else "turn right"))
        assert _option({"options": qa.options, "gt": qa.gt}).lower() == ", ".join(words)


def test_answers_are_balanced_over_letters_and_yes_no():
    cfg = DataConfig(split="bench", skills="all")
    pos, yes, total_yn = Counter(), 0, 0
    spatial = cfg.spatial_skills
    for i in range(len(spatial) * 8):
        skill = spatial[i % len(spatial)]
        meta = _meta(generate_row(cfg, skill, "perception", 40_000 + i))
        if meta["answer_mode"] != "choice":
            continue
        k = len(meta["options"])
        pos[(k, meta["gt"])] += 1
        if set(meta["options"]) == {"yes", "no"}:
            total_yn += 1
            yes += _option(meta) == "yes"
    for k in {k for k, _ in pos}:
        n = sum(v for (kk, _), v in pos.items() if kk == k)
        if n >= 20:
            assert max(v for (kk, _), v in pos.items() if kk == k) / n < 1 / k + 0.2, pos
    assert total_yn == 0 or 0.25 <= yes / total_yn <= 0.75


def test_held_out_combos_split_train_from_bench():
    for split in ("train", "bench"):
        cfg = DataConfig(split=split, skills="det3d")
        for i in range(8):
            meta = _meta(generate_row(cfg, "det3d", "perception", 900 + i))
            combos = {(o["color"], o["kind"]) for o in meta["scene"]["objects"]}
            if split == "train":
                assert not combos & HELD_OUT_COMBOS
            else:
                assert combos & HELD_OUT_COMBOS


def test_unknown_skill_lists_valid_names():
    with pytest.raises(ValueError, match="valid skills: det3d"):
        resolve_skills("det3d,teleport")
    assert resolve_skills(["camera_motion", "det3d"]) == ["det3d", "camera_motion"]


def test_cot_names_exactly_the_skills_with_reasoning_traces():
    cot = resolve_skills("cot")
    assert cot == [name for name, skill in SKILLS.items() if skill.cot] == resolve_skills(["cot"])
    assert "depth_compare" in cot and "video_route" in cot and "det3d" not in cot and "caption" not in cot
    assert DataConfig(skills="cot").skill_names == cot


def test_fov_unification_gives_one_focal_length():
    cfg = DataConfig(skills="det3d", fov_unify=True, base_focal=150.0)
    for i in range(6):
        row = generate_row(cfg, "det3d", "perception", 70 + i)
        cam = _meta(row)["cameras"][0]
        assert cam["fx"] == pytest.approx(150.0, rel=0.02)
        import io

        from PIL import Image

        w, h = Image.open(io.BytesIO(row["images"][0]["bytes"])).size
        assert (w, h) == (cam["width"], cam["height"])
        assert f"image width={w} and height={h}" in row["conversations"][0]["value"]


def test_reference_answers_score_perfectly_with_the_scorer():
    """Every skill's own answer parses and scores 1 with vst.scoring (the contract both sides rely on)."""
    scoring = pytest.importorskip("vst.scoring")
    for split in ("train", "bench", "bench_general"):
        cfg = DataConfig(split=split)
        pool = cfg.general_skills if split == "bench_general" else cfg.skill_names
        for i, skill in enumerate(pool):
            thought = split == "train" and SKILLS[skill].cot and i % 2 == 0
            row_type = (
                ("general_thought" if SKILLS[skill].family == "general" else "spatial_thought")
                if thought
                else ("general" if SKILLS[skill].family == "general" else "perception")
            )
            row = generate_row(cfg, skill, row_type, 60_000 + i)
            meta = _meta(row)
            answer = row["conversations"][1]["value"]
            assert scoring.score_answer(answer, meta) == pytest.approx(1.0), (skill, answer[:200])
            if meta["answer_mode"] == "choice":
                wrong = next(L for L in LETTERS[: len(meta["options"])] if meta["gt"] != L)
                assert scoring.score_answer(wrong, meta) == 0.0


def test_only_rows_that_answer_with_a_trace_ask_for_one():
    """CoT and RL rows carry the think cue, perception and general rows do not: without it a CoT cold start teaches
    the model to think on every question, and the benchmark's direct prompt loses what SFT taught."""
    from vst.data.rows import THINK_INSTRUCTION

    cfg = DataConfig(split="train")
    skill = next(s for s in cfg.skill_names if SKILLS[s].cot and SKILLS[s].family != "general")
    for row_type, asks in (("spatial_thought", True), ("rl", True), ("perception", False)):
        row = generate_row(cfg, skill, row_type, 70_000)
        human, gpt = (t["value"] for t in row["conversations"])
        assert human.endswith(THINK_INSTRUCTION) == asks, row_type
        assert gpt.startswith("<think>") == (row_type == "spatial_thought"), row_type


def test_symmetric_objects_get_camera_facing_yaw():
    from vst.data.geometry import box9_in_camera, look_at

    cam = look_at([1.0, -1.2, 1.5], [0.0, 0.0, 0.8])
    for yaw in np.linspace(-3, 3, 13):
        round_box = box9_in_camera([0, 0, 0.85], (0.1, 0.1, 0.1), canonical_yaw(yaw, 0, cam), cam)
        assert abs(round_box[7]) < 1e-6 and abs(round_box[8]) < 1e-6  # only the camera's pitch remains
        block = box9_in_camera([0, 0, 0.85], (0.2, 0.05, 0.05), canonical_yaw(yaw, 2, cam), cam)
        same = box9_in_camera([0, 0, 0.85], (0.2, 0.05, 0.05), yaw, cam)
        d = np.linalg.norm(box9_corners(block)[:, None] - box9_corners(same)[None], axis=-1)
        assert d.min(1).max() < 1e-6  # an equivalent box
        assert abs(block[7]) <= 0.5 + 1e-9  # yaw within +-90 degrees of facing the camera
