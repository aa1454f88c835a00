"""`sim-record`: scripted-expert demonstrations into a LeRobotDataset (v3, local, offline).

    sim-record task=spatial episodes=50 noise=0.1 workers=2 output_dir=DIR
    sim-record task=spatial episodes=20 policy=CKPT expert_mix=0.0 seed=1 output_dir=DIR   (DAgger round)

Each task is recorded by a worker process into its own shard (a complete LeRobotDataset under DIR.partial/),
then the shards are merged into DIR with LeRobot's `aggregate_datasets`. With `policy=` a learned policy drives
instead (each step the expert's action with probability `expert_mix`) while every frame is labelled with the
expert's action: the states a policy actually reaches, with the corrections it should have made (DAgger). Those
episodes are all kept, successful or not, and their success is reported. An interrupted run resumes: finished
shards are kept, an unfinished one is recorded again. Failed expert episodes are dropped and counted. Demos use
training seeds (below the evaluation seed base), so no demo starts from an evaluation state.

Features: observation.images.{agentview,wrist} (video), observation.state (8), action (7), task (instruction).
"""

import json
import logging
import multiprocessing as mp
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sim.env import ACTION_DIM, CAMERAS, CONTROL_FREQ, STATE_DIM
from sim.init_states import EVAL_SEED_BASE
from sim.report import write_json
from sim.tasks import resolve_tasks
from vla.stats import KEYS as STAT_KEYS
from vla.stats import frame_stats

log = logging.getLogger(__name__)

SEEDS_PER_RUN_SEED = 20_000  # run seed s records every task from training seeds s*20000, s*20000 + 1, ...
ROBOT_TYPE = "panda_osc_pose"


def dataset_features(image_size: int) -> dict:
    feats = {
        f"observation.images.{cam}": {
            "dtype": "video",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"],
        }
        for cam in CAMERAS
    }
    feats["observation.state"] = {
        "dtype": "float32",
        "shape": (STATE_DIM,),
        "names": [
            "eef_x",
            "eef_y",
            "eef_z",
            "eef_rot_x",
            "eef_rot_y",
            "eef_rot_z",
            "finger_left",
            "finger_right",
        ],
    }
    feats["action"] = {
        "dtype": "float32",
        "shape": (ACTION_DIM,),
        "names": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"],
    }
    return feats


