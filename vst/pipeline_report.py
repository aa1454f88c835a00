"""The VST pipeline's result: every stage's checkpoint on the held-out benchmark, side by side, plus the curves.

Reads what `vla-compare` (or the same commands by hand) left in one directory: `bench/<stage>/results.json`
(vst-bench), `backbones/<stage>/metrics.jsonl` (vst-train), `data/rl/manifest.json` (which skills RL trained) and
`steps.json` (vla-compare's step times, for the pipeline's compute budget); writes `backbones.json`, `backbones.md`, `backbones.png` (per-skill scores) and `curves.png` (training curves).
Each delta comes with a paired bootstrap 95% interval over the benchmark's questions (`bench/<stage>/predictions.jsonl`):
with 20 questions per skill a few points are within noise, and the targets are a few points.
"""

import json
from pathlib import Path

# bench names: pretrain, + SFT, + CoT, + RL; *_think: the same checkpoints asked to think first (vst-bench think=true),
# the prompt their CoT and RL rows train on, so RL's effect is measured in the mode RL trains.
STAGES = ("baseline", "sft", "cot", "vst", "cot_think", "vst_think")
TRAIN_STAGES = ("pretrain", "sft", "cot", "rl")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _scores(out: Path, stage: str) -> dict[str, tuple[str, float]]:
    """Per benchmark question: (skill, score). Read-only: a torn last line of an interrupted bench is skipped."""
    path = out / "bench" / stage / "predictions.jsonl"
    if not path.exists():
        return {}
    lines = path.read_text().split("\n")[:-1]  # the part after the last newline is empty or a torn write
    try:
        return {r["id"]: (r["skill"], float(r["score"])) for r in map(json.loads, filter(None, lines))}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a vst-bench predictions file ({e!r})") from None


def paired_interval(
    out: Path, a: str, b: str, skills: list[str], reps: int = 2000, seed: int = 0
) -> list[float] | None:
    """95% interval of (a - b), the mean over `skills` of the per-skill mean score, by a paired bootstrap.

    Questions are resampled within each skill (the metric weighs skills equally) and the same draw is used for both
    stages, so what the two checkpoints share (the question's difficulty) cancels. None without both stages'
    per-question scores on every listed skill."""
    import numpy as np

    sa, sb = _scores(out, a), _scores(out, b)
    diffs = {s: [] for s in skills}
    for qid, (skill, score) in sa.items():
        if skill in diffs and qid in sb:
            diffs[skill].append(score - sb[qid][1])
    if not skills or any(not d for d in diffs.values()):
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(reps)
    for d in diffs.values():
        d = np.asarray(d)
        total += d[rng.integers(0, len(d), size=(reps, len(d)))].mean(axis=1)
    lo, hi = np.percentile(100 * total / len(skills), [2.5, 97.5])
    return [round(float(lo), 2), round(float(hi), 2)]


