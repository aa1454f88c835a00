"""Simulation suite: robosuite/MuJoCo tabletop tasks, scripted experts, LeRobot demo recording, closed-loop eval."""

import os

# Offscreen rendering on machines without a display; EGL on Mesa llvmpipe works on the CPU and on NVIDIA GPUs.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"] if os.environ["MUJOCO_GL"] != "glfw" else "")
