"""Scene sampling: tabletops like the robot's workspace and larger rooms, with exact ground truth.

A scene is plain data (entities with kind, colour, size, pose); `render.py` turns it into pixels. Every entity is
an upright box in the world (yaw about z only), which is also its 3D ground-truth box.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from sim.palette import COLORS, KINDS, TABLE_RGBA

from .geometry import look_at, yaw_matrix

# Object sizes at tabletop scale (metres): ranges of the entity's full extents along local x, y, z.
# Round kinds use one diameter for x and y. Rooms scale objects up so they stay visible in 160-224 px frames.
_ROUND_KINDS = {"ball", "cylinder", "mug", "bowl", "plate"}
OBJECT_SIZE_RANGES = {
    "cube": ((0.04, 0.08),),
    "block": ((0.10, 0.18), (0.035, 0.06), (0.035, 0.06)),
    "ball": ((0.05, 0.10),),
    "cylinder": ((0.04, 0.08), (0.07, 0.16)),
    "mug": ((0.07, 0.10), (0.08, 0.12)),
    "bowl": ((0.12, 0.20), (0.045, 0.08)),
    "plate": ((0.15, 0.25), (0.015, 0.025)),
    "box": ((0.12, 0.24), (0.09, 0.16), (0.06, 0.14)),
}
MUG_HANDLE = 0.28  # handle depth as a fraction of the mug's body diameter (added to its x extent)
ROOM_OBJECT_SCALE = (2.5, 3.5)

FURNITURE_SIZE_RANGES = {
    "table": ((1.0, 1.8), (0.6, 1.0), (0.7, 0.8)),
    "cabinet": ((0.6, 1.2), (0.4, 0.6), (0.8, 1.2)),
    "bed": ((1.9, 2.1), (1.4, 1.8), (0.45, 0.6)),
    "sofa": ((1.6, 2.2), (0.8, 0.95), (0.75, 0.9)),
    "shelf": ((0.8, 1.2), (0.3, 0.4), (1.4, 1.9)),
}
FURNITURE_COLORS = {
    "wooden": TABLE_RGBA,
    "white": (0.85, 0.85, 0.82, 1.0),
    "gray": (0.45, 0.46, 0.48, 1.0),
    "dark": (0.22, 0.16, 0.12, 1.0),
    "beige": (0.80, 0.72, 0.58, 1.0),
}
SUPPORT_FURNITURE = ("table", "cabinet", "bed")  # furniture whose top can hold objects

# Colours that are easy to confuse; scenes sometimes include such pairs on purpose.
LOOKALIKE_COLORS = {
    "red": ("orange", "pink"),
    "orange": ("red", "yellow", "brown"),
    "pink": ("red", "purple"),
    "blue": ("cyan", "purple"),
    "cyan": ("blue", "green"),
    "purple": ("blue", "pink"),
    "white": ("gray",),
    "gray": ("white", "black"),
    "black": ("gray",),
    "brown": ("orange",),
    "yellow": ("orange",),
    "green": ("cyan",),
}

COLOR_NAMES = tuple(COLORS)

# Order of each kind's rotational symmetry about the vertical axis (0 = continuous); see geometry.canonical_yaw.
YAW_SYMMETRY = {"ball": 0, "cylinder": 0, "bowl": 0, "plate": 0, "cube": 4, "block": 2, "box": 2, "table": 2}


def _held_out_combos() -> frozenset[tuple[str, str]]:
    """Two colours per kind, spread so that every colour is held out for at least one kind."""
    combos = set()
    for k, kind in enumerate(KINDS):
        combos.add((COLOR_NAMES[(5 * k) % 12], kind))
        combos.add((COLOR_NAMES[(5 * k + 6) % 12], kind))
    return frozenset(combos)


# (colour, kind) pairs that never appear in training scenes; benchmark scenes always contain at least one.
HELD_OUT_COMBOS = _held_out_combos()


class SceneError(ValueError):
    """A scene configuration that cannot be satisfied (e.g. more objects than fit)."""


class ViewError(SceneError):
    """This particular scene leaves no good camera placement; the caller draws another scene."""


@dataclass
class Entity:
    uid: int
    kind: str  # one of sim.palette.KINDS, or a furniture kind
    color: str  # palette colour name (objects) or FURNITURE_COLORS name (furniture)
    dims: tuple[float, float, float]  # full extents along the entity's local x, y, z
    pos: tuple[float, float, float]  # world centre of its box
    yaw: float  # rotation about world z, radians
    furniture: bool = False

    @property
    def label(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def rgba(self) -> tuple[float, float, float, float]:
        return FURNITURE_COLORS[self.color] if self.furniture else COLORS[self.color]

    @property
    def top(self) -> float:
        return self.pos[2] + self.dims[2] / 2

    def footprint(self) -> np.ndarray:
        """The 4 floor-plane corners (4, 2) of its box."""
        dx, dy = self.dims[0] / 2, self.dims[1] / 2
        local = np.array([[-dx, -dy], [dx, -dy], [dx, dy], [-dx, dy]])
        return np.asarray(self.pos[:2]) + local @ yaw_matrix(self.yaw)[:2, :2].T

    def to_dict(self) -> dict:
        return {
            "uid": self.uid,
            "label": self.label,
            "kind": self.kind,
            "color": self.color,
            "dims": [round(v, 4) for v in self.dims],
            "pos": [round(v, 4) for v in self.pos],
            "yaw": round(self.yaw, 4),
            "furniture": self.furniture,
        }


@dataclass
class Scene:
    scene_id: str
    layout: str  # "tabletop" | "room"
    room: tuple[float, float, float]  # floor extents x, y and wall height; the room is centred on the origin
    objects: list[Entity]
    furniture: list[Entity]  # for tabletops, the table itself is furniture[0]
    wall_rgba: tuple[float, float, float, float] = (0.78, 0.76, 0.70, 1.0)
    light: float = 0.5  # directional light strength

    @property
    def entities(self) -> list[Entity]:
        return self.furniture + self.objects

    @property
    def table(self) -> Entity | None:
        return self.furniture[0] if self.layout == "tabletop" else None

    def by_uid(self, uid: int) -> Entity:
        for e in self.entities:
            if e.uid == uid:
                return e
        raise KeyError(uid)

    def to_dict(self) -> dict:
        return {
            "scene_id": self.scene_id,
            "layout": self.layout,
            "room": [round(v, 4) for v in self.room],
            "objects": [o.to_dict() for o in self.objects],
            "furniture": [f.to_dict() for f in self.furniture],
        }


@dataclass
class Camera:
    """A pinhole camera; `cam_to_world` uses OpenCV axes (X right, Y down, Z forward)."""

    cam_to_world: np.ndarray
    fovy: float  # vertical field of view in degrees (MuJoCo's convention)
    width: int
    height: int

    @property
    def K(self) -> np.ndarray:
        from .geometry import intrinsics

        return intrinsics(self.width, self.height, self.fovy)

    @property
    def position(self) -> np.ndarray:
        return self.cam_to_world[:3, 3]

    def to_dict(self) -> dict:
        K = self.K
        return {
            "width": self.width,
            "height": self.height,
            "fx": round(float(K[0, 0]), 4),
            "fy": round(float(K[1, 1]), 4),
            "cx": float(K[0, 2]),
            "cy": float(K[1, 2]),
            "cam_to_world": np.round(self.cam_to_world, 5).tolist(),
        }


@dataclass
class SceneConfig:
    """Ranges the sampler draws from; `validate` rejects configs that cannot be met."""

    tabletop_objects: tuple[int, int] = (3, 7)
    room_objects: tuple[int, int] = (5, 12)
    room_furniture: tuple[int, int] = (2, 5)
    lookalike_prob: float = 0.35
    max_objects: int = 16  # render slots; also the hard cap on objects per scene
    max_furniture: int = 7
    held_out: str = "exclude"  # "exclude" (training) | "include" (benchmark scenes hold >= 1 held-out combo)
    placement_tries: int = 200
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("tabletop_objects", "room_objects", "room_furniture"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise SceneError(f"scene.{name}={list(getattr(self, name))}: need 0 < min <= max")
        for name, cap in (("tabletop_objects", self.max_objects), ("room_objects", self.max_objects)):
            if getattr(self, name)[1] > cap:
                raise SceneError(f"scene.{name} max {getattr(self, name)[1]} exceeds the {cap} render slots")
        if self.room_furniture[1] > self.max_furniture:
            raise SceneError(f"scene.room_furniture max exceeds the {self.max_furniture} furniture slots")
        # The smallest table holds about 0.8 * 0.6 m * 40% packing; objects need >= ~0.08 m spacing each.
        tabletop_capacity = int(0.8 * 0.6 * 0.4 / (0.07 * 0.07))
        if self.tabletop_objects[1] > tabletop_capacity:
            raise SceneError(
                f"scene.tabletop_objects max {self.tabletop_objects[1]} cannot fit on the smallest table "
                f"(about {tabletop_capacity} objects fit)"
            )
        if self.held_out not in ("exclude", "include"):
            raise SceneError(f"scene.held_out={self.held_out!r}: use 'exclude' or 'include'")


def object_dims(kind: str, rng: np.random.Generator, scale: float = 1.0) -> tuple[float, float, float]:
    ranges = OBJECT_SIZE_RANGES[kind]
    draw = [float(rng.uniform(lo, hi)) * scale for lo, hi in ranges]
    if kind == "cube":
        return (draw[0],) * 3
    if kind == "ball":
        return (draw[0],) * 3
    if kind == "mug":
        return (draw[0] * (1 + MUG_HANDLE), draw[0], draw[1])
    if kind in _ROUND_KINDS:
        return (draw[0], draw[0], draw[1])
    return tuple(draw)


def _pick_kind_color(rng, held_out: str, force_held_out: bool) -> tuple[str, str]:
    if force_held_out:
        combos = sorted(HELD_OUT_COMBOS)
        color, kind = combos[rng.integers(len(combos))]
        return kind, color
    while True:
        kind = KINDS[rng.integers(len(KINDS))]
        color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        if held_out == "include" or (color, kind) not in HELD_OUT_COMBOS:
            return kind, color


def _object_specs(rng, n: int, cfg: SceneConfig) -> list[tuple[str, str]]:
    """Kinds and colours of n objects, with look-alike pairs mixed in."""
    specs: list[tuple[str, str]] = []
    while len(specs) < n:
        force = cfg.held_out == "include" and not specs
        kind, color = _pick_kind_color(rng, cfg.held_out, force)
        specs.append((kind, color))
        if len(specs) < n and rng.random() < cfg.lookalike_prob:
            if rng.random() < 0.5:  # same kind, similar colour
                alt = LOOKALIKE_COLORS[color]
                color2 = alt[rng.integers(len(alt))]
                if cfg.held_out == "include" or (color2, kind) not in HELD_OUT_COMBOS:
                    specs.append((kind, color2))
            else:  # the very same kind and colour (sizes will differ)
                specs.append((kind, color))
    return specs


def _circle_fits(xy, r, placed: list[tuple[np.ndarray, float]], margin: float) -> bool:
    return all(np.hypot(*(xy - p)) >= r + q + margin for p, q in placed)


def _footprint_radius(dims) -> float:
    return 0.5 * math.hypot(dims[0], dims[1])


def _retry(sampler):
    """Crowded draws are re-drawn; a config that keeps failing is reported (its last error names the cause)."""

    def wrapped(rng: np.random.Generator, cfg: SceneConfig, scene_id: str) -> Scene:
        for _ in range(19):
            try:
                return sampler(rng, cfg, scene_id)
            except SceneError:
                continue
        return sampler(rng, cfg, scene_id)

    wrapped.__doc__ = sampler.__doc__
    return wrapped


@_retry
def sample_tabletop(rng: np.random.Generator, cfg: SceneConfig, scene_id: str) -> Scene:
    """A table in a room with objects resting on it, like the robot's workspace."""
    length, width, height = rng.uniform(0.8, 1.4), rng.uniform(0.6, 1.0), rng.uniform(0.75, 0.85)
    table = Entity(0, "table", "wooden", (length, width, height), (0.0, 0.0, height / 2), 0.0, furniture=True)
    n = int(rng.integers(cfg.tabletop_objects[0], cfg.tabletop_objects[1] + 1))
    objects = _place_on_surfaces(rng, cfg, _object_specs(rng, n, cfg), [table], 1.0, first_uid=1)
    room = (float(rng.uniform(4.0, 7.0)), float(rng.uniform(4.0, 7.0)), 2.8)
    return Scene(
        scene_id, "tabletop", room, objects, [table], _wall_color(rng), float(rng.uniform(0.35, 0.6))
    )


