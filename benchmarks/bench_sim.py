"""Simulation speed: stock robosuite vs the project's env, side by side in one process; eval throughput.

    .venv/bin/python benchmarks/bench_sim.py [--steps 200] [--episodes 8]

1. env steps/s of stock robosuite Lift (Panda, OSC_POSE, one 128 px `agentview` camera through robosuite's own
   renderer) vs the project's spatial task with two 128 px cameras (agentview + wrist). Target: ratio >= 3.
   Also the project's env at robosuite's own physics rate (500 Hz instead of the suite's 200 Hz), to show what
   the rendering changes alone buy. The runs alternate in short blocks so that machine load hits all equally.
2. closed-loop evaluation throughput (episodes/minute) of the scripted expert with 1 and 2 worker processes.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

import sim  # noqa: F401,E402  (quiet robosuite, register envs)


def make_stock():
    import robosuite

    return robosuite.make(
        "Lift",
        robots="Panda",
        controller_configs=robosuite.load_composite_controller_config(controller="BASIC", robot="Panda"),
        has_renderer=False,
        has_offscreen_renderer=True,
        use_camera_obs=True,
        camera_names=["agentview"],
        camera_heights=128,
        camera_widths=128,
        control_freq=20,
        horizon=10_000,
        ignore_done=True,
    )


def make_ours(physics_dt=None):
    from sim.env import SimEnv

    return SimEnv("pick_left_of_bowl", image_size=128, max_steps=10_000, physics_dt=physics_dt)


def steps_per_second(total_steps: int, block: int = 25) -> dict:
    rng = np.random.default_rng(0)
    envs = {"stock": make_stock(), "ours": make_ours(), "ours_robosuite_dt": make_ours(physics_dt=0.002)}
    envs["stock"].reset()
    envs["ours"].reset(seed=0)
    envs["ours_robosuite_dt"].reset(seed=0)
    time_spent = dict.fromkeys(envs, 0.0)
    done = 0
    while done < total_steps:
        for name, env in envs.items():
            actions = rng.uniform(-0.3, 0.3, (block, 7))
            t = time.perf_counter()
            for a in actions:
                env.step(a)
            time_spent[name] += time.perf_counter() - t
        done += block
    for env in envs.values():
        env.close()
    sps = {k: done / v for k, v in time_spent.items()}
    return {
        "stock_robosuite_lift_1cam_steps_per_s": round(sps["stock"], 1),
        "project_spatial_2cam_steps_per_s": round(sps["ours"], 1),
        "ratio": round(sps["ours"] / sps["stock"], 2),
        # the same env at robosuite's 500 Hz physics: what the rendering changes alone buy
        "project_spatial_2cam_robosuite_dt_steps_per_s": round(sps["ours_robosuite_dt"], 1),
        "ratio_rendering_only": round(sps["ours_robosuite_dt"] / sps["stock"], 2),
        "steps_each": done,
    }


def eval_throughput(episodes: int) -> dict:
    from omegaconf import OmegaConf

    from sim.evaluate import evaluate

    out = {}
    base = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs", "sim_eval.yaml"))
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            cfg = OmegaConf.merge(
                base,
                {
                    "task": "pick_left_of_bowl",
                    "episodes": episodes,
                    "workers": workers,
                    "videos": 0,
                    "output_dir": d,
                },
            )
            cfg.pop("defaults", None)
            s = evaluate(cfg)
            out[f"workers_{workers}"] = {
                "episodes_per_minute": s["throughput"]["episodes_per_minute"],
                "success_rate": s["overall"]["success_rate"],
            }
    out["speedup_2_vs_1"] = round(
        out["workers_2"]["episodes_per_minute"] / out["workers_1"]["episodes_per_minute"], 2
    )
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--episodes", type=int, default=8)
    args = ap.parse_args()
    result = {"env_speed": steps_per_second(args.steps), "eval_throughput": eval_throughput(args.episodes)}
    result["cpu_count"] = os.cpu_count()
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