def record_task(
    task: str,
    episodes: int,
    first_seed: int,
    noise: float,
    image_size: int,
    root: Path,
    repo_id: str,
    progress=None,
    policy: str | None = None,
    expert_mix: float = 0.0,
) -> dict:
    """Record `episodes` episodes of one task into a fresh LeRobotDataset at `root`, labelled with the expert's
    actions: successful expert episodes, or with `policy` (a checkpoint dir) every episode that policy drives."""
    import gymnasium as gym
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    import sim  # noqa: F401  (registers the gym ids)

    driver = None
    if policy is not None:
        import torch

        from sim.policies import load_policy

        torch.set_num_threads(1)  # one per worker process: the workers already fill the cores
        driver = load_policy(policy, device="cpu")
    env = gym.make(f"sim/{task}-v0", image_size=image_size, expert=True)
    # Streaming encoding feeds frames to the video encoder as they come (no PNG round trip): ~4x faster here.
    ds = LeRobotDataset.create(
        repo_id=repo_id,
        root=root,
        fps=CONTROL_FREQ,
        features=dataset_features(image_size),
        robot_type=ROBOT_TYPE,
        streaming_encoding=True,
    )
    recorded, failed, seeds, reasons, successes = 0, 0, [], {}, 0
    seed = first_seed
    max_attempts = 3 * episodes + 20
    if first_seed + max_attempts > EVAL_SEED_BASE or max_attempts > SEEDS_PER_RUN_SEED:
        raise ValueError(
            f"{episodes} episodes from run seed {first_seed // SEEDS_PER_RUN_SEED} would reach other runs' or the "
            f"evaluation states (seeds >= {EVAL_SEED_BASE}); use seed < {EVAL_SEED_BASE // SEEDS_PER_RUN_SEED - 1} "
            f"and episodes <= {(SEEDS_PER_RUN_SEED - 20) // 3} per task"
        )
    while recorded < episodes:
        if seed - first_seed >= max_attempts:
            raise RuntimeError(
                f"{task}: only {recorded}/{episodes} successes in {max_attempts} expert attempts"
            )
        if seed >= EVAL_SEED_BASE:
            raise ValueError(
                f"training seeds for {task} reached the evaluation range ({EVAL_SEED_BASE}); lower seed="
            )
        obs, info = env.reset(seed=seed)
        instruction = env.unwrapped.task_description
        rng = np.random.default_rng([seed, 3])
        if driver is not None:
            driver[0].reset()
        while True:
            # DART-style noise: the arm executes a perturbed action, so the states visit the expert's
            # recoveries, while the label is its clean action (labelling the noise would teach noise).
            label = obs["expert_action"].astype(np.float32)
            executed = label.copy()
            if driver is not None:
                # asked every step, even when the expert acts, so the policy's action queue stays in step
                acted = _policy_action(driver, obs, instruction)
                if rng.random() >= expert_mix:
                    executed = acted
            if noise > 0:
                executed[:6] = np.clip(executed[:6] + rng.normal(0.0, noise, 6), -1.0, 1.0)
            frame = {f"observation.images.{cam}": obs["pixels"][cam] for cam in CAMERAS}
            frame["observation.state"] = obs["agent_pos"]
            frame["action"] = label
            frame["task"] = instruction
            ds.add_frame(frame)
            obs, _, terminated, truncated, info = env.step(executed)
            if terminated or truncated:
                break
        successes += bool(info["is_success"])
        if info["is_success"] or driver is not None:
            ds.save_episode()
            recorded += 1
            seeds.append(seed)
            if progress is not None:
                progress.put(1)
        else:
            ds.clear_episode_buffer()
            failed += 1
            reasons[info["failure_reason"]] = reasons.get(info["failure_reason"], 0) + 1
        seed += 1
    ds.finalize()
    env.close()
    report = {
        "task": task,
        "episodes": recorded,
        "failed_attempts": failed,
        "failure_reasons": reasons,
        "seeds": seeds,
    }
    if driver is not None:
        report |= {"policy": policy, "expert_mix": expert_mix, "policy_successes": successes}
    write_json(root / "DONE.json", report)
    return report


def _policy_action(driver, obs: dict, instruction: str) -> np.ndarray:
    """One env's observation through a LeRobot policy and its processors, as sim-eval runs it."""
    import torch

    from sim.evaluate import policy_batch

    policy, pre, post = driver
    batched = {"pixels": {k: v[None] for k, v in obs["pixels"].items()}, "agent_pos": obs["agent_pos"][None]}
    with torch.inference_mode():
        action = post(policy.select_action(pre(policy_batch(batched, instruction, 1))))
    action = action.detach().to("cpu", torch.float32).numpy()[0]
    if action.shape != (ACTION_DIM,) or not np.isfinite(action).all():
        raise ValueError(
            f"the policy returned an action of shape {action.shape} (want ({ACTION_DIM},), finite)"
        )
    return np.clip(action, -1.0, 1.0).astype(np.float32)


def write_exact_stats(root: Path, keys: tuple[str, ...] = STAT_KEYS) -> dict:
    """Rewrite the low-dimensional features' stats of the dataset at `root` over every frame (LeRobot's own are
    per-episode means: see vla/stats.py). Cheap: a few floats per frame."""
    import pyarrow.parquet as pq
    from lerobot.datasets.io_utils import load_stats, write_stats

    files = sorted((root / "data").glob("**/*.parquet"))
    if not files:
        raise FileNotFoundError(f"no data/*.parquet under {root}: not a LeRobot dataset root")
    stats = load_stats(root) or {}
    for key in keys:
        tables = [pq.read_table(f, columns=[key]).column(key).to_pylist() for f in files]
        stats[key] = frame_stats(np.concatenate([np.asarray(t, dtype=np.float64) for t in tables]))
    write_stats(stats, root)
    return stats


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not any(out.iterdir()):
        out.rmdir()  # LeRobot creates the root itself
    elif out.exists():
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty; choose another output_dir, or pass overwrite=true "
                "(the old directory is moved aside, never deleted)"
            )
        aside = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        log.warning("moved the existing %s to %s", out, aside)


