"""Scripted experts: closed-loop pick-and-place from privileged state (true object poses).

A phase machine over waypoints, each tracked with a proportional controller in the OSC_POSE delta action space.
Being closed-loop, it recovers from perturbed execution (sim-record's `noise`, so demos contain recoveries while
their labels stay the expert's clean actions) and re-tries a grasp that slipped.
"""

import numpy as np
from scipy.spatial.transform import Rotation

from sim.env import GRIPPER_DOWN as DOWN
from sim.objects import HALF_SIZES
from sim.tasks import TABLE_TOP, PlainTask, SpatialTask

POS_SCALE = 0.05  # metres per unit action (robosuite OSC_POSE output_max)
ROT_SCALE = 0.5  # radians per unit action
HOVER = 0.10  # above the object's top before descending
CARRY_Z = TABLE_TOP + 0.17
OPEN, CLOSED = -1.0, 1.0
CARRY_SPEED = 0.5  # of the max 5 cm/step: faster and a cube held by its edges swings out of the fingers


class PickPlaceExpert:
    """Picks body `pick` and puts it on body `place` (or just lifts it when `place` is None)."""

    def __init__(
        self,
        rs_env,
        pick: str,
        pick_half: np.ndarray,
        place: str | None,
        place_top: float,
        obstacles: dict[str, tuple[float, float]] | None = None,
    ):
        self.rs = rs_env
        # Other bodies (name -> footprint radius, height) the hand must not land on when it goes down to grasp.
        self.obstacles = {rs_env.sim.model.body_name2id(n): rh for n, rh in (obstacles or {}).items()}
        self.pick_id = rs_env.sim.model.body_name2id(pick)
        self.pick_half = np.asarray(pick_half)
        self.place_id = None if place is None else rs_env.sim.model.body_name2id(place)
        self.place_top = place_top  # height of the support's top above its body centre
        self.site = rs_env.robots[0].eef_site_id["right"]
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self.timer = 0
        self.grasp_yaw = 0.0

    # ------------------------------------------------------------------------------------------ geometry
    def _eef(self) -> tuple[np.ndarray, Rotation]:
        d = self.rs.sim.data
        return np.array(d.site_xpos[self.site]), Rotation.from_matrix(
            np.array(d.site_xmat[self.site]).reshape(3, 3)
        )

    def _body(self, body_id: int) -> tuple[np.ndarray, float]:
        d = self.rs.sim.data
        w, x, y, z = d.body_xquat[body_id]
        yaw = Rotation.from_quat([x, y, z, w]).as_euler("xyz")[2]
        return np.array(d.body_xpos[body_id]), float(yaw)

    def _grasp_yaw(self, obj: np.ndarray, obj_yaw: float, eef_rot: Rotation) -> float:
        """A yaw aligned with the object's faces (90-degree symmetry) whose hand footprint is free of obstacles,
        nearest to the gripper's current yaw.

        The Panda hand spans ~0.2 m along its finger axis (world y at yaw 0) about 5 cm above the fingertips:
        grasping a cube between two mugs along the line through them would put the hand on the mugs. Objects
        lower than that only meet the fingers (+-5 cm).
        """
        current = (eef_rot * DOWN.inv()).as_euler("xyz")[2]
        candidates = obj_yaw + np.arange(-2, 3) * np.pi / 2
        turn = np.abs(np.angle(np.exp(1j * (candidates - current))))
        clash = np.zeros(len(candidates))
        for body, (radius, height) in self.obstacles.items():
            rel = np.asarray(self.rs.sim.data.body_xpos[body])[:2] - obj[:2]
            reach = 0.11 if height > 2 * self.pick_half[2] + 0.01 else 0.055
            for i, yaw in enumerate(candidates):
                axis = np.array([-np.sin(yaw), np.cos(yaw)])
                along, across = abs(rel @ axis), abs(rel[0] * axis[1] - rel[1] * axis[0])
                clash[i] += max(0.0, reach + radius - along) * max(0.0, 0.045 + radius - across)
        return float(candidates[np.lexsort((turn, np.round(clash, 5)))[0]])

    def _toward(
        self, goal_pos: np.ndarray, goal_yaw: float, grip: float, gain: float = 1.0, vmax: float = 1.0
    ) -> np.ndarray:
        """P-control toward a pose; translation capped in norm (not per axis) so paths stay straight."""
        pos, rot = self._eef()
        goal_rot = Rotation.from_euler("z", goal_yaw) * DOWN
        rot_err = (goal_rot * rot.inv()).as_rotvec()
        a = np.zeros(7)
        move = gain * (goal_pos - pos) / POS_SCALE
        norm = np.linalg.norm(move)
        a[:3] = move * (vmax / norm) if norm > vmax else move
        a[3:6] = np.clip(rot_err / ROT_SCALE, -1, 1)
        a[6] = grip
        return a

    def _holding(self) -> bool:
        pos, _ = self._body(self.pick_id)
        eef, _ = self._eef()
        fingers = self.rs.sim.data.qpos[self.rs.robots[0]._ref_gripper_joint_pos_indexes["right"]]
        closed_on_object = (
            abs(fingers[0] - fingers[1]) > 0.01
        )  # fingers stopped by the object, not fully shut
        return bool(np.linalg.norm(pos - eef) < 0.04 and closed_on_object)

    # ------------------------------------------------------------------------------------------- policy
    def act(self) -> np.ndarray:
        return np.clip(self._phase_action(), -1.0, 1.0)

    def _phase_action(self) -> np.ndarray:
        obj, obj_yaw = self._body(self.pick_id)
        eef, eef_rot = self._eef()
        self.timer += 1
        top = obj[2] + self.pick_half[2]

        if self.phase == "approach":
            self.grasp_yaw = self._grasp_yaw(obj, obj_yaw, eef_rot)
            goal = np.array([obj[0], obj[1], top + HOVER])
            yaw_err = abs((Rotation.from_euler("z", self.grasp_yaw) * DOWN * eef_rot.inv()).magnitude())
            if np.linalg.norm(goal - eef) < 0.02 and yaw_err < 0.08:
                self._go("descend")
            return self._toward(goal, self.grasp_yaw, OPEN, gain=1.5)

        if self.phase == "descend":
            goal = np.array([obj[0], obj[1], obj[2] - 0.005])
            if abs(eef[2] - goal[2]) < 0.008 or self.timer > 40:
                self._go("grasp")
            if np.linalg.norm(goal[:2] - eef[:2]) > 0.03:  # drifted off (noise, a nudge): hover again
                self._go("approach")
            return self._toward(goal, self.grasp_yaw, OPEN)

        if self.phase == "grasp":
            if self.timer > 8:
                self._go("lift")
            return self._toward(eef, self.grasp_yaw, CLOSED, gain=0.0)

        if self.phase == "lift":
            goal = np.array([eef[0], eef[1], CARRY_Z])
            if not self._holding() and self.timer > 4:
                self._go("approach")  # the grasp slipped: open and re-try
                return self._toward(eef + [0, 0, 0.05], self.grasp_yaw, OPEN)
            if eef[2] > CARRY_Z - 0.02:
                self._go("carry" if self.place_id is not None else "hold")
            return self._toward(goal, self.grasp_yaw, CLOSED, vmax=CARRY_SPEED)

        if self.phase == "hold":
            return self._toward(np.array([eef[0], eef[1], CARRY_Z]), self.grasp_yaw, CLOSED)

        dest, _ = self._body(self.place_id)
        release_z = dest[2] + self.place_top + self.pick_half[2] + 0.012
        if not self._holding() and self.phase in ("carry", "lower"):
            self._go("approach")
            return self._toward(eef + [0, 0, 0.05], self.grasp_yaw, OPEN)

        if self.phase == "carry":
            goal = np.array([dest[0], dest[1], CARRY_Z])
            if np.linalg.norm(goal[:2] - eef[:2]) < 0.012:
                self._go("lower")
            return self._toward(goal, self.grasp_yaw, CLOSED, gain=1.5, vmax=CARRY_SPEED)

        if self.phase == "lower":
            goal = np.array([dest[0], dest[1], release_z])
            if eef[2] < release_z + 0.006 or self.timer > 40:
                self._go("release")
            return self._toward(goal, self.grasp_yaw, CLOSED)

        if self.phase == "release":
            if self.timer > 6:
                self._go("retreat")
            return self._toward(eef, self.grasp_yaw, OPEN, gain=0.0)

        # retreat: straight up, gripper open, then hold still
        return self._toward(np.array([eef[0], eef[1], CARRY_Z]), self.grasp_yaw, OPEN)

    def _go(self, phase: str) -> None:
        self.phase, self.timer = phase, 0


def make_expert(rs_env, task: SpatialTask | PlainTask) -> PickPlaceExpert:
    if isinstance(task, SpatialTask):
        pick = rs_env.objects[task.target].root_body
        place = rs_env.objects[task.destination].root_body
        obstacles = {
            rs_env.objects[o.name].root_body: (o.footprint_radius, 2 * o.half_size[2])
            for o in task.objects
            if o.name != task.target
        }
        return PickPlaceExpert(
            rs_env,
            pick,
            np.array(HALF_SIZES[task.object(task.target).kind]),
            place,
            HALF_SIZES[task.object(task.destination).kind][2],
            obstacles,
        )
    if task.robosuite_env == "Lift":
        half = np.array(rs_env.cube.size)
        return PickPlaceExpert(rs_env, rs_env.cube.root_body, half, None, 0.0)
    if task.robosuite_env == "Stack":
        return PickPlaceExpert(
            rs_env,
            rs_env.cubeA.root_body,
            np.array(rs_env.cubeA.size),
            rs_env.cubeB.root_body,
            rs_env.cubeB.size[2],
        )
    raise ValueError(f"no expert for task {task.name!r}")
