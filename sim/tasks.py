"""The task suite: spatial pick-and-place tasks in the spirit of LIBERO-Spatial, plus plain robosuite references.

In every spatial task the object to act on (or the place to put it) can only be told apart from look-alikes by
its spatial relation to landmarks, so a policy must read the scene's geometry, not just colours. Relations are
those seen in the third-person `agentview` image, the viewpoint spatial tuning trains on: the camera faces the
robot from across the table, so image-left is world -y (the robot's right), "behind" (farther from the camera)
is world -x (toward the robot) and "in front of" is +x. "Closest to the robot" means what it says.

A layout is sampled per seed by rejection: uniform positions with clearance, kept only when the task's predicate
holds, i.e. when the instruction picks out exactly one object. Same seed, same layout, on every machine.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sim.objects import ObjectSpec

# Table-frame workspace (table centre at the origin, top at TABLE_TOP in world z). The robot base sits at -x.
TABLE_TOP = 0.8
ROBOT_BASE_XY = np.array([-0.56, 0.0])
X_RANGE = (-0.24, 0.16)
Y_RANGE = (-0.25, 0.25)
CLEARANCE = 0.035  # gap between footprints, so the fingers fit around any graspable object

Layout = dict[str, tuple[float, float, float]]  # object name -> (x, y, yaw) in the table frame


@dataclass(frozen=True)
class SpatialTask:
    name: str
    instruction: str
    objects: tuple[ObjectSpec, ...]
    target: str  # the object to pick up
    destination: str  # the object to put it on
    valid: Callable[[dict[str, np.ndarray]], bool] = field(repr=False)
    # Objects placed relative to ones placed before them (in `objects` order): name -> proposal from (rng, placed).
    # Only raises the acceptance rate; `valid` alone decides what a correct layout is.
    propose: dict[str, Callable[[np.random.Generator, dict[str, np.ndarray]], np.ndarray]] = field(
        default_factory=dict, repr=False
    )
    max_steps: int = 220

    @property
    def suite(self) -> str:
        return "spatial"

    def object(self, name: str) -> ObjectSpec:
        return next(o for o in self.objects if o.name == name)

    def sample_layout(self, rng: np.random.Generator, max_tries: int = 20000) -> Layout:
        """Rejection-sample positions and yaws until the task's predicate holds."""
        radii = {o.name: o.footprint_radius for o in self.objects}
        for _ in range(max_tries):
            pos: dict[str, np.ndarray] = {}
            for o in self.objects:
                r = radii[o.name]
                for _ in range(50):
                    if o.name in self.propose:
                        xy = self.propose[o.name](rng, pos)
                        inside = (
                            X_RANGE[0] + r <= xy[0] <= X_RANGE[1] - r
                            and Y_RANGE[0] + r <= xy[1] <= Y_RANGE[1] - r
                        )
                        if not inside:
                            continue
                    else:
                        xy = np.array(
                            [
                                rng.uniform(X_RANGE[0] + r, X_RANGE[1] - r),
                                rng.uniform(Y_RANGE[0] + r, Y_RANGE[1] - r),
                            ]
                        )
                    if all(np.linalg.norm(xy - p) >= r + radii[n] + CLEARANCE for n, p in pos.items()):
                        pos[o.name] = xy
                        break
                else:
                    break
            if len(pos) == len(self.objects) and self.valid(pos):
                yaws = rng.uniform(-np.pi / 4, np.pi / 4, size=len(self.objects))
                return {
                    o.name: (float(pos[o.name][0]), float(pos[o.name][1]), float(y))
                    for o, y in zip(self.objects, yaws)
                }
        raise RuntimeError(
            f"task {self.name}: no valid layout in {max_tries} tries; the predicate is too tight"
        )


@dataclass(frozen=True)
class PlainTask:
    """A stock robosuite task (Lift, Stack) behind the same observation contract: a sanity reference."""

    name: str
    instruction: str
    robosuite_env: str
    max_steps: int = 150

    @property
    def suite(self) -> str:
        return "plain"


def _dist_to_robot(p: np.ndarray) -> float:
    return float(np.linalg.norm(p - ROBOT_BASE_XY))


def _left_of(a, b, margin=0.07):
    """a is left of b in the agentview image (world -y)."""
    return a[1] < b[1] - margin


def _side_by_side(a, b, dx=0.09):
    return abs(a[0] - b[0]) < dx


def _in_line(a, b, dy=0.06):
    return abs(a[1] - b[1]) < dy


