"""Fast CPU rendering of scenes: RGB, metric depth and per-pixel entity ids from one fixed MuJoCo model.

Compiling a model and creating a GL context per scene would cost more than rendering, so each process builds
one model with a fixed number of slots (mocap bodies with a few primitive geoms each) and re-dresses it per
scene by editing geom types, sizes, offsets and colours. Shadows are off and `offsamples=0` (STACK.md: the
shadow map dominates CPU rendering cost).
"""

import math
import os
from dataclasses import dataclass

os.environ.setdefault("MUJOCO_GL", "egl")  # headless: must be set before mujoco is imported

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from sim.palette import FLOOR_RGBA  # noqa: E402

from .geometry import MUJOCO_FROM_OPENCV  # noqa: E402
from .scene import MUG_HANDLE, Camera, Entity, Scene  # noqa: E402

OBJECT_PARTS = 3  # geoms per object slot
FURNITURE_PARTS = 6  # geoms per furniture slot
HIDDEN_GROUP = 5  # geom group that the render options switch off
MAX_SIZE = 640  # offscreen buffer side; any viewport up to this size renders without a new context

_BOX, _SPHERE, _CYL = mujoco.mjtGeom.mjGEOM_BOX, mujoco.mjtGeom.mjGEOM_SPHERE, mujoco.mjtGeom.mjGEOM_CYLINDER


@dataclass
class Part:
    """One primitive of an entity: MuJoCo geom type, MuJoCo size, offset from the entity's box centre."""

    type: int
    size: tuple[float, float, float]
    pos: tuple[float, float, float]
    rgba: tuple[float, float, float, float]


def _shade(rgba, f: float):
    return (*(min(1.0, c * f) for c in rgba[:3]), rgba[3])


def entity_parts(e: Entity) -> list[Part]:
    """Primitives that draw an entity inside its ground-truth box (local frame, z up)."""
    dx, dy, dz = (d / 2 for d in e.dims)
    c = e.rgba
    k = e.kind
    if k in ("cube", "block"):
        return [Part(_BOX, (dx, dy, dz), (0, 0, 0), c)]
    if k == "box":  # a carton: body and a slightly darker lid band
        lid = 0.14 * dz
        return [
            Part(_BOX, (0.97 * dx, 0.97 * dy, dz - lid), (0, 0, -lid), c),
            Part(_BOX, (dx, dy, lid), (0, 0, dz - lid), _shade(c, 0.75)),
        ]
    if k == "ball":
        return [Part(_SPHERE, (dx, 0, 0), (0, 0, 0), c)]
    if k == "cylinder":
        return [Part(_CYL, (dx, dz, 0), (0, 0, 0), c)]
    if k == "mug":  # body, handle on +x, dark opening on top
        r = dy
        hw = MUG_HANDLE * 2 * r
        body_x = -hw / 2
        return [
            Part(_CYL, (r, dz - 0.002, 0), (body_x, 0, -0.002), c),
            Part(_BOX, (hw / 2 + 0.002, 0.18 * r, 0.55 * dz), (dx - hw / 2 - 0.002, 0, 0), c),
            Part(_CYL, (0.85 * r, 0.002, 0), (body_x, 0, dz - 0.002), _shade(c, 0.45)),
        ]
    if k == "bowl":  # narrow foot, wide rim, dark hollow
        r = dx
        foot, rim = 0.35 * dz, 0.65 * dz
        return [
            Part(_CYL, (0.6 * r, foot, 0), (0, 0, -dz + foot), c),
            Part(_CYL, (r, rim - 0.002, 0), (0, 0, dz - rim - 0.002), c),
            Part(_CYL, (0.85 * r, 0.002, 0), (0, 0, dz - 0.002), _shade(c, 0.55)),
        ]
    if k == "plate":
        return [
            Part(_CYL, (dx, dz - 0.001, 0), (0, 0, -0.001), c),
            Part(_CYL, (0.7 * dx, 0.001, 0), (0, 0, dz - 0.001), _shade(c, 1.15)),
        ]
    if k == "table":
        top = min(0.03, dz / 2)
        leg = min(0.03, dx / 4, dy / 4)
        legs = [
            Part(_BOX, (leg, leg, dz - top), (sx * (dx - leg), sy * (dy - leg), -top), _shade(c, 0.8))
            for sx in (-1, 1)
            for sy in (-1, 1)
        ]
        return [Part(_BOX, (dx, dy, top), (0, 0, dz - top), c), *legs]
    if k == "cabinet":
        return [
            Part(_BOX, (dx, 0.96 * dy, 0.97 * dz), (0, -0.04 * dy, -0.03 * dz), c),
            Part(_BOX, (dx, dy, 0.03 * dz), (0, 0, 0.97 * dz), _shade(c, 0.8)),
            Part(_BOX, (0.004, 0.02 * dy, 0.8 * dz), (0, 0.94 * dy, -0.05 * dz), _shade(c, 0.5)),
        ]
    if k == "bed":
        white = (0.9, 0.9, 0.88, 1.0)
        return [
            Part(_BOX, (dx, dy, 0.55 * dz), (0, 0, -0.45 * dz), c),
            Part(_BOX, (0.98 * dx, 0.98 * dy, 0.45 * dz), (0, 0, 0.55 * dz - 0.002), white),
            Part(
                _BOX, (0.12 * dx, 0.7 * dy, 0.08 * dz), (-0.82 * dx, 0, 0.92 * dz - 0.002), _shade(white, 0.9)
            ),
        ]
    if k == "sofa":
        seat, back, arm = 0.5 * dz, 0.2 * dy, 0.1 * dx
        return [
            Part(_BOX, (dx - 2 * arm, dy - back, seat / 1), (0, back, -dz + seat), c),
            Part(_BOX, (dx, back, dz), (0, -dy + back, 0), _shade(c, 0.85)),
            Part(_BOX, (arm, dy - back, 0.65 * dz), (-dx + arm, back, -0.35 * dz), _shade(c, 0.9)),
            Part(_BOX, (arm, dy - back, 0.65 * dz), (dx - arm, back, -0.35 * dz), _shade(c, 0.9)),
        ]
    if k == "shelf":
        t = 0.02
        return [
            Part(_BOX, (t, dy, dz), (-dx + t, 0, 0), c),
            Part(_BOX, (t, dy, dz), (dx - t, 0, 0), c),
            Part(_BOX, (dx, t, dz), (0, -dy + t, 0), _shade(c, 0.85)),
            Part(_BOX, (dx, dy, t), (0, 0, dz - t), c),
            Part(_BOX, (dx, dy, t), (0, 0, -dz + t), c),
            Part(_BOX, (dx, dy, t), (0, 0, 0), c),
        ]
    raise ValueError(f"no primitives for entity kind {k!r}")