def record(cfg: DictConfig) -> dict:
    out = Path(cfg.output_dir)
    tasks = resolve_tasks(cfg.task)
    _prepare_output(out, cfg.overwrite)
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    if cfg.policy is None and cfg.expert_mix:
        raise ValueError("expert_mix mixes the expert into a policy's rollouts: it needs policy=CKPT")
    if not 0.0 <= cfg.expert_mix <= 1.0:
        raise ValueError(f"expert_mix must lie in [0, 1], got {cfg.expert_mix}")
    if cfg.policy is not None:
        from sim.policies import check_policy_spec

        check_policy_spec(str(cfg.policy))  # before any worker starts
    settings = {k: cfg[k] for k in ("episodes", "noise", "image_size", "seed", "policy", "expert_mix")}
    settings["tasks"] = tasks
    settings_path = partial / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(
            f"{partial} holds an interrupted recording with other settings {json.loads(settings_path.read_text())}; "
            f"rerun with those, or delete {partial}"
        )
    write_json(settings_path, settings)

    reports, jobs = {}, []
    for task in tasks:
        shard = partial / task
        if (shard / "DONE.json").exists():
            reports[task] = json.loads((shard / "DONE.json").read_text())
            log.info("%s: kept finished shard (%d episodes)", task, reports[task]["episodes"])
            continue
        if shard.exists():
            shutil.rmtree(shard)  # an interrupted shard of our own: redo it whole
        first_seed = cfg.seed * SEEDS_PER_RUN_SEED
        jobs.append(
            (task, cfg.episodes, first_seed, cfg.noise, cfg.image_size, shard, f"{cfg.repo_id}_{task}")
        )

    total = sum(j[1] for j in jobs)
    t0 = time.perf_counter()
    if jobs:
        ctx = mp.get_context("forkserver")
        with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            progress = manager.Queue()
            drive = {"policy": None if cfg.policy is None else str(cfg.policy), "expert_mix": cfg.expert_mix}
            futures = {pool.submit(record_task, *job, progress, **drive): job[0] for job in jobs}
            with tqdm(total=total, unit="ep", desc="sim-record", dynamic_ncols=True) as bar:
                while bar.n < total and not all(f.done() for f in futures):
                    try:
                        bar.update(progress.get(timeout=1.0))
                    except Exception as timeout:
                        for f in futures:
                            if f.done() and f.exception() is not None:
                                raise f.exception() from timeout
            for f, task in futures.items():
                reports[task] = f.result()
    elapsed = time.perf_counter() - t0

    from lerobot.datasets.aggregate import aggregate_datasets

    aggregate_datasets(
        repo_ids=[f"{cfg.repo_id}_{t}" for t in tasks],
        aggr_repo_id=cfg.repo_id,
        roots=[partial / t for t in tasks],
        aggr_root=out,
    )
    summary = {
        "dataset": str(out),
        "repo_id": cfg.repo_id,
        "tasks": {t: reports[t] for t in tasks},
        "episodes": sum(r["episodes"] for r in reports.values()),
        "failed_attempts": sum(r["failed_attempts"] for r in reports.values()),
        "record_seconds": round(elapsed, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_exact_stats(out)
    write_json(out / "meta" / "sim_record.json", summary)
    shutil.rmtree(partial)
    log.info(
        "recorded %d episodes (%d failed expert attempts dropped) in %.0fs",
        summary["episodes"],
        summary["failed_attempts"],
        elapsed,
    )
    return summary


@hydra.main(
    config_path=str(Path(__file__).resolve().parents[1] / "configs"),
    config_name="sim_record",
    version_base="1.3",
)
def main(cfg: DictConfig) -> None:
    record(cfg)
    print(f"sim-record: wrote {Path(cfg.output_dir).resolve()}")