def backbone_table(out: Path) -> dict:
    """Per-skill and overall scores of every stage; the RL-trained skills' mean; the deltas the method is about."""
    bench = {}
    for name in STAGES:
        path = out / "bench" / name / "results.json"
        if path.exists():
            bench[name] = json.loads(path.read_text())["splits"]
    if not bench:
        raise FileNotFoundError(f"no vst-bench results under {out / 'bench'}")
    rl_manifest = out / "data" / "rl" / "manifest.json"
    rl_skills = sorted(json.loads(rl_manifest.read_text())["counts"]["skill"]) if rl_manifest.exists() else []
    table = {"stages": {}, "rl_skills": rl_skills}
    split_skills = {}  # split -> its skills, for the intervals
    for name, splits in bench.items():
        for split in ("spatial", "general"):
            split_skills.setdefault(split, sorted(splits.get(split, {}).get("skills", {})))
        spatial, general = splits.get("spatial", {}), splits.get("general", {})
        skills = {s: e["score"] for split in (spatial, general) for s, e in split.get("skills", {}).items()}
        table["stages"][name] = {
            "spatial": spatial.get("overall"),
            "general": general.get("overall"),
            "rl_skills": _mean([skills[s] for s in rl_skills if s in skills]),
            "well_formed": spatial.get("well_formed"),  # think benches: share of `<think>...</think> answer`
            "skills": skills,
        }
    st = table["stages"]

    def delta(a: str, b: str, key: str) -> float | None:
        if a in st and b in st and st[a][key] is not None and st[b][key] is not None:
            return st[a][key] - st[b][key]
        return None

    think = "cot_think" in st and "vst_think" in st
    rl_pair = ("vst_think", "cot_think") if think else ("vst", "cot")
    table["intervals"] = {  # paired bootstrap 95% over questions, same keys as the deltas
        key: paired_interval(out, a, b, skills) if a in st and b in st else None
        for key, (a, b), skills in (
            ("sft_minus_baseline_spatial", ("sft", "baseline"), split_skills.get("spatial", [])),
            ("rl_minus_cot_rl_skills", rl_pair, rl_skills),
            ("rl_minus_cot_rl_skills_direct", ("vst", "cot"), rl_skills),
            ("vst_minus_baseline_spatial", ("vst", "baseline"), split_skills.get("spatial", [])),
            ("vst_minus_baseline_general", ("vst", "baseline"), split_skills.get("general", [])),
        )
    }
    table["deltas"] = {
        "sft_minus_baseline_spatial": delta("sft", "baseline", "spatial"),  # target >= +15
        # target >= +2; measured with the think prompt when both think benches exist
        "rl_minus_cot_rl_skills": delta("vst_think", "cot_think", "rl_skills")
        if think
        else delta("vst", "cot", "rl_skills"),
        "rl_minus_cot_mode": "think" if think else "direct",
        "rl_minus_cot_rl_skills_direct": delta("vst", "cot", "rl_skills"),
        "vst_minus_baseline_spatial": delta("vst", "baseline", "spatial"),
        "vst_minus_baseline_general": delta("vst", "baseline", "general"),  # target within +-2
    }
    return table


# the pipeline's steps in vla-compare's steps.json, grouped as the compute budget is reported
TIME_GROUPS = {
    "data": "data_",
    "pretrain": "train_pretrain",
    "sft": "train_sft",
    "cot": "train_cot",
    "rl": "train_rl",
    "bench": "bench_",
}


def pipeline_minutes(out: Path) -> dict | None:
    """Wall-clock minutes per pipeline stage and in all, from steps.json (None without one).

    A step that was interrupted and resumed counts only its last attempt."""
    path = out / "steps.json"
    if not path.exists():
        return None
    steps = json.loads(path.read_text())
    minutes = {
        group: round(sum(v["seconds"] for k, v in steps.items() if k.startswith(prefix)) / 60, 1)
        for group, prefix in TIME_GROUPS.items()
    }
    minutes["total"] = round(sum(minutes.values()), 1)
    return minutes


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ci(table: dict, key: str) -> str:
    ci = table.get("intervals", {}).get(key)
    return "" if ci is None else f" [95% CI {ci[0]:.1f}, {ci[1]:.1f}]"


