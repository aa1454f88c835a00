"""Camera rendering tuned for a software renderer.

robosuite's stock rendering costs ~40 ms per 128 px frame on llvmpipe: the Panda's visual meshes hold ~180k
triangles and the 4096 px shadow map is redrawn every frame. Here the robot is drawn with its collision meshes
(a few hundred triangles per link, recoloured to the Panda's white/grey), shadows, reflections and multisampling
are off, and both cameras share one GL context. Frames come out upright (row 0 is the top of the image).
"""

import atexit
import weakref

import mujoco
import numpy as np

ROBOT_PREFIXES = ("robot0_", "gripper0_", "fixed_mount0_", "mount0_")
_SHOWN_GROUPS = (1, 2)  # visual geoms of the scene + the robot's recoloured collision geoms
_HIDDEN_GROUP = 3


def _body_name(model: mujoco.MjModel, geom: int) -> str:
    return mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, model.geom_bodyid[geom]) or ""


def _geom_name(model: mujoco.MjModel, geom: int) -> str:
    return mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, geom) or ""


def simplify_robot_visuals(model: mujoco.MjModel) -> None:
    """Swap the robot's heavy visual meshes for its collision geoms (rendering only: contacts are unaffected)."""
    for g in range(model.ngeom):
        body, name = _body_name(model, g), _geom_name(model, g)
        if "eef_target" in body:  # robosuite's controller-target markers
            model.geom_group[g] = _HIDDEN_GROUP
            continue
        if not body.startswith(ROBOT_PREFIXES):
            continue
        if model.geom_group[g] == 1:
            model.geom_group[g] = _HIDDEN_GROUP
        elif model.geom_group[g] == 0:
            model.geom_group[g] = 2
            finger = "finger" in name or "pad" in name
            pedestal = body.startswith(("fixed_mount0_", "mount0_"))
            grey = 0.25 if (finger or pedestal) else 0.88
            model.geom_rgba[g] = (grey, grey, grey, 1.0)
            model.geom_matid[g] = -1


_LIVE: "weakref.WeakSet[CameraRenderer]" = weakref.WeakSet()


def _close_all() -> None:
    # A GL context freed by the garbage collector after EGL has shut down raises at exit; close them first.
    for r in list(_LIVE):
        r.close()


class CameraRenderer:
    """Renders named cameras of one model into uint8 RGB arrays of shape (H, W, 3)."""

    def __init__(self, model: mujoco.MjModel, height: int, width: int):
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self.height, self.width = height, width
        self._renderer = mujoco.Renderer(model, height, width)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        self._option = mujoco.MjvOption()
        self._option.geomgroup[:] = 0
        for g in _SHOWN_GROUPS:
            self._option.geomgroup[g] = 1
        if not _LIVE:
            # Registered at first use, i.e. after mujoco's and robosuite's own EGL shutdown hooks: runs before them.
            atexit.unregister(_close_all)
            atexit.register(_close_all)
        _LIVE.add(self)

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        self._renderer.update_scene(data, camera=camera, scene_option=self._option)
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()
        _LIVE.discard(self)


def look_at_quat(pos, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """(w, x, y, z) orientation of a MuJoCo camera at `pos` looking at `target` (cameras look along -z)."""
    pos, target, up = (np.asarray(v, dtype=float) for v in (pos, target, up))
    back = pos - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    cam_up = np.cross(back, right)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.stack([right, cam_up, back], axis=1).flatten())
    return quat
