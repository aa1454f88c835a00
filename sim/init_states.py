"""Fixed, versioned evaluation initial states: the same starts for every policy ever compared.

A task's evaluation episodes are `reset(seed)` with the seeds listed in `init_states/<version>.json`. Each seed's
initial state (every joint position after reset, rounded) is stored as a digest, so a change to a layout sampler,
an object size or robosuite that would silently move the starts is caught by the tests: such a change needs a new
version file, never an edit of an old one. Training demos draw seeds below EVAL_SEED_BASE, so no demo ever starts
from an evaluation state.

Regenerate (for a new version only): `python -m sim.init_states --version v2 --episodes 200`.
"""

import argparse
import hashlib
import json
from functools import cache
from pathlib import Path

import numpy as np

EVAL_SEED_BASE = 1_000_000
DEFAULT_VERSION = "v1"
DIR = Path(__file__).parent / "init_states"


def state_digest(env) -> str:
    """Digest of the simulator state after reset: all joint positions rounded to 1e-6."""
    qpos = np.round(np.asarray(env.unwrapped._data.qpos, dtype=np.float64), 6) + 0.0  # +0.0 folds -0.0
    return hashlib.sha1(qpos.tobytes()).hexdigest()[:16]


@cache
def _load(version: str) -> dict:
    path = DIR / f"{version}.json"
    if not path.exists():
        known = sorted(p.stem for p in DIR.glob("*.json"))
        raise FileNotFoundError(f"no initial-state set {version!r} ({path}); known versions: {known}")
    return json.loads(path.read_text())


def eval_seeds(task: str, episodes: int, version: str = DEFAULT_VERSION) -> list[int]:
    """The first `episodes` evaluation seeds of `task` in initial-state set `version`."""
    table = _load(version)["tasks"]
    if task not in table:
        raise KeyError(f"task {task!r} has no evaluation states in {version}; it has: {', '.join(table)}")
    seeds = table[task]["seeds"]
    if episodes > len(seeds):
        raise ValueError(
            f"{version} holds {len(seeds)} evaluation states for {task}, {episodes} were asked for"
        )
    return seeds[:episodes]


def expected_digests(task: str, version: str = DEFAULT_VERSION) -> dict[int, str]:
    entry = _load(version)["tasks"][task]
    return dict(zip(entry["seeds"], entry["digests"]))


def generate(version: str, episodes: int) -> Path:
    from sim.env import SimEnv
    from sim.tasks import TASKS

    path = DIR / f"{version}.json"
    if path.exists():
        raise FileExistsError(f"{path} exists: initial-state sets are immutable, pick a new version")
    out = {"version": version, "seed_base": EVAL_SEED_BASE, "tasks": {}}
    for name in TASKS:
        env = SimEnv(name, image_size=32)
        seeds = [EVAL_SEED_BASE + i for i in range(episodes)]
        digests = []
        for s in seeds:
            env.reset(seed=s)
            digests.append(state_digest(env))
        env.close()
        out["tasks"][name] = {"seeds": seeds, "digests": digests}
        print(f"{name}: {episodes} states")
    DIR.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--version", required=True)
    ap.add_argument("--episodes", type=int, default=100)
    args = ap.parse_args()
    print("wrote", generate(args.version, args.episodes))
