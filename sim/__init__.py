"""Simulation suite: robosuite/MuJoCo tabletop tasks, scripted experts, LeRobot demo recording, closed-loop eval.

Importing `sim` registers every task as a gymnasium env `sim/<task>-v0` (robosuite itself loads lazily).
"""

import logging
import os

# Offscreen rendering on machines without a display; EGL on Mesa llvmpipe works on the CPU and on NVIDIA GPUs.
# Must be set before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

_ROBOSUITE_NOISE = (
    "private macro file",
    "setup_macros.py",
    "robosuite_models",
    "mink-based",
    "Loading controller configuration",
    "does not have this component",  # the BASIC composite config names parts a Panda lacks
)


def _quiet_robosuite(record: logging.LogRecord) -> bool:
    """robosuite logs install hints at every import; keep its real warnings and errors."""
    return record.levelno >= logging.WARNING and not any(s in record.getMessage() for s in _ROBOSUITE_NOISE)


logging.getLogger("robosuite_logs").addFilter(_quiet_robosuite)


def _register() -> None:
    import gymnasium as gym

    from sim.tasks import TASKS

    for name in TASKS:
        env_id = f"sim/{name}-v0"
        if env_id not in gym.registry:
            gym.register(
                id=env_id, entry_point="sim.env:SimEnv", kwargs={"task": name}, disable_env_checker=True
            )


_register()
