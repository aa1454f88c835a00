"""`sim-eval`: closed-loop evaluation of any LeRobot-interface policy on the suite's fixed initial states.

    sim-eval policy=expert|random|CHECKPOINT_DIR task=NAME|spatial|plain|all episodes=50 workers=2 output_dir=DIR

Episodes run in rounds of `workers` sub-envs (gymnasium AsyncVectorEnv, one process each) that start together,
so a policy's batch-wide `reset()` (action queues) is correct, and the policy runs batched in this process. The
worker processes live for the whole run and switch task at reset (no per-task process start-up). Every
task's episodes use the seeds of the versioned initial-state set, so two policies always face identical starts.
Finished episodes are appended to `episodes.jsonl` as they end: a rerun with the same output_dir resumes.

Writes: episodes.jsonl, summary.json, summary.md, success.png, videos/<task>/*.mp4, eval_config.json.
"""

import json
import logging
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import sim
from sim.env import make_env
from sim.init_states import eval_seeds
from sim.policies import load_policy
from sim.report import bar_chart, markdown_table, summarize, write_json
from sim.tasks import resolve_tasks
from sim.video import write_mp4

log = logging.getLogger(__name__)

# Settings that change what an episode means: a resumed run must match them.
_IDENTITY_KEYS = ("policy", "image_size", "init_states", "max_steps", "n_action_steps", "temporal_ensemble")


def make_vector_env(task: str, workers: int, image_size: int, expert: bool, max_steps: int | None):
    fns = [partial(make_env, task, image_size=image_size, expert=expert, max_steps=max_steps)] * workers
    mode = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}
    if workers == 1:
        return gym.vector.SyncVectorEnv(fns, **mode)
    return gym.vector.AsyncVectorEnv(fns, context="forkserver", **mode)


def policy_batch(obs: dict, task_description: str, n: int) -> dict:
    """Vectorised env observations -> the LeRobot batch a policy's preprocessor takes (as lerobot-eval builds it)."""
    from lerobot.envs.utils import preprocess_observation

    batch = preprocess_observation(obs)
    batch["task"] = [task_description] * n
    return batch


def _frame(obs: dict, i: int) -> np.ndarray:
    return np.concatenate([obs["pixels"][cam][i] for cam in obs["pixels"]], axis=1)


def run_round(venv, policy, pre, post, task: str, seeds: list[int], record_video: list[bool]) -> list[dict]:
    """Run len(seeds) episodes of `task` in lockstep on the first len(seeds) sub-envs; one record per episode."""
    n = venv.num_envs
    mask = np.array([i < len(seeds) for i in range(n)])
    padded = seeds + [None] * (n - len(seeds))
    obs, _ = venv.reset(seed=padded, options={"reset_mask": mask, "task": task})
    description = venv.get_attr("task_description")[int(np.argmax(mask))]
    policy.reset()
    done = ~mask
    results: list[dict | None] = [None] * len(seeds)
    frames = [[_frame(obs, i)] if record_video[i] else None for i in range(len(seeds))]
    t0 = time.perf_counter()
    while not done.all():
        batch = pre(policy_batch(obs, description, n))
        with torch.inference_mode():
            action = post(policy.select_action(batch))
        action = action.detach().to("cpu", torch.float32).numpy()
        obs, _, terminated, truncated, info = venv.step(action)
        for i in range(len(seeds)):
            if done[i]:
                continue
            if frames[i] is not None:
                frames[i].append(_frame(obs, i))
            if terminated[i] or truncated[i]:
                done[i] = True
                success = bool(info["is_success"][i])
                results[i] = {
                    "seed": seeds[i],
                    "success": success,
                    "steps": int(info["steps"][i]),
                    "failure_reason": None if success else str(info["failure_reason"][i]),
                    "picked": str(info["picked"][i]),
                    "picked_lookalike": bool(info["picked_lookalike"][i]),
                    "wall_s": round(time.perf_counter() - t0, 2),
                }
    for i, r in enumerate(results):
        r["frames"] = frames[i]
    return results


def _check_resumable(out: Path, identity: dict) -> None:
    path = out / "eval_config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), identity[k]) for k in identity if old.get(k) != identity[k]}
        if diff:
            raise ValueError(
                f"{out} holds an evaluation with other settings {diff}; use another output_dir "
                "(nothing there was changed)"
            )
    else:
        write_json(path, identity)