def _model_xml(n_objects: int, n_furniture: int) -> str:
    bodies = []
    for prefix, n, parts in (("obj", n_objects, OBJECT_PARTS), ("furn", n_furniture, FURNITURE_PARTS)):
        for i in range(n):
            geoms = "".join(
                f'<geom name="{prefix}{i}_{p}" type="box" size=".01 .01 .01" group="{HIDDEN_GROUP}"/>'
                for p in range(parts)
            )
            bodies.append(f'<body name="{prefix}{i}" mocap="true" pos="0 0 -50">{geoms}</body>')
    floor = " ".join(map(str, FLOOR_RGBA))
    return f"""
<mujoco model="vst_scene">
  <visual>
    <global offwidth="{MAX_SIZE}" offheight="{MAX_SIZE}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.35 0.35 0.35" specular="0.05 0.05 0.05"/>
    <map znear="0.01" zfar="60"/>
  </visual>
  <statistic extent="1" center="0 0 0"/>
  <default><geom contype="0" conaffinity="0" rgba="1 1 1 1"/></default>
  <worldbody>
    <light name="sun" directional="true" castshadow="false" pos="0 0 5" dir="0.3 0.4 -1" diffuse="0.5 0.5 0.5"/>
    <geom name="floor" type="box" size="5 5 0.01" pos="0 0 -0.01" rgba="{floor}"/>
    <geom name="wall0" type="box" size="1 1 1" pos="0 0 -50"/>
    <geom name="wall1" type="box" size="1 1 1" pos="0 0 -50"/>
    <geom name="wall2" type="box" size="1 1 1" pos="0 0 -50"/>
    <geom name="wall3" type="box" size="1 1 1" pos="0 0 -50"/>
    <geom name="ceiling" type="box" size="1 1 1" pos="0 0 -50"/>
    {"".join(bodies)}
    <body name="cam_body" mocap="true"><camera name="cam" fovy="60"/></body>
  </worldbody>
</mujoco>"""


@dataclass
class View:
    """One rendered camera: RGB, metric depth (distance along the optical axis) and entity-id image."""

    camera: Camera
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres
    seg: np.ndarray  # (H, W) int16 entity uid, -1 for background (floor, walls)
    pixels: dict[int, int]  # visible pixel count per entity uid

    def visible(self, uid: int, min_pixels: int = 30) -> bool:
        return self.pixels.get(uid, 0) >= min_pixels


