"""Camera rendering tuned for a software renderer.

robosuite's stock rendering costs ~40 ms per 128 px frame on llvmpipe: the Panda's visual meshes hold ~180k
triangles and the 4096 px shadow map is redrawn every frame. Here the robot is drawn with its collision meshes
(a few hundred triangles per link, recoloured to the Panda's white/grey), shadows, reflections and multisampling
are off, primitives are tessellated coarsely, and both cameras are drawn into one framebuffer and read back once.
Frames come out upright (row 0 is the top of the image).
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
    """Renders a fixed set of cameras of one model into uint8 RGB arrays of shape (H, W, 3).

    All cameras are drawn side by side into one offscreen framebuffer and read back with a single
    `mjr_readPixels`: on a software renderer the read-back (a full pipeline flush) costs as much as drawing.
    """

    def __init__(self, model: mujoco.MjModel, height: int, width: int, cameras: tuple[str, ...]):
        from mujoco.rendering.classic.gl_context import GLContext

        self.model, self.height, self.width, self.cameras = model, height, width, tuple(cameras)
        ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in self.cameras]
        if -1 in ids:
            raise ValueError(f"unknown camera(s) {[c for c, i in zip(self.cameras, ids) if i < 0]}")
        n = len(self.cameras)
        model.vis.quality.offsamples = 0
        # Coarser tessellation of cylinders/spheres (built into the context below): round enough at 128 px, and
        # the primitives' triangles were ~40% of the drawing time on llvmpipe.
        model.vis.quality.numslices, model.vis.quality.numstacks, model.vis.quality.numquads = 12, 6, 1
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width * n)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self._gl = GLContext(width * n, height)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=10_000)
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            self._scene.flags[flag] = 0
        self._option = mujoco.MjvOption()
        self._option.geomgroup[:] = 0
        for g in _SHOWN_GROUPS:
            self._option.geomgroup[g] = 1
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera_ids = ids
        self._perturb = mujoco.MjvPerturb()
        self._pixels = np.empty((height, width * n, 3), dtype=np.uint8)
        if not _LIVE:
            # Registered at first use, i.e. after mujoco's and robosuite's own EGL shutdown hooks: runs before them.
            atexit.unregister(_close_all)
            atexit.register(_close_all)
        _LIVE.add(self)

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        self._gl.make_current()
        for i, cam_id in enumerate(self._camera_ids):
            self._camera.fixedcamid = cam_id
            mujoco.mjv_updateScene(
                self.model,
                data,
                self._option,
                self._perturb,
                self._camera,
                mujoco.mjtCatBit.mjCAT_ALL,
                self._scene,
            )
            mujoco.mjr_render(
                mujoco.MjrRect(i * self.width, 0, self.width, self.height), self._scene, self._ctx
            )
        mujoco.mjr_readPixels(
            self._pixels, None, mujoco.MjrRect(0, 0, self.width * len(self.cameras), self.height), self._ctx
        )
        upright = self._pixels[::-1]  # OpenGL rows run bottom-up
        return {
            c: upright[:, i * self.width : (i + 1) * self.width].copy() for i, c in enumerate(self.cameras)
        }

    def close(self) -> None:
        if self._gl is not None:
            self._gl.make_current()
            self._ctx.free()
            self._gl.free()
            self._gl = None
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
