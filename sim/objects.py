"""Tabletop objects built from MuJoCo primitives.

Primitives instead of meshes: they render an order of magnitude faster on a software renderer, their 3D boxes are
exact, and the spatial data engine (`vst/data`) builds the same shapes, so both sides see one visual world.
"""

from dataclasses import dataclass

import numpy as np

from sim.palette import COLORS

# Half-extents (x, y, z) in metres of each kind's bounding box, as placed upright.
HALF_SIZES: dict[str, tuple[float, float, float]] = {
    "cube": (0.02, 0.02, 0.02),
    "block": (0.02, 0.035, 0.02),
    "ball": (0.025, 0.025, 0.025),
    "cylinder": (0.022, 0.022, 0.035),
    "mug": (0.038, 0.03, 0.04),
    "bowl": (0.055, 0.055, 0.025),
    "plate": (0.065, 0.065, 0.006),
    "box": (0.035, 0.06, 0.04),
}

ROUND = {"ball", "cylinder", "plate", "bowl"}

# Kinds that stay put as landmarks: heavy, so a brushing gripper does not move what the instruction refers to.
HEAVY = {"mug", "bowl", "plate", "box"}


@dataclass(frozen=True)
class ObjectSpec:
    """One object slot of a task: its kind and colour are fixed per task, its pose is sampled per seed."""

    name: str
    kind: str
    color: str

    @property
    def half_size(self) -> np.ndarray:
        return np.array(HALF_SIZES[self.kind])

    @property
    def footprint_radius(self) -> float:
        """Radius of the circle that covers the object seen from above (for clearance when placing)."""
        hx, hy, _ = HALF_SIZES[self.kind]
        return max(hx, hy) if self.kind in ROUND else float(np.hypot(hx, hy))

    @property
    def label(self) -> str:
        return f"{self.color} {self.kind}"


def _quat_z(angle: float) -> list[float]:
    return [float(np.cos(angle / 2)), 0.0, 0.0, float(np.sin(angle / 2))]


def _ring(radius: float, half_h: float, z: float, n: int, thickness: float):
    """Boxes arranged on a circle: the wall of a bowl."""
    half_w = radius * np.sin(np.pi / n) * 1.05
    geoms = []
    for i in range(n):
        a = 2 * np.pi * i / n
        geoms.append(
            ("box", [thickness / 2, half_w, half_h], [radius * np.cos(a), radius * np.sin(a), z], _quat_z(a))
        )
    return geoms


def _geoms(kind: str):
    """(type, size, centre, quat) per geom, centres relative to the object's bounding-box centre."""
    hx, hy, hz = HALF_SIZES[kind]
    q0 = [1.0, 0.0, 0.0, 0.0]
    if kind in ("cube", "block", "box"):
        return [("box", [hx, hy, hz], [0, 0, 0], q0)]
    if kind == "ball":
        return [("sphere", [hx], [0, 0, 0], q0)]
    if kind == "cylinder":
        return [("cylinder", [hx, hz], [0, 0, 0], q0)]
    if kind == "plate":
        return [("cylinder", [hx, hz], [0, 0, 0], q0)]
    if kind == "mug":
        r = hy
        body = [("cylinder", [r, hz], [-(hx - r), 0, 0], q0)]
        handle_x = -(hx - r) + r + 0.006
        handle = [
            ("box", [0.006, 0.004, 0.018], [handle_x + 0.002, 0, 0], q0),
            ("box", [0.005, 0.004, 0.003], [handle_x - 0.003, 0, 0.016], q0),
            ("box", [0.005, 0.004, 0.003], [handle_x - 0.003, 0, -0.016], q0),
        ]
        return body + handle
    if kind == "bowl":
        base = [("cylinder", [hx * 0.6, 0.004], [0, 0, -hz + 0.004], q0)]
        return base + _ring(hx - 0.004, hz, 0.0, 12, 0.008)
    raise ValueError(f"unknown object kind {kind!r}; known: {sorted(HALF_SIZES)}")


def build_object(spec: ObjectSpec):
    """A free-floating robosuite object for `spec`, its frame at the bounding-box centre."""
    from robosuite.models.objects import CompositeObject

    if spec.color not in COLORS:
        raise ValueError(f"unknown colour {spec.color!r}; known: {sorted(COLORS)}")
    geoms = _geoms(spec.kind)
    hx, hy, hz = HALF_SIZES[spec.kind]
    density = 2000.0 if spec.kind in HEAVY else 400.0
    return CompositeObject(
        name=spec.name,
        total_size=[hx, hy, hz],
        geom_types=[g[0] for g in geoms],
        geom_sizes=[g[1] for g in geoms],
        geom_locations=[g[2] for g in geoms],
        geom_quats=[g[3] for g in geoms],
        geom_frictions=[[1.0, 0.005, 0.0001]] * len(geoms),
        rgba=list(COLORS[spec.color]),
        density=density,
        locations_relative_to_center=True,
        solref=(0.02, 1.0),
        solimp=(0.9, 0.95, 0.001),
    )