class SceneRenderer:
    """One GL context and one model per process; call `render(scene, cameras)` as often as needed."""

    def __init__(self, n_objects: int = 16, n_furniture: int = 7):
        self.n_objects, self.n_furniture = n_objects, n_furniture
        self.model = mujoco.MjModel.from_xml_string(_model_xml(n_objects, n_furniture))
        self.data = mujoco.MjData(self.model)
        m = self.model
        gid = lambda name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, name)  # noqa: E731
        bid = lambda name: m.body_mocapid[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)]  # noqa: E731
        self._obj_slots = [
            (bid(f"obj{i}"), [gid(f"obj{i}_{p}") for p in range(OBJECT_PARTS)]) for i in range(n_objects)
        ]
        self._furn_slots = [
            (bid(f"furn{i}"), [gid(f"furn{i}_{p}") for p in range(FURNITURE_PARTS)])
            for i in range(n_furniture)
        ]
        self._walls = [gid(f"wall{i}") for i in range(4)]
        self._ceiling, self._floor = gid("ceiling"), gid("floor")
        self._cam_mocap = bid("cam_body")
        self._geom_uid = np.full(m.ngeom, -1, np.int32)  # geom id -> entity uid for the current scene
        # The compiler marks geoms that sit at their body's origin and kinematics then skips their offsets;
        # the offsets change per scene here, so every geom must be placed from its own geom_pos.
        m.geom_sameframe[:] = 0

        self._gl = mujoco.GLContext(MAX_SIZE, MAX_SIZE)
        self._gl.make_current()
        self._con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._con.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR  # reversed z: 0 at the far plane
        self._scn = mujoco.MjvScene(m, maxgeom=m.ngeom + 10)
        self._opt = mujoco.MjvOption()
        self._opt.geomgroup[HIDDEN_GROUP] = 0
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._cam.fixedcamid = 0
        self._pert = mujoco.MjvPerturb()
        self._scene_id = None

    # ------------------------------------------------------------------------------------------- dressing
    def _dress(self, scene: Scene) -> None:
        if len(scene.objects) > self.n_objects or len(scene.furniture) > self.n_furniture:
            raise ValueError(
                f"scene {scene.scene_id} has {len(scene.objects)} objects / {len(scene.furniture)} furniture; "
                f"the renderer has {self.n_objects} / {self.n_furniture} slots"
            )
        m, d = self.model, self.data
        self._geom_uid[:] = -1
        for slots, entities in ((self._obj_slots, scene.objects), (self._furn_slots, scene.furniture)):
            for k, (mocap, geoms) in enumerate(slots):
                if k >= len(entities):
                    d.mocap_pos[mocap] = (0, 0, -50)
                    m.geom_group[geoms] = HIDDEN_GROUP
                    continue
                e = entities[k]
                d.mocap_pos[mocap] = e.pos
                d.mocap_quat[mocap] = (math.cos(e.yaw / 2), 0, 0, math.sin(e.yaw / 2))
                parts = entity_parts(e)
                if len(parts) > len(geoms):
                    raise ValueError(f"{e.kind} needs {len(parts)} primitives; slots hold {len(geoms)}")
                for g, part in zip(geoms, parts):
                    m.geom_type[g], m.geom_size[g], m.geom_pos[g] = part.type, part.size, part.pos
                    m.geom_rgba[g] = part.rgba
                    m.geom_group[g] = 0
                    self._geom_uid[g] = e.uid
                m.geom_group[geoms[len(parts) :]] = HIDDEN_GROUP
        rx, ry, h = scene.room
        t = 0.05
        walls = [
            ((rx / 2 + t, t, h / 2), (0, -ry / 2 - t, h / 2)),
            ((rx / 2 + t, t, h / 2), (0, ry / 2 + t, h / 2)),
        ]
        walls += [
            ((t, ry / 2 + t, h / 2), (-rx / 2 - t, 0, h / 2)),
            ((t, ry / 2 + t, h / 2), (rx / 2 + t, 0, h / 2)),
        ]
        for g, (size, pos) in zip(self._walls, walls):
            m.geom_size[g], m.geom_pos[g], m.geom_rgba[g] = size, pos, scene.wall_rgba
        m.geom_size[self._ceiling], m.geom_pos[self._ceiling] = (rx / 2 + t, ry / 2 + t, t), (0, 0, h + t)
        m.geom_rgba[self._ceiling] = (0.92, 0.92, 0.9, 1.0)
        m.geom_size[self._floor] = (rx / 2 + 2 * t, ry / 2 + 2 * t, 0.01)
        m.light_diffuse[0] = (scene.light,) * 3
        self._scene_id = scene.scene_id

    # ------------------------------------------------------------------------------------------- rendering
    def render(self, scene: Scene, cameras: list[Camera]) -> list[View]:
        self._dress(scene)
        return [self._render_one(cam) for cam in cameras]

    def _render_one(self, cam: Camera) -> View:
        if not (0 < cam.width <= MAX_SIZE and 0 < cam.height <= MAX_SIZE):
            raise ValueError(f"image size {cam.width}x{cam.height} outside 1..{MAX_SIZE}")
        m, d = self.model, self.data
        R = cam.cam_to_world[:3, :3] @ MUJOCO_FROM_OPENCV
        q = np.empty(4)
        mujoco.mju_mat2Quat(q, R.flatten())
        d.mocap_pos[self._cam_mocap] = cam.cam_to_world[:3, 3]
        d.mocap_quat[self._cam_mocap] = q
        m.cam_fovy[0] = cam.fovy
        mujoco.mj_kinematics(m, d)
        mujoco.mj_camlight(m, d)
        self._gl.make_current()
        mujoco.mjv_updateScene(m, d, self._opt, self._pert, self._cam, mujoco.mjtCatBit.mjCAT_ALL, self._scn)
        rect = mujoco.MjrRect(0, 0, cam.width, cam.height)

        rgb = np.empty((cam.height, cam.width, 3), np.uint8)
        mujoco.mjr_render(rect, self._scn, self._con)
        mujoco.mjr_readPixels(rgb, None, rect, self._con)

        self._scn.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = True
        self._scn.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
        ids = np.empty((cam.height, cam.width, 3), np.uint8)
        zbuf = np.empty((cam.height, cam.width), np.float32)
        mujoco.mjr_render(rect, self._scn, self._con)
        mujoco.mjr_readPixels(ids, zbuf, rect, self._con)
        self._scn.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = False
        self._scn.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = False

        seg = self._entity_ids(ids)
        uids, counts = np.unique(seg, return_counts=True)
        pixels = {int(u): int(c) for u, c in zip(uids, counts) if u >= 0}
        depth = self._metric_depth(zbuf)
        return View(cam, np.flipud(rgb).copy(), np.flipud(depth).copy(), np.flipud(seg).copy(), pixels)

    def _entity_ids(self, ids: np.ndarray) -> np.ndarray:
        segid = (
            ids[..., 0].astype(np.int32)
            | (ids[..., 1].astype(np.int32) << 8)
            | (ids[..., 2].astype(np.int32) << 16)
        )
        ngeom = self._scn.ngeom
        lut = np.full(ngeom + 1, -1, np.int16)  # segid 0 is background
        for i in range(ngeom):
            g = self._scn.geoms[i]
            if g.segid >= 0 and g.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lut[g.segid + 1] = self._geom_uid[g.objid]
        return lut[np.clip(segid, 0, ngeom)]

    def _metric_depth(self, zbuf: np.ndarray) -> np.ndarray:
        """Undo MuJoCo's reversed-z perspective depth (see mujoco.Renderer) into metres along the optical axis."""
        extent = self.model.stat.extent
        near, far = self.model.vis.map.znear * extent, self.model.vis.map.zfar * extent
        c = -(far + near) / (far - near)
        dcoef = -(2 * far * near) / (far - near)
        c, dcoef = -0.5 * c - 0.5, -0.5 * dcoef
        return (dcoef / (zbuf.astype(np.float64) + c)).astype(np.float32)

    def close(self) -> None:
        if self._con is not None:
            self._con.free()
            self._con = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None


_RENDERER: SceneRenderer | None = None


def get_renderer(n_objects: int = 16, n_furniture: int = 7) -> SceneRenderer:
    """The process's renderer (created on first use, so worker processes each make their own GL context)."""
    global _RENDERER
    if _RENDERER is None or (_RENDERER.n_objects, _RENDERER.n_furniture) != (n_objects, n_furniture):
        if _RENDERER is not None:
            _RENDERER.close()
        _RENDERER = SceneRenderer(n_objects, n_furniture)
    return _RENDERER


def close_renderer() -> None:
    """Free the process's GL context now rather than at interpreter exit (avoids shutdown-time GL noise)."""
    global _RENDERER
    if _RENDERER is not None:
        _RENDERER.close()
        _RENDERER = None
