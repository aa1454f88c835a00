"""Rendering and geometry ground truth: boxes project onto their pixels, depth is metric, renders repeat."""

import numpy as np
import pytest

from vst.data.geometry import (
    box9_corners,
    box9_in_camera,
    look_at,
    object_corners_world,
    project,
    to_camera,
)
from vst.data.render import get_renderer
from vst.data.scene import Camera, SceneConfig, SceneError, sample_room, sample_tabletop, tabletop_camera

W, H = 224, 168


@pytest.fixture(scope="module")
def renderer():
    return get_renderer()


def _scenes():
    rng = np.random.default_rng(7)
    cfg = SceneConfig()
    for i in range(4):
        scene = sample_tabletop(rng, cfg, f"t{i}")
        yield scene, [tabletop_camera(rng, scene, W, H) for _ in range(2)]
    from vst.data.scene import room_camera

    for i in range(3):
        scene = sample_room(rng, cfg, f"r{i}")
        yield scene, [room_camera(rng, scene, W, H) for _ in range(2)]


def test_box9_round_trip_matches_world_corners():
    rng = np.random.default_rng(0)
    for _ in range(20):
        cam = look_at(rng.uniform(-2, 2, 3) + [0, 0, 2], rng.uniform(-0.5, 0.5, 3), rng.uniform(-10, 10))
        centre, dims, yaw = rng.uniform(-0.5, 0.5, 3), rng.uniform(0.05, 0.4, 3), rng.uniform(-3, 3)
        box = box9_in_camera(centre, dims, yaw, cam)
        assert all(-1.0 <= a <= 1.0 for a in box[6:])
        got = box9_corners(box)
        want = to_camera(cam, object_corners_world(centre, dims, yaw))
        # Same 8 points (order may differ): every corner has a partner within a micrometre.
        d = np.linalg.norm(got[:, None] - want[None], axis=-1)
        assert d.min(1).max() < 1e-6 and d.min(0).max() < 1e-6


def test_boxes_project_onto_object_pixels(renderer):
    checked = 0
    for scene, cams in _scenes():
        for view in renderer.render(scene, cams):
            cam = view.camera
            for e in scene.entities:
                n = view.pixels.get(e.uid, 0)
                if n < 40:
                    continue
                corners = box9_corners(box9_in_camera(e.pos, e.dims, e.yaw, cam.cam_to_world))
                if corners[:, 2].min() <= 0.05:  # box reaches behind the camera: projection is unbounded
                    continue
                uv = project(cam.K, corners)
                vs, us = np.nonzero(view.seg == e.uid)
                inside = (
                    (us + 0.5 >= uv[:, 0].min() - 1.5)
                    & (us + 0.5 <= uv[:, 0].max() + 1.5)
                    & (vs + 0.5 >= uv[:, 1].min() - 1.5)
                    & (vs + 0.5 <= uv[:, 1].max() + 1.5)
                )
                assert inside.mean() > 0.99, (scene.scene_id, e.label, inside.mean())
                # ...and the object fills a real part of its projected box (not a box somewhere else).
                box_area = np.ptp(np.clip(uv[:, 0], 0, W)) * np.ptp(np.clip(uv[:, 1], 0, H))
                assert n >= 0.15 * box_area or n < 200, (scene.scene_id, e.label, n, box_area)
                checked += 1
    assert checked > 30


def test_depth_is_metric_along_optical_axis(renderer):
    rng = np.random.default_rng(3)
    scene = sample_tabletop(rng, SceneConfig(tabletop_objects=(1, 1)), "flat")
    top = scene.table.top
    eye = np.array([0.0, 0.0, top + 0.9])
    cam = Camera(look_at(eye, [1e-4, 0.0, top]), 50.0, W, H)
    (view,) = renderer.render(scene, [cam])
    table_px = view.seg == scene.table.uid
    # Looking straight down, every table-top pixel lies 0.9 m away along the optical axis.
    assert table_px.mean() > 0.5
    centre_band = table_px[H // 2 - 20 : H // 2 + 20, W // 2 - 20 : W // 2 + 20]
    d = view.depth[H // 2 - 20 : H // 2 + 20, W // 2 - 20 : W // 2 + 20][centre_band]
    obj = scene.objects[0]
    obj_px = view.seg == obj.uid
    if obj_px.any():  # the object's top is closer than the table
        assert np.median(view.depth[obj_px]) < 0.9
    d = d[np.abs(d - 0.9) < 0.05]
    assert d.size > 100 and np.allclose(d, 0.9, atol=2e-3)


def test_object_depth_within_its_box(renderer):
    for scene, cams in _scenes():
        for view in renderer.render(scene, cams):
            for e in scene.objects:
                if view.pixels.get(e.uid, 0) < 40:
                    continue
                z = to_camera(view.camera.cam_to_world, object_corners_world(e.pos, e.dims, e.yaw))[:, 2]
                d = view.depth[view.seg == e.uid]
                assert z.min() - 0.01 <= np.median(d) <= z.max() + 0.01


def test_renderer_has_no_memory_between_scenes(renderer):
    (a_scene, a_cams), (b_scene, b_cams) = list(_scenes())[:2]
    first = renderer.render(a_scene, a_cams)[0].rgb
    renderer.render(b_scene, b_cams)
    again = renderer.render(a_scene, a_cams)[0].rgb
    assert np.array_equal(first, again)


def test_impossible_scene_config_is_rejected():
    with pytest.raises(SceneError, match="tabletop_objects"):
        SceneConfig(tabletop_objects=(3, 40)).validate()
    with pytest.raises(SceneError, match="render slots"):
        SceneConfig(room_objects=(5, 30)).validate()
