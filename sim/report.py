"""Statistics and figures for closed-loop results: Wilson intervals, paired McNemar tests, bar charts, Markdown.

Success rates over 50 episodes carry +-13 points of uncertainty; every figure we print carries its interval so
that a difference is never read off two bare percentages.
"""

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for a binomial proportion (well-behaved at 0% and 100%, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar(a: list[bool], b: list[bool]) -> dict:
    """Exact (binomial) McNemar test on paired outcomes of two policies over the same initial states.

    Only discordant pairs carry information: b01 = a failed where b succeeded, b10 = the reverse.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must have equal length, got {len(a)} and {len(b)}")
    b10 = sum(1 for x, y in zip(a, b) if x and not y)
    b01 = sum(1 for x, y in zip(a, b) if y and not x)
    n = b10 + b01
    if n == 0:
        p = 1.0
    else:
        k = min(b10, b01)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        p = min(1.0, 2 * tail)
    return {"a_only": b10, "b_only": b01, "discordant": n, "p_value": p}


def paired_difference_ci(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """95% interval for rate(a) - rate(b) on paired outcomes: Newcombe's (1998) square-and-add of the two Wilson
    intervals, corrected for the pairs' correlation. McNemar says whether the policies differ; this says by how
    much, and unlike the Wald interval it stays inside [-1, 1] and keeps its coverage at rates near 0 or 1."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired outcomes must be non-empty and of equal length, got {len(a)} and {len(b)}")
    n = len(a)
    both = sum(1 for x, y in zip(a, b) if x and y)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    neither = n - both - a_only - b_only
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    (l1, u1), (l2, u2) = wilson(both + a_only, n), wilson(both + b_only, n)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only
    # Newcombe's correlation term, shrunk towards 0 (by n/2 when positive) so the interval errs on the wide side
    phi = 0.0 if margins == 0 else (cross - n / 2 if cross > n / 2 else min(cross, 0)) / math.sqrt(margins)
    lower = p1 - p2 - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = p1 - p2 + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return (max(-1.0, lower), min(1.0, upper))


def picking(eps: list[dict]) -> dict | None:
    """How often the first object lifted was the target / another one, and the choice accuracy among episodes
    that lifted anything (chance: 1 / (look-alikes + 1)): the spatial choice measured apart from the place that
    follows. None for episodes recorded before the field existed."""
    if not eps or any("picked" not in e for e in eps):
        return None
    n = len(eps)
    target = sum(e["picked"] == "target" for e in eps)
    wrong = sum(e["picked"] == "wrong" for e in eps)
    out = {
        "picked_target_rate": target / n,
        "picked_target_ci95": list(wilson(target, n)),
        "picked_wrong_rate": wrong / n,
        "choice_accuracy": target / (target + wrong) if target + wrong else None,
        "picked_lookalike_rate": None,
        "lookalike_choice_accuracy": None,
    }
    if all("picked_lookalike" in e for e in eps):  # older episodes lack it
        look = sum(e["picked_lookalike"] for e in eps)
        out["picked_lookalike_rate"] = look / n
        out["lookalike_choice_accuracy"] = target / (target + look) if target + look else None
    return out


def summarize(episodes: list[dict]) -> dict:
    """Per-task and overall success with Wilson intervals, failure reasons, mean steps, picking."""
    tasks: dict[str, list[dict]] = {}
    for ep in episodes:
        tasks.setdefault(ep["task"], []).append(ep)
    per_task = {}
    for name, eps in tasks.items():
        k, n = sum(e["success"] for e in eps), len(eps)
        lo, hi = wilson(k, n)
        per_task[name] = {
            "episodes": n,
            "successes": k,
            "success_rate": k / n,
            "ci95": [lo, hi],
            "mean_steps": float(np.mean([e["steps"] for e in eps])),
            "failure_reasons": dict(Counter(e["failure_reason"] for e in eps if not e["success"])),
            "picking": picking(eps),
        }
    k = sum(e["success"] for e in episodes)
    n = len(episodes)
    lo, hi = wilson(k, n)
    overall = {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi]}
    return {"overall": {**overall, "picking": picking(episodes)}, "tasks": per_task}


def _picked(node: dict) -> str:
    pk = node.get("picking")
    if not pk:
        return "-"
    acc, look = pk["choice_accuracy"], pk.get("picked_lookalike_rate")
    wrong = f"{100 * pk['picked_wrong_rate']:.0f}%" + (
        f" ({100 * look:.0f}% look-alike)" if look is not None else ""
    )
    return f"{100 * pk['picked_target_rate']:.0f}% / {wrong} / " + (
        f"{100 * acc:.0f}%" if acc is not None else "-"
    )


def markdown_table(summary: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| task | success | 95% CI (Wilson) | episodes | mean steps | top failure | picked target / wrong / "
        "choice acc. |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in summary["tasks"].items():
        reasons = t["failure_reasons"]
        top = (
            max(reasons, key=reasons.get) + f" ({reasons[max(reasons, key=reasons.get)]})" if reasons else "-"
        )
        lines.append(
            f"| {name} | {100 * t['success_rate']:.1f}% | {100 * t['ci95'][0]:.1f}-{100 * t['ci95'][1]:.1f} "
            f"| {t['episodes']} | {t['mean_steps']:.0f} | {top} | {_picked(t)} |"
        )
    o = summary["overall"]
    lines.append(
        f"| **overall** | **{100 * o['success_rate']:.1f}%** | {100 * o['ci95'][0]:.1f}-{100 * o['ci95'][1]:.1f} "
        f"| {o['episodes']} | | | {_picked(o)} |"
    )
    lines += [
        "",
        "picked: the first object lifted 3 cm was the target / another object (look-alike: same kind and colour "
        "as the target); choice accuracy = target / (target + wrong), the spatial choice apart from the place "
        "that follows.",
    ]
    return "\n".join(lines) + "\n"


def bar_chart(series: dict[str, dict], path: Path, title: str, ylabel: str = "success rate (%)") -> None:
    """Grouped bars of per-task success (one group per task, one bar per series) with Wilson error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(series.values()))["tasks"])
    width = 0.8 / len(series)
    x = np.arange(len(names) + 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(x) + 2), 4))
    for i, (label, summ) in enumerate(series.items()):
        rows = [summ["tasks"][n] for n in names] + [summ["overall"]]
        rate = np.array([r["success_rate"] for r in rows]) * 100
        lo = np.maximum(0.0, rate - np.array([r["ci95"][0] for r in rows]) * 100)
        hi = np.maximum(0.0, np.array([r["ci95"][1] for r in rows]) * 100 - rate)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, rate, width, yerr=[lo, hi], capsize=2, label=label)
    ax.set_xticks(x, [*names, "overall"], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path: Path, obj) -> None:
    """Write atomically: a reader never sees half a file, an interruption never truncates an old one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