def _wall_color(rng) -> tuple[float, float, float, float]:
    base = np.array([0.78, 0.76, 0.70]) + rng.uniform(-0.08, 0.08, size=3)
    return (*np.clip(base, 0, 1).round(4).tolist(), 1.0)


def _place_on_surfaces(rng, cfg, specs, supports: list[Entity], scale_range, first_uid: int, floor=None):
    """Place objects on top of support boxes (and on the free floor if `floor` is given) without overlaps.

    `floor` is (x_half, y_half, blocked_footprints) for rooms. Raises SceneError if an object cannot be placed.
    """
    placed: dict[int, list[tuple[np.ndarray, float]]] = {}
    objects = []
    for i, (kind, color) in enumerate(specs):
        scale = 1.0 if scale_range == 1.0 else float(rng.uniform(*scale_range))
        dims = object_dims(kind, rng, scale)
        r = _footprint_radius(dims)
        for _ in range(cfg.placement_tries):
            choice = int(rng.integers(len(supports) + (floor is not None)))
            yaw = float(rng.uniform(-math.pi, math.pi))
            if choice < len(supports):
                s = supports[choice]
                hx, hy = s.dims[0] / 2 - r - 0.02, s.dims[1] / 2 - r - 0.02
                if hx <= 0 or hy <= 0:
                    continue
                local = np.array([rng.uniform(-hx, hx), rng.uniform(-hy, hy)])
                xy = np.asarray(s.pos[:2]) + yaw_matrix(s.yaw)[:2, :2] @ local
                z0 = s.top
            else:
                fx, fy, blocked = floor
                xy = np.array([rng.uniform(-fx + r, fx - r), rng.uniform(-fy + r, fy - r)])
                if any(_circle_hits_rect(xy, r + 0.05, b) for b in blocked):
                    continue
                z0 = 0.0
            if _circle_fits(xy, r, placed.setdefault(choice, []), margin=0.015 * max(1.0, scale)):
                placed[choice].append((xy, r))
                pos = (float(xy[0]), float(xy[1]), z0 + dims[2] / 2)
                objects.append(Entity(first_uid + i, kind, color, dims, pos, yaw))
                break
        else:
            raise SceneError(
                f"could not place object {i + 1} of {len(specs)} ({color} {kind}) after {cfg.placement_tries} "
                "tries: the scene is too crowded; lower scene.tabletop_objects / scene.room_objects"
            )
    return objects


