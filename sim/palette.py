"""Colours and object kinds shared by the robot tasks (`sim/`) and the spatial data engine (`vst/data/`).

One palette keeps the VLM's spatial training images and the robot's camera images in the same visual world,
so what spatial tuning teaches transfers to the policy's inputs.
"""

COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "green": (0.15, 0.65, 0.20, 1.0),
    "blue": (0.12, 0.30, 0.85, 1.0),
    "yellow": (0.95, 0.85, 0.10, 1.0),
    "purple": (0.55, 0.20, 0.70, 1.0),
    "orange": (0.95, 0.50, 0.05, 1.0),
    "white": (0.92, 0.92, 0.92, 1.0),
    "black": (0.08, 0.08, 0.08, 1.0),
    "pink": (0.95, 0.45, 0.70, 1.0),
    "cyan": (0.10, 0.75, 0.80, 1.0),
    "brown": (0.50, 0.30, 0.12, 1.0),
    "gray": (0.50, 0.50, 0.50, 1.0),
}

# Object kinds both sides can build from MuJoCo primitives (sizes in metres are per-scene choices).
KINDS = ("cube", "block", "ball", "cylinder", "mug", "bowl", "plate", "box")

TABLE_RGBA = (0.62, 0.48, 0.34, 1.0)
FLOOR_RGBA = (0.30, 0.30, 0.33, 1.0)