def _seg_dist(p, a, b) -> tuple[float, float]:
    """Distance from p to segment ab, and the position along it in [0, 1]."""
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0, 1))
    return float(np.linalg.norm(p - (a + t * ab))), t


def _offset(anchor: str, dx: tuple[float, float], dy: tuple[float, float]):
    """Propose a position at a random offset from an already placed object."""
    return lambda rng, p: p[anchor] + np.array([rng.uniform(*dx), rng.uniform(*dy)])


def obj(name: str, kind: str, color: str) -> ObjectSpec:
    return ObjectSpec(name, kind, color)


_COMMON = (obj("plate", "plate", "white"), obj("distractor", "cylinder", "yellow"))


def _pick_relative_to_bowl(side: str) -> SpatialTask:
    def valid(p):
        t, look, bowl = p["target"], p["lookalike"], p["bowl"]
        left, right = (t, look) if side == "left" else (look, t)
        return (
            _left_of(left, bowl)
            and _left_of(bowl, right)
            and _side_by_side(t, bowl)
            and _side_by_side(look, bowl)
        )

    return SpatialTask(
        name=f"pick_{side}_of_bowl",
        instruction=f"pick up the red cube {side} of the bowl and place it on the plate",
        objects=(
            obj("bowl", "bowl", "blue"),
            obj("target", "cube", "red"),
            obj("lookalike", "cube", "red"),
            *_COMMON,
        ),
        target="target",
        destination="plate",
        valid=valid,
        propose={
            "target": _offset("bowl", (-0.08, 0.08), (-0.17, -0.11) if side == "left" else (0.11, 0.17)),
            "lookalike": _offset("bowl", (-0.08, 0.08), (0.11, 0.17) if side == "left" else (-0.17, -0.11)),
        },
    )


def _pick_by_robot_distance(which: str) -> SpatialTask:
    def valid(p):
        d = {n: _dist_to_robot(p[n]) for n in ("target", "lookalike", "lookalike2")}
        others = [d["lookalike"], d["lookalike2"]]
        return d["target"] + 0.06 < min(others) if which == "closest" else d["target"] > max(others) + 0.06

    return SpatialTask(
        name=f"pick_{which}",
        instruction=f"pick up the red cube {which} to the robot and place it on the plate".replace(
            "farthest to", "farthest from"
        ),
        objects=(
            obj("target", "cube", "red"),
            obj("lookalike", "cube", "red"),
            obj("lookalike2", "cube", "red"),
            obj("plate", "plate", "white"),
            obj("distractor", "block", "green"),
        ),
        target="target",
        destination="plate",
        valid=valid,
    )


def _pick_between_mugs() -> SpatialTask:
    def valid(p):
        a, b = p["mug1"], p["mug2"]
        span = np.linalg.norm(a - b)
        dt, tt = _seg_dist(p["target"], a, b)
        dl, _ = _seg_dist(p["lookalike"], a, b)
        return 0.2 < span < 0.3 and dt < 0.02 and 0.3 < tt < 0.7 and dl > 0.09

    return SpatialTask(
        name="pick_between_mugs",
        instruction="pick up the red cube between the two mugs and place it on the plate",
        objects=(
            obj("mug1", "mug", "white"),
            obj("mug2", "mug", "white"),
            obj("target", "cube", "red"),
            obj("lookalike", "cube", "red"),
            obj("plate", "plate", "white"),
        ),
        target="target",
        destination="plate",
        valid=valid,
        propose={
            "mug2": lambda rng, p: (
                p["mug1"] + 0.25 * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
            ),
            "target": lambda rng, p: (p["mug1"] + p["mug2"]) / 2 + rng.uniform(-0.012, 0.012, size=2),
        },
    )


def _pick_relative_to_box(where: str) -> SpatialTask:
    def valid(p):
        t, look, box = p["target"], p["lookalike"], p["box"]
        behind, front = (t, look) if where == "behind" else (look, t)  # behind = farther from the camera = -x
        return (
            behind[0] < box[0] - 0.09
            and front[0] > box[0] + 0.09
            and _in_line(t, box)
            and _in_line(look, box)
        )

    phrase = "behind" if where == "behind" else "in front of"
    return SpatialTask(
        name=f"pick_{phrase.replace(' ', '_')}_box",
        instruction=f"pick up the red cube {phrase} the box and place it on the plate",
        objects=(
            obj("box", "box", "brown"),
            obj("target", "cube", "red"),
            obj("lookalike", "cube", "red"),
            *_COMMON,
        ),
        target="target",
        destination="plate",
        valid=valid,
        propose={
            "target": _offset(
                "box", (-0.165, -0.135) if where == "behind" else (0.135, 0.165), (-0.04, 0.04)
            ),
            "lookalike": _offset(
                "box", (0.135, 0.165) if where == "behind" else (-0.165, -0.135), (-0.04, 0.04)
            ),
        },
    )


