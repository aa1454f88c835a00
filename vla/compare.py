"""`vla-compare preset=quick|full output_dir=DIR`: the project's main job, top to bottom.

Spatial data -> general pretraining (the baseline backbone) -> spatial SFT -> CoT cold start -> GRPO (the VST
backbone) -> both backbones on the spatial benchmark -> expert demos -> the same VLA recipe on each backbone, with
identical demos, seeds and budgets (plus LeRobot's ACT as a reference row) -> closed-loop evaluation on identical
initial states -> a paired report.

Each step is one of the project's own commands, run once in a subprocess: the report lists the exact commands, so
any step can be rerun by hand. A finished step is recorded in <output_dir>/steps.json and skipped on a rerun;
an interrupted one is rerun, and since every command resumes from its own checkpoints, nothing is recomputed.
"""

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from sim.report import bar_chart, mcnemar, paired_difference_ci, write_json
from vst.pipeline_report import STAGES, write_backbone_report

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent  # the console scripts of this environment


class Steps:
    """Runs each named command once; remembers finished ones (with their command) in steps.json.

    Commands are remembered relative to the output dir and the environment (`$OUTPUT_DIR/...`, bare tool names),
    so a moved or copied output dir, or another checkout, still reuses its steps."""

    def __init__(self, out: Path, dry_run: bool, env: dict):
        self.out, self.dry_run, self.env = out, dry_run, env
        self.path = out / "steps.json"
        self.done = json.loads(self.path.read_text()) if self.path.exists() else {}

    def _portable(self, cmd: list[str]) -> str:
        return shlex.join(cmd).replace(f"{BIN}/", "").replace(str(self.out.resolve()), "$OUTPUT_DIR")

    def _todo(self, name: str, cmd: list[str]) -> bool:
        line = self._portable(cmd)
        if name in self.done:
            if self.done[name]["command"] != line:
                raise ValueError(
                    f"step {name!r} in {self.out} was done with another command:\n  {self.done[name]['command']}\n"
                    f"now:\n  {line}\nuse a new output_dir (nothing was changed)"
                )
            log.info("step %s: done before, reused", name)
            return False
        log.info("step %s: %s", name, shlex.join(cmd))
        return not self.dry_run

    def _finish(self, name: str, cmd: list[str], seconds: float) -> None:
        self.done[name] = {"command": self._portable(cmd), "seconds": round(seconds, 1)}
        write_json(self.path, self.done)

    def run(self, name: str, cmd: list[str], resume: list[str] | None = None) -> None:
        """Run `cmd` unless done; `resume` (if given) is run instead to continue an interrupted attempt."""
        if not self._todo(name, cmd):
            return
        t0 = time.perf_counter()
        proc = subprocess.run(resume or cmd, env=self.env)
        if proc.returncode != 0:
            raise RuntimeError(f"step {name!r} failed (exit {proc.returncode}): {shlex.join(cmd)}")
        self._finish(name, cmd, time.perf_counter() - t0)

    def run_parallel(
        self, jobs: list[tuple[str, list[str], list[str] | None]], width: int, threads: int
    ) -> None:
        """Independent steps side by side, at most `width` at a time, each logging to logs/<name>.log.

        A failed step fails the group only after the others have finished (and been recorded): their work is
        kept for the rerun."""
        if width <= 1:
            for name, cmd, resume in jobs:
                self.run(name, cmd, resume)
            return
        queue = [(n, c, r) for n, c, r in jobs if self._todo(n, c)]
        if not queue:
            return
        env = {**(self.env or os.environ), "OMP_NUM_THREADS": str(threads)}
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        running: dict[str, tuple] = {}
        failed = []
        while queue or running:
            while queue and len(running) < width:
                name, cmd, resume = queue.pop(0)
                sink = (self.out / "logs" / f"{name}.log").open("a")
                proc = subprocess.Popen(resume or cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
                log.info("step %s: started (log: %s)", name, sink.name)
                running[name] = (proc, cmd, sink, time.perf_counter())
            time.sleep(0.5)
            for name, (proc, cmd, sink, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                sink.close()
                del running[name]
                if proc.returncode != 0:
                    failed.append(f"{name} (exit {proc.returncode}, log: {sink.name})")
                    continue
                log.info("step %s: done in %.0f s", name, time.perf_counter() - t0)
                self._finish(name, cmd, time.perf_counter() - t0)
        if failed:
            raise RuntimeError(f"steps failed: {', '.join(failed)}")


def _cmd(tool: str, *args: str) -> list[str]:
    return [str(BIN / tool), *args]


def _last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last" / "pretrained_model"


def _act_commands(cfg, demos: Path, out: Path) -> tuple[list[str], list[str] | None]:
    """LeRobot's ACT through stock lerobot-train, and the command that resumes it if a checkpoint exists."""
    resume = None
    if (out / "checkpoints" / "last").exists():
        config = out / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
        resume = _cmd("lerobot-train", f"--config_path={config}", "--resume=true")
    return _cmd(
        "lerobot-train",
        "--policy.type=act",
        "--policy.pretrained_backbone_weights=null",
        "--policy.push_to_hub=false",
        f"--policy.chunk_size={cfg.vla.chunk_size}",
        f"--policy.n_action_steps={cfg.vla.chunk_size}",
        f"--dataset.repo_id=local/{demos.name}",
        f"--dataset.root={demos}",
        f"--steps={cfg.act.steps}",
        f"--batch_size={cfg.act.batch_size}",
        # the VLAs' bf16 autocast (vla.amp) for ACT too: 1.46x faster on this CPU (0.57 -> 0.39 s per step)
        *(["--policy.use_amp=true"] if cfg.vla.get("amp") is True else []),
        f"--seed={cfg.seed + 1000}",
        "--num_workers=0",
        f"--save_freq={cfg.act.steps}",
        "--wandb.enable=false",
        f"--output_dir={out}",
    ), resume


def run_chain(cfg: DictConfig) -> dict:
    if cfg.stop_after not in (None, "backbones"):
        raise ValueError(f"stop_after must be null or 'backbones', got {cfg.stop_after!r}")
    if cfg.get("vst_stage", "rl") not in ("sft", "cot", "rl"):
        raise ValueError(
            f"vst_stage must be sft, cot or rl (the stage the VST-VLA starts from), got {cfg.vst_stage!r}"
        )
    budget = cfg.eval.get("max_steps")
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise ValueError(
            f"eval.max_steps={budget!r}: a positive number of steps per episode, or null (the task's)"
        )
    ensemble = cfg.eval.get("temporal_ensemble")
    if ensemble is not None and (
        isinstance(ensemble, bool) or not isinstance(ensemble, (int, float)) or ensemble < 0
    ):
        raise ValueError(
            f"eval.temporal_ensemble={ensemble!r}: a coefficient >= 0 (ACT uses 0.01), or null (the action queue)"
        )
    every = cfg.eval.get("n_action_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(
            f"eval.n_action_steps={every!r}: actions executed per predicted chunk (with temporal ensembling: steps "
            "between chunks), >= 1, or null (the policy's own)"
        )
    if cfg.act.enabled and ensemble is not None and every not in (None, 1):
        raise ValueError(
            f"eval.n_action_steps={every} with eval.temporal_ensemble: ACT's ensembling predicts at every step and "
            "every policy is evaluated alike; set eval.n_action_steps=1 (or act.enabled=false)"
        )
    for key in ("train_overrides", "cot_overrides", "rl_overrides"):
        extra = cfg.data.get(key, [])
        if not isinstance(extra, ListConfig | list) or not all(isinstance(x, str) for x in extra):
            raise ValueError(
                f"data.{key}={extra!r}: a list of vst-data overrides, e.g. 'data.{key}=[\"skills=cot\"]'"
            )
    n_seeds = int(cfg.vla.seeds)
    if n_seeds < 1:
        raise ValueError(f"vla.seeds must be >= 1 (VLA trainings per backbone), got {cfg.vla.seeds}")
    out = Path(cfg.output_dir).resolve()
    env = dict(os.environ)
    if cfg.cpu_threads:
        env["OMP_NUM_THREADS"] = str(cfg.cpu_threads)
    width = max(1, int(cfg.parallel))
    # side-by-side steps each get their share of the cores instead of all fighting for all of them
    side_threads = cfg.cpu_threads or max(1, (os.cpu_count() or 1) // width)
    steps = Steps(out, cfg.dry_run, env)
    d, p = cfg.data, cfg.pipeline
    data, bb, ev = out / "data", out / "backbones", out / "eval"

    # 1. Spatial data: the training mix, CoT and RL rows, and the held-out benchmark.
    steps.run(
        "data_train",
        _cmd(
            "vst-data",
            f"n={d.n}",
            f"seed={cfg.seed}",
            f"workers={d.workers}",
            *d.get("train_overrides", []),
            f"output_dir={data / 'train'}",
        ),
    )
    steps.run(
        "data_cot",
        _cmd(
            "vst-data",
            f"n={d.cot_n}",
            f"seed={cfg.seed + 1}",
            f"workers={d.workers}",
            "row_mix={perception: 0, cot: 1, rl: 0, general: 0}",
            *d.get("cot_overrides", []),
            f"output_dir={data / 'cot'}",
        ),
    )
    steps.run(
        "data_rl",
        _cmd(
            "vst-data",
            f"n={d.rl_n}",
            f"seed={cfg.seed + 2}",
            f"workers={d.workers}",
            "row_mix={perception: 0, cot: 0, rl: 1, general: 0}",
            *d.get("rl_overrides", []),
            f"output_dir={data / 'rl'}",
        ),
    )
    for split in ("bench", "bench_general"):
        steps.run(
            f"data_{split}",
            _cmd(
                "vst-data",
                f"split={split}",
                f"per_skill={d.bench_per_skill}",
                f"seed={cfg.seed}",
                f"workers={d.workers}",
                f"output_dir={data / split}",
            ),
        )

    # 2. Backbones: general pretraining is the baseline; SFT -> CoT -> RL on top of it is VST.
    stages = [
        ("pretrain", cfg.model, data / "train", p.pretrain_steps, []),
        ("sft", bb / "pretrain" / "model", data / "train", p.sft_steps, []),
        ("cot", bb / "sft" / "model", data / "cot", p.cot_steps, []),
        ("rl", bb / "cot" / "model", data / "rl", p.rl_steps, [f"rl.num_generations={p.rl_num_generations}"]),
    ]
    if p.cot_replay:  # the CoT stage keeps answering directly: a share of the SFT rows stays in its mix
        replay = [f"replay.data={data / 'train'}", "replay.row_types=[perception,general]"]
        stages[2][4].extend([*replay, f"replay.fraction={p.cot_replay}"])
    for stage, start, rows, n_steps, extra in stages:
        extra = [*extra, *p.overrides.get(stage, [])]
        steps.run(
            f"train_{stage}",
            _cmd(
                "vst-train",
                f"stage={stage}",
                f"model={start}",
                f"data={rows}",
                f"train.max_steps={n_steps}",
                f"train.seed={cfg.seed}",
                *extra,
                f"output_dir={bb / stage}",
            ),
        )
    # The VST-VLA is built on the end of the pipeline (rl) unless vst_stage names an earlier stage: the
    # "which stages matter" ablation.
    backbones = {"baseline": bb / "pretrain" / "model", "vst": bb / cfg.vst_stage / "model"}

    # 3. Every stage's checkpoint on the held-out spatial benchmark and the general split.
    stage_models = {
        "baseline": bb / "pretrain" / "model",
        "sft": bb / "sft" / "model",
        "cot": bb / "cot" / "model",
        "vst": bb / "rl" / "model",
    }
    for name, ckpt in stage_models.items():
        steps.run(
            f"bench_{name}",
            _cmd(
                "vst-bench",
                f"model={ckpt}",
                f"data={data}/bench*/shard-*.parquet",
                f"max_new_tokens={cfg.bench.max_new_tokens}",
                f"output_dir={out / 'bench' / name}",
            ),
        )

    if cfg.bench.think:  # the CoT and RL checkpoints also in the mode their rows train: think first
        for name in ("cot", "vst"):
            steps.run(
                f"bench_{name}_think",
                _cmd(
                    "vst-bench",
                    f"model={stage_models[name]}",
                    f"data={data}/bench*/shard-*.parquet",
                    f"max_new_tokens={cfg.bench.max_new_tokens}",
                    "think=true",
                    f"output_dir={out / 'bench' / f'{name}_think'}",
                ),
            )

    if not cfg.dry_run:
        write_backbone_report(out)
    if cfg.stop_after == "backbones":
        return {}

    # 4. Expert demonstrations (training seeds only), shared by every policy.
    demos = out / "demos"
    steps.run(
        "demos",
        _cmd(
            "sim-record",
            f"task=[{cfg.demos.task}]",
            f"episodes={cfg.demos.episodes}",
            f"noise={cfg.demos.noise}",
            f"image_size={cfg.demos.image_size}",
            f"seed={cfg.seed}",
            f"output_dir={demos}",
        ),
    )

    # 5. The same VLA recipe on each backbone: identical demos, seed, steps, batch, learning rate. With
    # vla.seeds = n, n trainings per backbone (training seeds seed+1000+i, paired across backbones): one training
    # run per backbone cannot tell the backbone's effect from the run's.
    policies, train_jobs = {}, []
    for i, (name, ckpt) in ((i, b) for i in range(n_seeds) for b in backbones.items()):
        run = out / "vla" / f"{name}{seed_suffix(i)}"
        train_jobs.append(
            (
                f"vla_{name}{seed_suffix(i)}",
                _cmd(
                    "vla-train",
                    f"backbone={ckpt}",
                    f"dataset={demos}",
                    f"steps={cfg.vla.steps}",
                    f"batch_size={cfg.vla.batch_size}",
                    f"lr={cfg.vla.lr}",
                    f"policy.optimizer_lr_vision={cfg.vla.lr_vision}",
                    f"policy.bin_label_sigma={cfg.vla.bin_label_sigma}",
                    f"chunk_size={cfg.vla.chunk_size}",
                    f"policy.image_size={cfg.vla.image_size}",
                    f"seed={cfg.seed + 1000 + i}",
                    *([f"amp={str(cfg.vla.amp).lower()}"] if cfg.vla.get("amp") is not None else []),
                    f"save_freq={max(1, cfg.vla.steps // 8)}",  # an interrupted run resumes from the last
                    f"output_dir={run}",
                ),
                None,
            )
        )
        policies[f"{name}-VLA{seed_suffix(i)}"] = run / "train" / "checkpoints" / "last" / "pretrained_model"
    if cfg.act.enabled:
        act_dir = out / "act"
        fresh, resume = _act_commands(cfg, demos, act_dir)
        train_jobs.append(("act", fresh, resume))
        policies["ACT"] = _last_checkpoint(act_dir)
    steps.run_parallel(train_jobs, width, side_threads)

    # 6. Closed-loop evaluation on the same versioned initial states.
    eval_jobs = []
    for label, ckpt in policies.items():
        eval_jobs.append(
            (
                f"eval_{label}",
                _cmd(
                    "sim-eval",
                    f"policy={ckpt}",
                    f"task=[{cfg.demos.task}]",
                    f"episodes={cfg.eval.episodes}",
                    f"workers={cfg.eval.workers}",
                    f"videos={cfg.eval.videos}",
                    f"image_size={cfg.demos.image_size}",
                    f"init_states={cfg.eval.init_states}",
                    *([f"max_steps={budget}"] if budget else []),
                    *([f"temporal_ensemble={ensemble}"] if ensemble is not None else []),
                    *([f"n_action_steps={every}"] if every is not None else []),
                    f"output_dir={ev / label}",
                ),
                None,
            )
        )
    steps.run_parallel(eval_jobs, width, side_threads)
    if cfg.dry_run:
        return {}
    return write_report(out, list(policies), steps.done, seeds=n_seeds)


def seed_suffix(i: int) -> str:
    """Names of the i-th VLA training per backbone: the first keeps the plain names (vla/vst, eval/vst-VLA)."""
    return "" if i == 0 else f"-seed{i}"


def _episodes(path: Path) -> dict[tuple[str, int], dict]:
    return {(e["task"], e["seed"]): e for e in map(json.loads, path.read_text().splitlines())}


def _paired(vst: list[bool], base: list[bool]) -> dict:
    return {
        "vst": sum(vst) / len(vst),
        "baseline": sum(base) / len(base),
        "vst_minus_baseline": (sum(vst) - sum(base)) / len(vst),
        "vst_minus_baseline_ci95": list(paired_difference_ci(vst, base)),
        "mcnemar": mcnemar(vst, base),
    }


def _comparison(pairs: list[tuple[dict, dict]]) -> dict:
    """Success, picked-target and look-alike rates of (baseline, vst) episode pairs, each with McNemar."""
    base, vst = [b for b, _ in pairs], [v for _, v in pairs]
    out = {"success": _paired([v["success"] for v in vst], [b["success"] for b in base])}
    out["picked"] = out["lookalike"] = None
    # the spatial choice on its own (lifted the instructed object first), and the confusion the words should
    # prevent (lifted its look-alike first)
    if all("picked" in e for e in (*base, *vst)):
        out["picked"] = _paired(
            [v["picked"] == "target" for v in vst], [b["picked"] == "target" for b in base]
        )
    if all("picked_lookalike" in e for e in (*base, *vst)):
        out["lookalike"] = _paired(
            [v["picked_lookalike"] for v in vst], [b["picked_lookalike"] for b in base]
        )
    return out


def _spread(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def write_report(out: Path, labels: list[str], done: dict, seeds: int = 1) -> dict:
    """Paired comparison of the two VLAs (McNemar on identical starts), every policy's success, bench scores.

    With several training seeds the headline pools every (seed, start) pair, and `per_seed` / `across_seeds`
    show how much the difference moves from one training run to the next."""
    ev = out / "eval"
    summaries = {label: json.loads((ev / label / "summary.json").read_text()) for label in labels}
    pairs, per_seed = [], []
    for i in range(seeds):
        base = _episodes(ev / f"baseline-VLA{seed_suffix(i)}" / "episodes.jsonl")
        vst = _episodes(ev / f"vst-VLA{seed_suffix(i)}" / "episodes.jsonl")
        keys = sorted(base.keys() & vst.keys())
        if len(keys) != len(base) or len(keys) != len(vst):
            raise ValueError(
                "the two VLAs were not evaluated on the same (task, seed) pairs: the comparison is not paired"
            )
        seed_pairs = [(k, base[k], vst[k]) for k in keys]
        pairs += seed_pairs
        per_seed.append({"seed_index": i, **_comparison([(b, v) for _, b, v in seed_pairs])})
    pooled = _comparison([(b, v) for _, b, v in pairs])
    settings = _eval_settings(ev, labels)
    per_task = {
        task: _paired(
            [v["success"] for k, _, v in pairs if k[0] == task],
            [b["success"] for k, b, _ in pairs if k[0] == task],
        )
        for task in sorted({k[0] for k, _, _ in pairs})
    }
    across = None
    if seeds > 1:
        across = {
            key: _spread([s[key]["vst_minus_baseline"] for s in per_seed])
            for key in ("success", "picked", "lookalike")
            if all(s[key] for s in per_seed)
        }
    diff, paired = pooled["success"]["vst_minus_baseline"], pooled["success"]["mcnemar"]
    picked, lookalike = pooled["picked"], pooled["lookalike"]
    bench = {}
    for name in STAGES:
        path = out / "bench" / name / "results.json"
        bench[name] = json.loads(path.read_text()) if path.exists() else None
    report = {
        "paired": {
            "episodes": len(pairs),
            "vst_minus_baseline": diff,
            "vst_minus_baseline_ci95": pooled["success"]["vst_minus_baseline_ci95"],
            "mcnemar_vst_vs_baseline": paired,
        },
        "picked_target_paired": picked,
        "picked_lookalike_paired": lookalike,
        "per_task": per_task,
        "eval_settings": settings,
        "seeds": seeds,
        "per_seed": per_seed,
        "across_seeds": across,
        "policies": {k: {"overall": s["overall"], "tasks": s["tasks"]} for k, s in summaries.items()},
        "bench": bench,
        "commands": {k: v["command"] for k, v in done.items()},
        "seconds": {k: v["seconds"] for k, v in done.items()},
    }
    write_json(out / "report.json", report)
    bar_chart(summaries, out / "success.png", "closed-loop success on identical initial states")
    if picked:
        bar_chart(
            {label: _picking_series(s) for label, s in summaries.items()},
            out / "picked.png",
            "lifted the instructed object first, identical initial states",
            ylabel="picked target first (%)",
        )
    (out / "report.md").write_text(_markdown(report, summaries))
    return report


def _eval_settings(ev: Path, labels: list[str]) -> dict:
    """The evaluation settings every policy shared (episode budget, chunk execution, initial states): a comparison
    of policies given different budgets is not a comparison, so differing settings are refused."""
    configs = {}
    for label in labels:
        path = ev / label / "eval_config.json"
        if path.exists():
            # a setting left at its default (None) equals one an older sim-eval did not record yet
            saved = json.loads(path.read_text()).items()
            configs[label] = {k: v for k, v in saved if k != "policy" and v is not None}
    if len({json.dumps(c, sort_keys=True) for c in configs.values()}) > 1:
        raise ValueError(f"the policies were evaluated with different settings, not comparable: {configs}")
    return next(iter(configs.values()), {})


def _picking_series(summary: dict) -> dict:
    """A summary's picked-target rates in the shape bar_chart plots."""

    def node(n: dict) -> dict:
        pk = n["picking"]
        return {"success_rate": pk["picked_target_rate"], "ci95": pk["picked_target_ci95"]}

    return {"tasks": {t: node(n) for t, n in summary["tasks"].items()}, "overall": node(summary["overall"])}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _bench_overall(res: dict | None, split: str) -> str:
    if not res:
        return "-"
    node = res.get("splits", {}).get(split) or {}
    val = node.get("overall")
    return f"{val:.1f}" if isinstance(val, int | float) else "-"


def _seed_lines(report: dict) -> list[str]:
    """One row per VLA training seed, then the spread of the per-seed differences: the training-run noise."""
    lines = [
        "",
        f"Pooled over {report['seeds']} VLA training seeds per backbone (seed i pairs baseline and VST trainings "
        "with the same seed); per seed:",
        "",
        "| seed | success baseline / VST (p) | instructed first baseline / VST (p) | look-alike first baseline / VST (p) |",
        "|---|---|---|---|",
    ]

    def cell(c: dict | None) -> str:
        return f"{_pct(c['baseline'])} / {_pct(c['vst'])} ({c['mcnemar']['p_value']:.2g})" if c else "-"

    for s in report["per_seed"]:
        lines.append(
            f"| {s['seed_index']} | {cell(s['success'])} | {cell(s['picked'])} | {cell(s['lookalike'])} |"
        )
    for key, spread in (report.get("across_seeds") or {}).items():
        lines.append(
            f"\nVST - baseline, {key}, across seeds: {100 * spread['mean']:+.1f} +- {100 * spread['std']:.1f} "
            f"points (mean +- std of {len(spread['values'])} training seeds)."
        )
    return lines


def _diff_ci(ci: list[float] | None) -> str:
    """' [95% CI lo, hi]' in points (Newcombe's paired interval); nothing for reports written before it existed."""
    return "" if ci is None else f" [95% CI {100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _markdown(report: dict, summaries: dict) -> str:
    p = report["paired"]
    m = p["mcnemar_vst_vs_baseline"]
    lines = [
        "# vla-compare: VST-VLA vs baseline-VLA",
        "",
        f"Paired over {p['episodes']} episodes (same tasks, same initial states): VST minus baseline = "
        f"**{100 * p['vst_minus_baseline']:+.1f} points**{_diff_ci(p.get('vst_minus_baseline_ci95'))}; "
        f"McNemar exact p = {m['p_value']:.3g} "
        f"(VST-only successes {m['a_only']}, baseline-only {m['b_only']}).",
    ]
    pk = report.get("picked_target_paired")
    if pk:
        lines.append(
            f"Picked the instructed object first (the spatial choice, apart from the place): baseline "
            f"{_pct(pk['baseline'])}, VST {_pct(pk['vst'])}, McNemar p = {pk['mcnemar']['p_value']:.3g}."
        )
    lk = report.get("picked_lookalike_paired")
    if lk:
        lines.append(
            f"Lifted the target's look-alike first (the wrong one of two identical objects): baseline "
            f"{_pct(lk['baseline'])}, VST {_pct(lk['vst'])}, McNemar p = {lk['mcnemar']['p_value']:.3g}."
        )
    budget = report.get("eval_settings", {}).get("max_steps")
    lines.append(
        f"Episode budget: {budget} steps per episode for every policy (`eval.max_steps`)."
        if budget
        else "Episode budget: each task's own (`eval.max_steps` unset)."
    )
    settings = report.get("eval_settings", {})
    ensemble, every = settings.get("temporal_ensemble"), settings.get("n_action_steps")
    if ensemble is not None:
        lines.append(
            f"Actions: temporal ensembling, coefficient {ensemble} (`eval.temporal_ensemble`), a chunk every "
            f"{every or 1} step(s) (`eval.n_action_steps`)."
        )
    elif every is not None:
        lines.append(f"Actions: the first {every} of each chunk executed (`eval.n_action_steps`).")
    if report.get("seeds", 1) > 1:
        lines += _seed_lines(report)
    lines += [
        "",
        "| policy | success | 95% CI (Wilson) | episodes |",
        "|---|---|---|---|",
    ]
    for label, s in summaries.items():
        o = s["overall"]
        lines.append(
            f"| {label} | {_pct(o['success_rate'])} | {_pct(o['ci95'][0])}-{_pct(o['ci95'][1])} | {o['episodes']} |"
        )
    lines += [
        "",
        "| task | baseline-VLA | VST-VLA | VST - baseline (95% CI) | McNemar p |",
        "|---|---|---|---|---|",
    ]
    for task, t in report["per_task"].items():
        lines.append(
            f"| {task} | {_pct(t['baseline'])} | {_pct(t['vst'])} | {100 * t['vst_minus_baseline']:+.1f}"
            f"{_diff_ci(t.get('vst_minus_baseline_ci95'))} | {t['mcnemar']['p_value']:.3g} |"
        )
    lines += [
        "",
        "Backbones on the held-out benchmark (vst-bench, mean over skills, %); vst = after RL; *_think = asked to "
        "think first:",
        "",
        "| backbone | spatial | general |",
        "|---|---|---|",
    ]
    for name in STAGES:
        res = report["bench"].get(name)
        if res is None and name.endswith("_think"):
            continue
        lines.append(f"| {name} | {_bench_overall(res, 'spatial')} | {_bench_overall(res, 'general')} |")
    lines += [
        "",
        "![success](success.png)",
        *(["", "![picked](picked.png)"] if pk else []),
        "",
        "Rollout videos: `eval/<policy>/videos/<task>/`.",
        "",
        "## Commands",
        "",
    ]
    for name, cmd in report["commands"].items():
        lines.append(f"- `{name}` ({report['seconds'][name]} s): `{cmd}`")
    return "\n".join(lines) + "\n"


@hydra.main(
    config_path=str(Path(__file__).resolve().parents[1] / "configs"),
    config_name="vla_compare",
    version_base="1.3",
)
def main(cfg: DictConfig) -> None:
    report = run_chain(cfg)
    if report:
        p = report["paired"]
        lo, hi = p["vst_minus_baseline_ci95"]
        log.info(
            "VST - baseline = %+.1f points (95%% CI %+.1f, %+.1f; McNemar p = %.3g)",
            100 * p["vst_minus_baseline"], 100 * lo, 100 * hi, p["mcnemar_vst_vs_baseline"]["p_value"],
        )  # fmt: skip
    print(f"vla-compare: wrote {Path(cfg.output_dir).resolve()}")


if __name__ == "__main__":
    main()