def _circle_hits_rect(xy, r, rect: np.ndarray) -> bool:
    """Whether a disc overlaps an oriented rectangle given by its 4 corners (counter-clockwise)."""
    centre = rect.mean(0)
    ax = rect[1] - rect[0]
    ay = rect[3] - rect[0]
    hx, hy = np.linalg.norm(ax) / 2, np.linalg.norm(ay) / 2
    d = xy - centre
    lx, ly = abs(d @ ax) / (2 * hx), abs(d @ ay) / (2 * hy)
    qx, qy = max(lx - hx, 0.0), max(ly - hy, 0.0)
    return math.hypot(qx, qy) < r


def _rects_overlap(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    """Axis-aligned overlap test (room furniture is placed at multiples of 90 degrees)."""
    return not (
        a[:, 0].max() + margin <= b[:, 0].min()
        or b[:, 0].max() + margin <= a[:, 0].min()
        or a[:, 1].max() + margin <= b[:, 1].min()
        or b[:, 1].max() + margin <= a[:, 1].min()
    )


FURNITURE_KINDS = tuple(FURNITURE_SIZE_RANGES)


@_retry
def sample_room(rng: np.random.Generator, cfg: SceneConfig, scene_id: str) -> Scene:
    """A walled room with furniture along the walls and objects on the floor and on furniture tops."""
    rx, ry = float(rng.uniform(4.5, 8.0)), float(rng.uniform(3.5, 6.5))
    room = (rx, ry, float(rng.uniform(2.6, 3.0)))
    n_furn = int(rng.integers(cfg.room_furniture[0], cfg.room_furniture[1] + 1))
    furniture: list[Entity] = []
    colors = tuple(FURNITURE_COLORS)
    for _ in range(cfg.placement_tries):
        if len(furniture) == n_furn:
            break
        kind = FURNITURE_KINDS[rng.integers(len(FURNITURE_KINDS))]
        dims = tuple(float(rng.uniform(lo, hi)) for lo, hi in FURNITURE_SIZE_RANGES[kind])
        wall = int(rng.integers(4))  # furniture backs onto a wall, facing into the room
        yaw = [0.0, math.pi / 2, math.pi, -math.pi / 2][wall]
        along = rx if wall in (0, 2) else ry
        off = (
            float(rng.uniform(-along / 2 + dims[0] / 2 + 0.1, along / 2 - dims[0] / 2 - 0.1))
            if along > dims[0] + 0.2
            else None
        )
        if off is None:
            continue
        depth = dims[1] / 2 + 0.05
        xy = {
            0: (off, -ry / 2 + depth),
            1: (rx / 2 - depth, off),
            2: (off, ry / 2 - depth),
            3: (-rx / 2 + depth, off),
        }[wall]
        e = Entity(
            len(furniture), kind, colors[rng.integers(len(colors))], dims, (*xy, dims[2] / 2), yaw, True
        )
        if any(_rects_overlap(e.footprint(), f.footprint(), 0.3) for f in furniture):
            continue
        furniture.append(e)
    if len(furniture) < cfg.room_furniture[0]:
        raise SceneError(
            f"could not fit {cfg.room_furniture[0]} furniture pieces in a {rx:.1f} x {ry:.1f} m room"
        )
    supports = [f for f in furniture if f.kind in SUPPORT_FURNITURE]
    n = int(rng.integers(cfg.room_objects[0], cfg.room_objects[1] + 1))
    floor = (rx / 2 - 0.1, ry / 2 - 0.1, [f.footprint() for f in furniture])
    objects = _place_on_surfaces(
        rng,
        cfg,
        _object_specs(rng, n, cfg),
        supports,
        ROOM_OBJECT_SCALE,
        first_uid=len(furniture),
        floor=floor,
    )
    return Scene(scene_id, "room", room, objects, furniture, _wall_color(rng), float(rng.uniform(0.35, 0.6)))


# ----------------------------------------------------------------------------------------------- cameras


def tabletop_camera(rng, scene: Scene, width: int, height: int, fovy_range=(40.0, 75.0)) -> Camera:
    """A camera around the table looking at its top, like a workspace or a person standing by it."""
    table = scene.table
    azimuth = float(rng.uniform(-math.pi, math.pi))
    elevation = math.radians(float(rng.uniform(20.0, 65.0)))
    fovy = float(rng.uniform(*fovy_range))
    # Narrow lenses stand further back so the table still fills the view.
    dist = float(rng.uniform(0.7, 1.2)) * (60.0 / fovy) ** 0.7
    target = np.array(
        [rng.uniform(-0.15, 0.15) * table.dims[0], rng.uniform(-0.15, 0.15) * table.dims[1], table.top + 0.03]
    )
    eye = target + dist * np.array(
        [
            math.cos(elevation) * math.cos(azimuth),
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ]
    )
    return Camera(look_at(eye, target, float(rng.uniform(-4.0, 4.0))), fovy, width, height)


def room_camera(rng, scene: Scene, width: int, height: int, fovy_range=(55.0, 75.0)) -> Camera:
    """A person-height camera in free floor space looking across the room."""
    rx, ry, _ = scene.room
    blocked = [f.footprint() for f in scene.furniture]
    for _ in range(200):
        eye_xy = np.array([rng.uniform(-0.35, 0.35) * rx, rng.uniform(-0.35, 0.35) * ry])
        if not any(_circle_hits_rect(eye_xy, 0.3, b) for b in blocked):
            break
    else:
        raise ViewError(f"no free standing spot for a camera in scene {scene.scene_id}")
    target_xy = -eye_xy * rng.uniform(0.3, 1.0) + rng.uniform(-0.5, 0.5, size=2)
    eye = np.array([*eye_xy, rng.uniform(1.3, 1.7)])
    target = np.array([*target_xy, rng.uniform(0.3, 0.8)])
    return Camera(
        look_at(eye, target, float(rng.uniform(-3.0, 3.0))), float(rng.uniform(*fovy_range)), width, height
    )


def room_walkthrough(rng, scene: Scene, n_frames: int, width: int, height: int) -> list[Camera]:
    """Frames from a camera walking a loop through the room while looking across it (a room scan)."""
    rx, ry, _ = scene.room
    blocked = [f.footprint() for f in scene.furniture]
    fovy = float(rng.uniform(60.0, 75.0))
    sweep = float(rng.uniform(1.5, 2.0)) * math.pi * (1 if rng.random() < 0.5 else -1)
    start = float(rng.uniform(-math.pi, math.pi))
    for _ in range(50):
        ax, ay = rng.uniform(0.15, 0.35) * rx, rng.uniform(0.15, 0.35) * ry
        angles = start + sweep * np.linspace(0.0, 1.0, n_frames)
        path = np.stack([ax * np.cos(angles), ay * np.sin(angles)], 1)
        if not any(_circle_hits_rect(p, 0.25, b) for p in path for b in blocked):
            break
    else:
        raise ViewError(f"no free walking loop through scene {scene.scene_id}")
    height_m = float(rng.uniform(1.35, 1.65))
    cams = []
    for k, (a, p) in enumerate(zip(angles, path)):
        # Look across the room, panning a little so the view is not always through the centre.
        pan = 0.6 * math.sin(2 * math.pi * k / max(n_frames - 1, 1) + start)
        look = -np.array([math.cos(a + pan), math.sin(a + pan)])
        target = np.array([*(p + 2.5 * look), 0.5])
        cams.append(Camera(look_at([*p, height_m], target), fovy, width, height))
    return cams