def _pick_next_to_ball() -> SpatialTask:
    def valid(p):
        dt = np.linalg.norm(p["target"] - p["ball"])
        dl = np.linalg.norm(p["lookalike"] - p["ball"])
        return dt < 0.12 and dl > dt + 0.12

    return SpatialTask(
        name="pick_next_to_ball",
        instruction="pick up the red cube next to the green ball and place it on the plate",
        objects=(
            obj("ball", "ball", "green"),
            obj("target", "cube", "red"),
            obj("lookalike", "cube", "red"),
            *_COMMON,
        ),
        target="target",
        destination="plate",
        valid=valid,
        propose={
            "target": lambda rng, p: p["ball"] + 0.1 * np.array([np.cos(a := rng.uniform(0, 6.3)), np.sin(a)])
        },
    )


def _place_on_plate_by_bowl(side: str) -> SpatialTask:
    def valid(p):
        chosen, other, bowl = p["plate"], p["other_plate"], p["bowl"]
        left, right = (chosen, other) if side == "left" else (other, chosen)
        return _left_of(left, bowl) and _left_of(bowl, right)

    return SpatialTask(
        name=f"place_on_{side}_plate",
        instruction=f"pick up the red cube and place it on the plate {side} of the bowl",
        objects=(
            obj("bowl", "bowl", "blue"),
            obj("plate", "plate", "white"),
            obj("other_plate", "plate", "white"),
            obj("target", "cube", "red"),
            obj("distractor", "cube", "green"),
        ),
        target="target",
        destination="plate",
        valid=valid,
        propose={
            "plate": _offset("bowl", (-0.1, 0.1), (-0.22, -0.15) if side == "left" else (0.15, 0.22)),
            "other_plate": _offset("bowl", (-0.1, 0.1), (0.15, 0.22) if side == "left" else (-0.22, -0.15)),
        },
    )


def _place_on_far_plate() -> SpatialTask:
    def valid(p):
        return _dist_to_robot(p["plate"]) > _dist_to_robot(p["other_plate"]) + 0.1

    return SpatialTask(
        name="place_on_far_plate",
        instruction="pick up the red cube and place it on the plate farthest from the robot",
        objects=(
            obj("target", "cube", "red"),
            obj("plate", "plate", "white"),
            obj("other_plate", "plate", "white"),
            obj("distractor", "cube", "blue"),
            obj("distractor2", "cylinder", "yellow"),
        ),
        target="target",
        destination="plate",
        valid=valid,
    )


SPATIAL_TASKS: dict[str, SpatialTask] = {
    t.name: t
    for t in (
        _pick_relative_to_bowl("left"),
        _pick_relative_to_bowl("right"),
        _pick_by_robot_distance("closest"),
        _pick_by_robot_distance("farthest"),
        _pick_between_mugs(),
        _pick_relative_to_box("behind"),
        _pick_relative_to_box("front"),
        _pick_next_to_ball(),
        _place_on_plate_by_bowl("left"),
        _place_on_far_plate(),
    )
}

PLAIN_TASKS: dict[str, PlainTask] = {
    "lift": PlainTask("lift", "lift the red cube", "Lift"),
    "stack": PlainTask("stack", "stack the red cube on the green cube", "Stack", max_steps=200),
}

TASKS: dict[str, SpatialTask | PlainTask] = {**SPATIAL_TASKS, **PLAIN_TASKS}
SUITES: dict[str, list[str]] = {
    "spatial": list(SPATIAL_TASKS),
    "plain": list(PLAIN_TASKS),
    "all": list(TASKS),
}


def get_task(name: str) -> SpatialTask | PlainTask:
    if name not in TASKS:
        raise KeyError(
            f"unknown task {name!r}; valid tasks: {', '.join(TASKS)} (suites: {', '.join(SUITES)})"
        )
    return TASKS[name]


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """'all' / 'spatial' / 'plain' / 'a,b' / ['a', 'b'] -> task names, with a clear error on unknown names."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for n in (n.strip() for n in names):
        for t in SUITES.get(n, [n]):
            get_task(t)
            if t not in out:
                out.append(t)
    if not out:
        raise ValueError(f"no tasks selected by {spec!r}")
    return out