def markdown(table: dict) -> str:
    st, d = table["stages"], table["deltas"]
    names = list(st)
    lines = [
        "# VST pipeline on the held-out benchmark (vst-bench, %)",
        "",
        "baseline = general pretraining only; sft, cot = after those stages; vst = after RL (all asked directly);",
        "cot_think, vst_think = the CoT and RL checkpoints asked to think first (`vst-bench think=true`).",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| **spatial (mean over skills)** | " + " | ".join(_fmt(st[n]["spatial"]) for n in names) + " |",
        "| **general (mean over skills)** | " + " | ".join(_fmt(st[n]["general"]) for n in names) + " |",
        "| **RL-trained skills (mean)** | " + " | ".join(_fmt(st[n]["rl_skills"]) for n in names) + " |",
    ]
    if any(st[n].get("well_formed") is not None for n in names):  # what RL's format reward acts on
        lines.append(
            "| think outputs well formed (spatial, %) | "
            + " | ".join(_fmt(st[n].get("well_formed")) for n in names)
            + " |"
        )
    skills = sorted({s for n in names for s in st[n]["skills"]})
    for s in skills:
        mark = " (RL)" if s in table["rl_skills"] else ""
        lines.append(f"| {s}{mark} | " + " | ".join(_fmt(st[n]["skills"].get(s)) for n in names) + " |")
    lines += [
        "",
        f"- SFT - baseline, spatial: {_fmt(d['sft_minus_baseline_spatial'])} points"
        f"{_ci(table, 'sft_minus_baseline_spatial')} (target >= +15)",
        f"- RL - CoT, RL-trained skills ({d['rl_minus_cot_mode']}): {_fmt(d['rl_minus_cot_rl_skills'])} points"
        f"{_ci(table, 'rl_minus_cot_rl_skills')} (target >= +2; asked directly: "
        f"{_fmt(d['rl_minus_cot_rl_skills_direct'])}{_ci(table, 'rl_minus_cot_rl_skills_direct')})",
        f"- VST - baseline, spatial: {_fmt(d['vst_minus_baseline_spatial'])} points"
        f"{_ci(table, 'vst_minus_baseline_spatial')}",
        f"- VST - baseline, general: {_fmt(d['vst_minus_baseline_general'])} points"
        f"{_ci(table, 'vst_minus_baseline_general')} (target within 2)",
        "",
    ]
    if any(v is not None for v in table.get("intervals", {}).values()):
        lines += [
            "Intervals: paired bootstrap over the benchmark's questions, resampled within each skill.",
            "",
        ]
    if table.get("minutes"):
        m = table["minutes"]
        lines += [
            "Wall-clock minutes (steps.json; a resumed step counts its last attempt only): "
            + ", ".join(f"{k} {v}" for k, v in m.items() if k != "total")
            + f"; **total {m['total']}** (target < 90).",
            "",
        ]
    lines += [
        "![per-skill scores](backbones.png)",
        "",
        "![training curves](curves.png)",
        "",
    ]
    return "\n".join(lines)


def chart(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    st = table["stages"]
    skills = sorted({s for n in st for s in st[n]["skills"]})
    y = np.arange(len(skills))
    h = 0.8 / len(st)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(skills) + 1.5))
    for i, (name, entry) in enumerate(st.items()):
        ax.barh(y + i * h, [entry["skills"].get(s, 0.0) for s in skills], h, label=name)
    ax.set_yticks(y + 0.4 - h / 2, skills, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("score (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("vst-bench per skill after each stage")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_records(out: Path, stage: str) -> list[dict]:
    """A stage's logged metrics, one record per step: a resumed run logs the steps it replays again (last wins)."""
    file = out / "backbones" / stage / "metrics.jsonl"
    recs = [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []
    return sorted({r["step"]: r for r in recs}.values(), key=lambda r: r["step"])


def curves(out: Path, path: Path) -> None:
    """Loss of the supervised stages and reward / accuracy / format rate of RL against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TRAIN_STAGES), figsize=(4 * len(TRAIN_STAGES), 3.2))
    for ax, stage in zip(axes, TRAIN_STAGES):
        recs = training_records(out, stage)
        keys = ("reward", "accuracy", "format") if stage == "rl" else ("loss",)
        for key in keys:
            pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_title(stage)
        ax.set_xlabel("step")
        if recs:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_backbone_report(out: Path) -> dict:
    table = backbone_table(out)
    table["minutes"] = pipeline_minutes(out)
    (out / "backbones.json").write_text(json.dumps(table, indent=2))
    (out / "backbones.md").write_text(markdown(table))
    chart(table, out / "backbones.png")
    curves(out, out / "curves.png")
    return table
