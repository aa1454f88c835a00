"""The gymnasium environment every part of the project talks to (recording, evaluation, lerobot-eval).

Contract (what `lerobot-eval` expects): observation `{"pixels": {"agentview", "wrist"}: HxWx3 uint8, upright,
"agent_pos": float32 (8,) = eef position (3), the eef's rotation away from the hand-down pose as axis-angle (3),
finger positions (2)}`, a 7-D Box action (OSC_POSE deltas dx dy dz droll dpitch dyaw in [-1, 1] and the gripper,
-1 open / +1 closed, as in LIBERO),
`info["is_success"]`, `task_description`, `render()`. Episodes end (`terminated`) on success; `truncated` at the
task's step budget. `reset(seed=s)` reproduces the same initial state on any machine.
"""

import logging

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from scipy.spatial.transform import Rotation

from sim.render import CameraRenderer, simplify_robot_visuals
from sim.tasks import PlainTask, SpatialTask, get_task

log = logging.getLogger(__name__)

CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
STATE_DIM = 8
ACTION_DIM = 7
CONTROL_FREQ = 20
MAX_QVEL = 50.0  # rad/s or m/s: beyond this the simulation has blown up


class UnstableSimulation(RuntimeError):
    pass


# The hand pointing down, fingers opening along world y: the orientation robosuite's Panda starts in.
GRIPPER_DOWN = Rotation.from_matrix([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def eef_rotation(site_xmat: np.ndarray) -> np.ndarray:
    """Axis-angle (world frame) of the hand's rotation away from GRIPPER_DOWN.

    Not the absolute axis-angle (LIBERO's): a downward hand sits at a half turn, where that vector flips sign
    (+pi <-> -pi) with any small tilt, which turns the state into noise for a learned policy. Relative to the
    downward hand it is ~0 and continuous over the whole workspace."""
    return (Rotation.from_matrix(np.asarray(site_xmat).reshape(3, 3)) * GRIPPER_DOWN.inv()).as_rotvec()


def _robosuite_kwargs(max_steps: int) -> dict:
    import robosuite

    return dict(
        controller_configs=robosuite.load_composite_controller_config(controller="BASIC", robot="Panda"),
        has_renderer=False,
        has_offscreen_renderer=False,
        use_camera_obs=False,
        control_freq=CONTROL_FREQ,
        horizon=max_steps + 1,  # the wrapper truncates; robosuite must never refuse a step first
        ignore_done=True,
        hard_reset=False,  # keep one compiled model: a reset only rewrites the state
        initialization_noise={"magnitude": 0.02, "type": "gaussian"},
        seed=0,  # robosuite samples Lift/Stack cube sizes once, at construction: make them the same everywhere
    )


class SimEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(
        self,
        task: str,
        image_size: int = 128,
        render_size: int | None = None,
        expert: bool = False,
        max_steps: int | None = None,
        render_mode: str = "rgb_array",
        physics_dt: float | None = None,
    ):
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(
                f"max_steps={max_steps!r}: the episode budget must be a positive number of steps"
            )
        self.image_size = image_size
        self.render_size = render_size or image_size
        self.render_mode = render_mode
        self.with_expert = expert
        self._max_steps_override = max_steps
        self.physics_dt = (
            physics_dt  # None: the suite's PHYSICS_DT (sim/robosuite_envs.py); robosuite's own is 0.002
        )
        self._load_task(task)

        image = spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        obs_spaces = {
            "pixels": spaces.Dict({k: image for k in CAMERAS}),
            "agent_pos": spaces.Box(-np.inf, np.inf, (STATE_DIM,), dtype=np.float32),
        }
        if expert:
            obs_spaces["expert_action"] = spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)
        self._steps = 0
        self._ended: tuple | None = None
        self._last_frames: dict[str, np.ndarray] | None = None
        self.seed_used: int | None = None

    def _load_task(self, task: str) -> None:
        """Build the robosuite env, renderers and expert of `task` (also to switch a live env to another task)."""
        self.task_spec: SpatialTask | PlainTask = get_task(task)
        self.task = task  # lerobot-eval reads `task` and `task_description` from every sub-env
        self.task_description = self.task_spec.instruction
        self.max_steps = self._max_steps_override or self.task_spec.max_steps
        self._max_episode_steps = self.max_steps
        self._rs = self._make_robosuite_env()
        self._model: mujoco.MjModel = self._rs.sim.model._model
        self._data: mujoco.MjData = self._rs.sim.data._data
        simplify_robot_visuals(self._model)
        size, video = self.image_size, self.render_size
        self._renderer = CameraRenderer(self._model, size, size, tuple(CAMERAS.values()))
        self._video_renderer = (
            self._renderer
            if video == size
            else CameraRenderer(self._model, video, video, (CAMERAS["agentview"],))
        )
        self._expert = None
        if self.with_expert:
            from sim.experts import make_expert

            self._expert = make_expert(self._rs, self.task_spec)

    def _make_robosuite_env(self):
        from sim.robosuite_envs import PHYSICS_DT, LiftTask, SpatialTabletop, StackTask, physics_dt

        kwargs = _robosuite_kwargs(self.max_steps)
        with physics_dt(self.physics_dt or PHYSICS_DT):
            if isinstance(self.task_spec, SpatialTask):
                return SpatialTabletop(self.task_spec, **kwargs)
            cls = {"Lift": LiftTask, "Stack": StackTask}[self.task_spec.robosuite_env]
            return cls(robots="Panda", **kwargs)

    # ----------------------------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """`options={"task": name}` switches this env to another task first: worker processes are reused."""
        super().reset(seed=seed)
        if options and options.get("task", self.task) != self.task:
            self.close()
            self._load_task(options["task"])
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        self.seed_used = seed
        # Two independent streams: the object layout, and robosuite's own (robot joint noise, Lift/Stack cubes).
        # robosuite's samplers hold a reference to env.rng, so it is reseeded in place.
        self._rs.rng.bit_generator.state = np.random.default_rng([seed, 1]).bit_generator.state
        if isinstance(self.task_spec, SpatialTask):
            self._rs.layout = self.task_spec.sample_layout(np.random.default_rng([seed, 0]))
        obs = self._rs.reset()
        self._steps = 0
        self._initial_obj = self._object_heights()
        self._lifted: set[str] = set()
        self._lift_order: list[str] = []
        self._ended: tuple | None = None
        if self._expert is not None:
            self._expert.reset()
        return self._observation(obs), self._info(success=False)

    def step(self, action):
        action = self._check_action(action)
        if self._ended is not None:
            # A vector env keeps stepping sub-envs whose episode is over until the slowest one ends: answer
            # from the cache instead of simulating (what LeRobot's FreezeAfterEpisodeEnd does for other envs).
            return self._ended
        self._steps += 1
        try:
            obs, _, _, _ = self._rs.step(action)
            self._check_stable()
        except UnstableSimulation as e:
            log.warning("task %s seed %s: %s", self.task, self.seed_used, e)
            info = self._info(success=False)
            info["failure_reason"] = f"unstable: {e}"
            self._ended = (self._blank_observation(), 0.0, True, False, info)
            return self._ended
        self._track_lifts()
        success = bool(self._rs._check_success())
        if (
            success and self._target() not in self._lifted
        ):  # robosuite's Lift succeeds at 2 cm, before our 3 cm
            self._lifted.add(self._target())
            self._lift_order.append(self._target())
        terminated = success
        truncated = not success and self._steps >= self.max_steps
        info = self._info(success)
        if truncated:
            info["failure_reason"] = self.failure_reason()
        out = (self._observation(obs), float(success), terminated, truncated, info)
        if terminated or truncated:
            self._ended = out
        return out

    def render(self):
        if self._video_renderer is self._renderer and self._last_frames is not None:
            return self._last_frames["agentview"]
        return self._video_renderer.render(self._data)[CAMERAS["agentview"]]

    def close(self):
        self._renderer.close()
        if self._video_renderer is not self._renderer:
            self._video_renderer.close()
        self._rs.close()

    # -------------------------------------------------------------------------------------------- internals
    def _check_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACTION_DIM,):
            raise ValueError(
                f"action must have shape ({ACTION_DIM},) = (dx, dy, dz, droll, dpitch, dyaw, gripper), got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a.tolist()}")
        return np.clip(a, -1.0, 1.0)

    def _check_stable(self) -> None:
        d = self._data
        if not (np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))):
            raise UnstableSimulation("non-finite state")
        if np.abs(d.qvel).max() > MAX_QVEL:
            raise UnstableSimulation(f"velocity {np.abs(d.qvel).max():.1f} beyond {MAX_QVEL}")
        if d.warning[mujoco.mjtWarning.mjWARN_BADQACC].number > 0:
            raise UnstableSimulation("MuJoCo reported bad accelerations (simulation reset internally)")

    def _state(self, obs: dict) -> np.ndarray:
        site = self._rs.robots[0].eef_site_id["right"]
        rotation = eef_rotation(self._rs.sim.data.site_xmat[site])
        return np.concatenate([obs["robot0_eef_pos"], rotation, obs["robot0_gripper_qpos"]]).astype(
            np.float32
        )

    def _observation(self, obs: dict) -> dict:
        by_camera = self._renderer.render(self._data)
        frames = {k: by_camera[cam] for k, cam in CAMERAS.items()}
        self._last_frames = frames
        out = {"pixels": frames, "agent_pos": self._state(obs)}
        if self._expert is not None:
            out["expert_action"] = self._expert.act().astype(np.float32)
        return out

    def _blank_observation(self) -> dict:
        blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        out = {"pixels": {k: blank for k in CAMERAS}, "agent_pos": np.zeros(STATE_DIM, np.float32)}
        if self._expert is not None:
            out["expert_action"] = np.zeros(ACTION_DIM, np.float32)
        return out

    def _info(self, success: bool) -> dict:
        return {
            "is_success": success,
            "task": self.task,
            "seed": self.seed_used,
            "steps": self._steps,
            "picked": self.picked(),
            "picked_lookalike": self.picked_lookalike(),
        }

    def _target(self) -> str:
        if isinstance(self.task_spec, SpatialTask):
            return self.task_spec.target
        return "cube" if self.task_spec.robosuite_env == "Lift" else "cubeA"

    def picked(self) -> str:
        """The first object lifted 3 cm: 'target', 'wrong' or 'none'. The spatial choice, apart from whether
        the place that follows succeeds: among lookalikes, picking the right one is what the words decide."""
        if not self._lift_order:
            return "none"
        return "target" if self._lift_order[0] == self._target() else "wrong"

    def picked_lookalike(self) -> bool:
        """Whether the first object lifted looks like the target (same kind and colour): the confusion only the
        spatial words can prevent, told apart from knocking a bowl or a plate up on the way."""
        if not self._lift_order or not isinstance(self.task_spec, SpatialTask):
            return False
        t = self.task_spec
        first, target = t.object(self._lift_order[0]), t.object(t.target)
        return first.name != target.name and (first.kind, first.color) == (target.kind, target.color)

    def _object_bodies(self) -> dict[str, int]:
        rs = self._rs
        if isinstance(self.task_spec, SpatialTask):
            return rs.body_ids
        names = {"Lift": ["cube"], "Stack": ["cubeA", "cubeB"]}[self.task_spec.robosuite_env]
        return {n: rs.sim.model.body_name2id(getattr(rs, n).root_body) for n in names}

    def _object_heights(self) -> dict[str, float]:
        return {n: float(self._data.xpos[b][2]) for n, b in self._object_bodies().items()}

    def _track_lifts(self) -> None:
        for n, z in self._object_heights().items():
            if z > self._initial_obj[n] + 0.03 and n not in self._lifted:
                self._lifted.add(n)
                self._lift_order.append(n)

    def failure_reason(self) -> str:
        """Why an episode that ran out of steps failed, in words a researcher can aggregate."""
        if not isinstance(self.task_spec, SpatialTask):
            return "target_not_lifted" if self._target() not in self._lifted else "timeout"
        rs, t = self._rs, self.task_spec
        wrong = [n for n in self._lifted if n != t.target]
        if wrong:
            return f"moved_wrong_object:{','.join(sorted(wrong))}"
        for other in rs.objects:
            receptacle = other not in (t.target, t.destination) and t.object(other).kind in ("plate", "bowl")
            if receptacle and rs.on_top_of(t.target, other):
                return f"placed_on_wrong_object:{other}"
        if t.target not in self._lifted:
            return "target_not_lifted"
        if rs.is_grasping(t.target):
            return "holding_target_at_timeout"
        return "target_not_placed"


def make_env(task: str, **kwargs) -> gym.Env:
    """`gym.make` of a suite task; a picklable factory for vector-env worker processes (importing this module
    registers the ids there too)."""
    return gym.make(f"sim/{task}-v0", **kwargs)
