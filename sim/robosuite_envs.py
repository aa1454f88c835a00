"""robosuite environments behind the suite: the spatial tabletop task, and Lift/Stack with the same cameras.

All share one camera layout: `agentview` faces the robot from across the table (as LIBERO's does), so the whole
workspace is in view and unoccluded; the instructions' relations are the ones seen in this image (see
`sim.tasks`). `robot0_eye_in_hand` is the wrist camera that robosuite's Panda already carries.
"""

from contextlib import contextmanager

import numpy as np
import robosuite.macros
from robosuite.environments.manipulation.lift import Lift
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.environments.manipulation.stack import Stack
from robosuite.models.arenas import TableArena
from robosuite.models.tasks import ManipulationTask
from robosuite.utils.mjcf_utils import array_to_string, find_elements

from sim.objects import HALF_SIZES, build_object
from sim.palette import TABLE_RGBA
from sim.render import look_at_quat
from sim.tasks import TABLE_TOP, SpatialTask

AGENTVIEW_POS = (0.55, 0.0, 1.42)
AGENTVIEW_TARGET = (-0.07, 0.0, 0.80)
AGENTVIEW_FOVY = 40.0
TABLE_SIZE = (0.8, 0.8, 0.05)
# MuJoCo at 200 Hz (10 substeps per 20 Hz control step) instead of robosuite's 500 Hz: robosuite runs its OSC
# controller in Python at every substep, which is most of an env step's cost. The experts succeed as often and no
# episode went unstable at this rate (see README, "Simulation speed").
PHYSICS_DT = 0.005


@contextmanager
def physics_dt(dt: float = PHYSICS_DT):
    """robosuite reads its timestep from a module global while it builds an env (world XML, controllers, env)."""
    old = robosuite.macros.SIMULATION_TIMESTEP
    robosuite.macros.SIMULATION_TIMESTEP = dt
    try:
        yield
    finally:
        robosuite.macros.SIMULATION_TIMESTEP = old


def place_agentview(worldbody) -> None:
    """Aim the arena's `agentview` camera at the workspace from across the table."""
    cam = find_elements(root=worldbody, tags="camera", attribs={"name": "agentview"}, return_first=True)
    cam.set("pos", array_to_string(AGENTVIEW_POS))
    cam.set("quat", array_to_string(look_at_quat(AGENTVIEW_POS, AGENTVIEW_TARGET)))
    cam.set("fovy", str(AGENTVIEW_FOVY))


def recolor_table(worldbody) -> None:
    """A plain table of the shared palette (the data engine renders the same colour)."""
    for name in ("table_visual",):
        geom = find_elements(root=worldbody, tags="geom", attribs={"name": name}, return_first=True)
        if geom is not None:
            geom.attrib.pop("material", None)
            geom.set("rgba", array_to_string(TABLE_RGBA))


class SpatialTabletop(ManipulationEnv):
    """A Panda at a table with the task's objects; `layout` (set before each reset) places them."""

    def __init__(self, task: SpatialTask, **kwargs):
        self.task = task
        # robosuite resets once inside __init__; any valid layout will do until the wrapper sets the seeded one.
        self.layout: dict[str, tuple[float, float, float]] = task.sample_layout(np.random.default_rng(0))
        self.table_offset = np.array((0.0, 0.0, TABLE_TOP))
        super().__init__(robots="Panda", **kwargs)

    def _load_model(self):
        super()._load_model()
        robot = self.robots[0].robot_model
        robot.set_base_xpos(robot.base_xpos_offset["table"](TABLE_SIZE[0]))
        arena = TableArena(
            table_full_size=TABLE_SIZE, table_friction=(1.0, 5e-3, 1e-4), table_offset=self.table_offset
        )
        arena.set_origin([0, 0, 0])
        self.objects = {o.name: build_object(o) for o in self.task.objects}
        self.model = ManipulationTask(
            mujoco_arena=arena,
            mujoco_robots=[robot],
            mujoco_objects=list(self.objects.values()),
        )
        place_agentview(self.model.worldbody)
        recolor_table(self.model.worldbody)

    def _setup_references(self):
        super()._setup_references()
        self.body_ids = {n: self.sim.model.body_name2id(o.root_body) for n, o in self.objects.items()}

    def _reset_internal(self):
        super()._reset_internal()
        for name, (x, y, yaw) in self.layout.items():
            hz = HALF_SIZES[self.task.object(name).kind][2]
            quat = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]  # MuJoCo (w, x, y, z)
            pos = [x, y, TABLE_TOP + hz + 0.001]
            self.sim.data.set_joint_qpos(self.objects[name].joints[0], np.concatenate([pos, quat]))

    def body_pos(self, name: str) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.body_ids[name]])

    def is_grasping(self, name: str) -> bool:
        return bool(self._check_grasp(gripper=self.robots[0].gripper, object_geoms=self.objects[name]))

    def on_top_of(self, name: str, support: str) -> bool:
        """`name` rests on `support`: above its footprint, at resting height, and not held by the gripper."""
        p, s = self.body_pos(name), self.body_pos(support)
        s_half = HALF_SIZES[self.task.object(support).kind]
        o_half = HALF_SIZES[self.task.object(name).kind]
        inside = np.linalg.norm(p[:2] - s[:2]) < max(s_half[0], s_half[1]) - 0.01
        gap = p[2] - (s[2] + s_half[2]) - o_half[2]
        return bool(inside and -0.02 < gap < 0.02 and not self.is_grasping(name))

    def _check_success(self):
        return self.on_top_of(self.task.target, self.task.destination)

    def reward(self, action=None):
        return float(self._check_success())


class _SharedCameras:
    """Mixin for stock robosuite tasks: the suite's camera layout and table colour."""

    def _load_model(self):
        super()._load_model()
        place_agentview(self.model.worldbody)
        recolor_table(self.model.worldbody)


class LiftTask(_SharedCameras, Lift):
    def pick_body(self) -> str:
        return self.cube.root_body


class StackTask(_SharedCameras, Stack):
    def pick_body(self) -> str:
        return self.cubeA.root_body