def evaluate(cfg: DictConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = resolve_tasks(cfg.task)
    identity = {k: cfg[k] for k in _IDENTITY_KEYS}
    _check_resumable(out, identity)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.cpu_threads:
        # The env workers already use the cores: a policy spinning 2 OpenMP threads beside them is many times
        # slower than one thread (measured ~40x for the tiny VLA on 2 cores).
        torch.set_num_threads(cfg.cpu_threads)
    policy, pre, post = load_policy(
        str(cfg.policy),
        device=device,
        seed=cfg.seed,
        n_action_steps=cfg.n_action_steps,
        temporal_ensemble=cfg.temporal_ensemble,
    )

    episodes_path = out / "episodes.jsonl"
    done = (
        [json.loads(line) for line in episodes_path.read_text().splitlines()]
        if episodes_path.exists()
        else []
    )
    finished = {(e["task"], e["seed"]) for e in done}
    plan = {t: eval_seeds(t, cfg.episodes, cfg.init_states) for t in tasks}
    todo = {t: [s for s in seeds if (t, s) not in finished] for t, seeds in plan.items()}
    total = sum(len(v) for v in todo.values())
    if finished:
        log.info("resuming: %d episodes already in %s, %d to run", len(finished), episodes_path, total)

    t_start = time.perf_counter()
    bar = tqdm(total=total, unit="ep", desc="sim-eval", dynamic_ncols=True)
    pending = [t for t in tasks if todo[t]]
    workers = max(1, min(cfg.workers, max((len(todo[t]) for t in pending), default=1)))
    venv = (
        make_vector_env(pending[0], workers, cfg.image_size, policy.needs_expert, cfg.max_steps)
        if pending
        else None
    )
    try:
        with episodes_path.open("a") as sink:
            for task in pending:
                for start in range(0, len(todo[task]), workers):
                    seeds = todo[task][start : start + workers]
                    video = [plan[task].index(s) < cfg.videos for s in seeds]
                    for r in run_round(venv, policy, pre, post, task, seeds, video):
                        frames = r.pop("frames")
                        rec = {"task": task, "episode": plan[task].index(r["seed"]), **r}
                        if frames is not None:
                            tag = "success" if r["success"] else "fail"
                            path = out / "videos" / task / f"ep{rec['episode']:03d}_seed{r['seed']}_{tag}.mp4"
                            write_mp4(path, frames, fps=sim.env.CONTROL_FREQ)
                            rec["video"] = str(path.relative_to(out))
                        sink.write(json.dumps(rec) + "\n")
                        sink.flush()
                        done.append(rec)
                        bar.update(1)
                        bar.set_postfix(task=task, ok=f"{sum(e['success'] for e in done)}/{len(done)}")
    finally:
        if venv is not None:
            venv.close()
    bar.close()
    elapsed = time.perf_counter() - t_start

    wanted = {(t, s) for t, seeds in plan.items() for s in seeds}
    episodes = [e for e in done if (e["task"], e["seed"]) in wanted]
    summary = summarize(episodes)
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    summary["throughput"] = {
        "episodes_run": total,
        "seconds": round(elapsed, 1),
        "episodes_per_minute": round(60 * total / elapsed, 2) if total else None,
        "workers": cfg.workers,
    }
    write_json(out / "summary.json", summary)
    title = f"sim-eval: policy={cfg.policy}"
    (out / "summary.md").write_text(markdown_table(summary, title))
    bar_chart({str(cfg.policy): summary}, out / "success.png", title)
    o = summary["overall"]
    log.info(
        "success %.1f%% (%d/%d, 95%% CI %.1f-%.1f); %s episodes/min",
        100 * o["success_rate"],
        o["successes"],
        o["episodes"],
        100 * o["ci95"][0],
        100 * o["ci95"][1],
        summary["throughput"]["episodes_per_minute"],
    )
    return summary


@hydra.main(
    config_path=str(Path(__file__).resolve().parents[1] / "configs"),
    config_name="sim_eval",
    version_base="1.3",
)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)
    print(f"sim-eval: wrote {Path(cfg.output_dir).resolve()}")
