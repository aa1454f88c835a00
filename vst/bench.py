"""`vst-bench`: score any image-text-to-text checkpoint on the spatial benchmark and the general split.

    vst-bench model=PATH_OR_HUB_ID_OR_PRESET data=PATH_OR_DIR_OR_GLOB output_dir=DIR [batch_size=8 max_new_tokens=512 limit=N]

The model and processor load through `AutoModelForImageTextToText` / `AutoProcessor`, so a real Qwen2.5-VL-3B and a
local tiny model take the same path. Prompts come from the processor's chat template (images as image items where the
row's `<image>` placeholders stood); generation is greedy, batched with left padding and uses the KV cache. Rows are
scored by `vst.scoring.score_answer` (MRA for numbers) and appended to `predictions.jsonl` as they finish, so an
interrupted run resumes by re-running with the same `output_dir`. Written there:
`predictions.jsonl` (one line per row), `results.json` / `results.md` (per-skill scores, the overall mean over
skills and per-family means, in percent, for each split) and `results.png` (bar chart).
"""

import io
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from vst.backbone import resolve_backbone
from vst.data.io import read_rows
from vst.data.rows import THINK_INSTRUCTION
from vst.rewards import format_score
from vst.scoring import parse_meta, score_answer

log = logging.getLogger(__name__)

SPLITS = ("spatial", "general")
FAMILIES = ("single_image", "multi_image", "video", "general")
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
# Plain greedy decoding with the KV cache for every model: a checkpoint's own generation defaults (Qwen2.5-VL-Instruct
# ships repetition_penalty=1.05 and sampling settings) would otherwise make models decode differently.
GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "use_cache": True}
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BenchConfig:
    model: str
    output_dir: str
    data: str | None = None
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    batch_size: int = 8
    max_new_tokens: int = 512
    limit: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    system_prompt: str | None = None
    think: bool = False  # ask for a <think> block first (the CoT / RL prompt) instead of a direct answer
    cpu_threads: int | None = None  # torch intra-op threads on the CPU; None keeps torch's default
    bench_data_dir: str = "outputs/vst-bench/data"  # data=null: where the data engine writes the benchmark
    bench_per_skill: int = 50
    bench_seed: int = 0

    def __post_init__(self):
        if unknown := set(self.splits) - set(SPLITS):
            raise ValueError(f"unknown splits {sorted(unknown)}; choose from {list(SPLITS)}")
        if self.batch_size < 1 or self.max_new_tokens < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("batch_size, max_new_tokens and limit must be positive")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be positive or null, got {self.cpu_threads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")


# ---------------------------------------------------------------------------------------------------------- rows


@dataclass
class BenchRow:
    id: str
    split: str  # "spatial" or "general"
    skill: str
    family: str
    meta_info: str
    conversations: list[dict]
    images: list[bytes]


def bench_data_from_engine(data_dir: Path, per_skill: int, seed: int, splits: list[str]) -> Path:
    """Hook for `data=null`: the data engine writes the held-out benchmark (a fixed number of rows per skill) under
    `data_dir`, once; later runs find the finished shards and reuse them (same seed and config, same rows)."""
    from vst.data.cli import run as vst_data
    from vst.data.render import close_renderer

    root = Path(data_dir) / f"{per_skill}-per-skill-seed{seed}"
    try:
        for split, engine_split in (("spatial", "bench"), ("general", "bench_general")):
            if split in splits:
                cfg = {
                    "split": engine_split,
                    "per_skill": per_skill,
                    "seed": seed,
                    "output_dir": str(root / engine_split),
                }
                vst_data(cfg)
    finally:
        close_renderer()
    return root


def select_rows(rows: Iterable[dict], splits: list[str], limit: int | None) -> list[BenchRow]:
    """The rows of the wanted splits, at most `limit` per (split, skill), with their meta_info checked up front."""
    selected, per_skill, seen = [], defaultdict(int), set()
    for raw in rows:
        row_id = str(raw.get("id"))
        try:
            meta = parse_meta(raw["meta_info"])
        except ValueError as e:
            raise ValueError(f"row {row_id}: {e}") from e
        family = str(meta.get("family", ""))
        split = "general" if family == "general" or meta.get("split") == "bench_general" else "spatial"
        skill = str(meta.get("skill") or "unknown")
        if split not in splits or (limit is not None and per_skill[split, skill] >= limit):
            continue
        if row_id in seen:
            raise ValueError(f"duplicate row id {row_id!r}: results are keyed by id")
        _check_placeholders(row_id, raw["conversations"], len(raw.get("images") or []))
        seen.add(row_id)
        per_skill[split, skill] += 1
        meta_info = raw["meta_info"] if isinstance(raw["meta_info"], str) else json.dumps(raw["meta_info"])
        images = list(raw.get("images") or [])
        selected.append(BenchRow(row_id, split, skill, family, meta_info, list(raw["conversations"]), images))
    return selected


def build_messages(row: BenchRow, system_prompt: str | None = None, think: bool = False) -> list[dict]:
    """Chat messages for the prompt: every turn but the final answer, images in place of their placeholders.

    `think` appends the data engine's THINK_INSTRUCTION to the question, the cue the CoT and RL rows train on."""
    _check_placeholders(row.id, row.conversations, len(row.images))
    turns, images = _prompt_turns(row.conversations), iter(row.images)
    if think and turns and THINK_INSTRUCTION not in str(turns[-1].get("value", "")):
        turns = [*turns[:-1], {**turns[-1], "value": f"{turns[-1].get('value', '')}\n{THINK_INSTRUCTION}"}]
    messages = (
        [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    )
    for turn in turns:
        if turn.get("from") not in ROLES:
            raise ValueError(f"row {row.id}: unknown conversation role {turn.get('from')!r}")
        content = []
        for i, text in enumerate(str(turn.get("value", "")).split(IMAGE_PLACEHOLDER)):
            if i > 0:
                content.append({"type": "image", "image": _decode_image(next(images), row.id)})
            if text.strip():
                content.append({"type": "text", "text": text.strip()})
        messages.append({"role": ROLES[turn["from"]], "content": content})
    return messages


def _prompt_turns(conversations: list[dict]) -> list[dict]:
    """Every turn but a final gpt turn (the reference answer)."""
    return conversations[:-1] if conversations and conversations[-1].get("from") == "gpt" else conversations


def _check_placeholders(row_id: str, conversations: list[dict], n_images: int) -> None:
    n = sum(str(t.get("value", "")).count(IMAGE_PLACEHOLDER) for t in _prompt_turns(conversations))
    if n != n_images:
        raise ValueError(f"row {row_id}: {n} {IMAGE_PLACEHOLDER} placeholders but {n_images} images")


def _decode_image(data: bytes, row_id: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:  # PIL raises a zoo of types for corrupt bytes
        raise ValueError(f"row {row_id}: an image does not decode ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------------------- the model


def load_model(model_id: str, device: str = "auto", dtype: str = "auto"):
    """(model, processor) for any image-text-to-text checkpoint (directory or hub id), ready for batched
    left-padded generation."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = DTYPES[dtype] or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    processor = AutoProcessor.from_pretrained(model_id)
    model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=torch_dtype, device_map=device).eval()
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, processor


@torch.inference_mode()
def generate(model, processor, messages: list[list[dict]], max_new_tokens: int) -> list[tuple[str, int]]:
    """Greedy completions (text, number of generated tokens) for a batch of conversations."""
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    ).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(
        **inputs, **GREEDY, max_new_tokens=max_new_tokens, pad_token_id=processor.tokenizer.pad_token_id
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    stop_ids = _stop_token_ids(model, processor)
    lengths = [_length_until_stop(seq.tolist(), stop_ids) for seq in new_tokens]
    texts = processor.batch_decode([seq[:n] for seq, n in zip(new_tokens, lengths)], skip_special_tokens=True)
    return list(zip(texts, lengths))


def _stop_token_ids(model, processor) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | {processor.tokenizer.pad_token_id} - {None}


def _length_until_stop(ids: list[int], stop_ids: set[int]) -> int:
    return next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))


# ------------------------------------------------------------------------------------------------------ results


def load_predictions(path: Path) -> dict[str, dict]:
    """Records already written, by row id. A torn last line (an interrupted write) is cut off, nothing else."""
    if not path.exists():
        return {}
    records, good_bytes = {}, 0
    with path.open("rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                if line.endswith(b"\n"):
                    raise ValueError(
                        f"{path}: corrupt line {line[:80]!r} (not the last one); not touching it"
                    ) from None
                break
            if not isinstance(record, dict) or not {"id", "output"} <= record.keys():
                raise ValueError(f"{path}: line {line[:80]!r} is not a vst-bench record; not touching it")
            records[record["id"]] = record
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        log.warning("%s: dropping a torn final line left by an interrupted run", path)
        os.truncate(path, good_bytes)
    return records


def summarize(records: list[dict], think: bool = False) -> dict:
    """Per split: per-skill mean score, the overall mean over skills and per-family means over skills (percent).

    With `think`, also the share of well-formed outputs (`<think>...</think> answer`, the RL format reward) per skill
    and split, and the split's mean score over those: an unclosed or repeated think block leaves no answer and
    scores 0, so the format rate bounds what a thinking model can score (an output with no block at all is scored
    as a direct answer)."""
    by_skill, well_formed, by_split = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in records:
        by_skill[r["split"], r["family"], r["skill"]].append(r["score"])
        if think:
            ok = format_score(r["output"])
            well_formed[r["split"], r["family"], r["skill"]].append(ok)
            by_split[r["split"]].append((ok, r["score"]))
    summary = {}
    for split in SPLITS:
        skills = {
            skill: {"family": family, "n": len(scores), "score": 100 * sum(scores) / len(scores)}
            for (s, family, skill), scores in sorted(by_skill.items())
            if s == split
        }
        if think:
            for (s, _, skill), ok in well_formed.items():
                if s == split:
                    skills[skill]["well_formed"] = 100 * sum(ok) / len(ok)
        if not skills:
            continue
        families = defaultdict(list)
        for entry in skills.values():
            families[entry["family"]].append(entry["score"])
        summary[split] = {
            "overall": sum(e["score"] for e in skills.values()) / len(skills),
            "n": sum(e["n"] for e in skills.values()),
            "families": {f: sum(v) / len(v) for f, v in sorted(families.items())},
            "skills": skills,
        }
        if think:
            formed = [score for ok, score in by_split[split] if ok]
            summary[split]["well_formed"] = 100 * len(formed) / len(by_split[split])
            summary[split]["score_if_well_formed"] = 100 * sum(formed) / len(formed) if formed else None
    return summary


def write_markdown(summary: dict, model: str, path: Path) -> None:
    lines = [f"# vst-bench: `{model}`", ""]
    for split, result in summary.items():
        think = "well_formed" in result
        lines += [
            f"## {split} split: overall {result['overall']:.2f} (mean over {len(result['skills'])} skills, "
            f"{result['n']} rows)",
            "",
        ]
        if think:
            if_formed = result["score_if_well_formed"]
            lines += [
                f"Well-formed `<think>...</think> answer` outputs: {result['well_formed']:.1f}% of rows; "
                f"their mean score {'-' if if_formed is None else f'{if_formed:.2f}'} (an unclosed or repeated "
                "think block scores 0).",
                "",
            ]
        lines += ["| skill | family | n | score |" + (" well-formed % |" if think else ""),
                  "|---|---|---:|---:|" + ("---:|" if think else "")]  # fmt: skip
        lines += [
            f"| {s} | {e['family']} | {e['n']} | {e['score']:.2f} |"
            + (f" {e['well_formed']:.0f} |" if think else "")
            for s, e in result["skills"].items()
        ]
        empty = " |" if think else ""
        lines += [f"| **{f} (mean)** | | | {v:.2f} |{empty}" for f, v in result["families"].items()]
        lines += [f"| **overall** | | {result['n']} | {result['overall']:.2f} |{empty}", ""]
    path.write_text("\n".join(lines))


def write_chart(summary: dict, model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {f: f"C{i}" for i, f in enumerate(FAMILIES)}
    heights = [len(r["skills"]) + 1 for r in summary.values()]
    fig, axes = plt.subplots(
        len(summary),
        1,
        figsize=(8, 0.3 * sum(heights) + 1.5 * len(summary)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, (split, result) in zip(axes[:, 0], summary.items()):
        names = list(result["skills"])
        entries = list(result["skills"].values())
        bars = ax.barh(
            names, [e["score"] for e in entries], color=[colors.get(e["family"], "gray") for e in entries]
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        for family in dict.fromkeys(e["family"] for e in entries):  # legend entries only
            ax.barh([names[0]], [0], color=colors.get(family, "gray"), label=family)
        ax.axvline(result["overall"], color="black", linestyle="--", label=f"overall {result['overall']:.1f}")
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        ax.set_title(f"{split} split")
        ax.set_xlabel("score (%)")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"vst-bench: {model}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------- running


def run_bench(cfg: BenchConfig) -> dict:
    """Evaluate, resuming from `output_dir`, write the reports, and return the results dict."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_backbone(cfg.model)  # a preset / baseline / vst name, a directory or a hub id
    run_file = out / "bench_run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous["checkpoint"] != checkpoint:
            raise ValueError(
                f"{out} holds results of model {previous['checkpoint']!r}, not {checkpoint!r}; use another output_dir"
            )
        # outputs of another prompt or length limit would mix into the scores (think was off before it existed)
        for key, default in (("think", False), ("max_new_tokens", cfg.max_new_tokens)):
            if (was := previous.get(key, default)) != getattr(cfg, key):
                raise ValueError(
                    f"{out} holds results with {key}={was}, not {key}={getattr(cfg, key)}; "
                    "use another output_dir"
                )
    run = {
        "model": cfg.model,
        "checkpoint": checkpoint,
        "data": cfg.data,
        "think": cfg.think,
        "max_new_tokens": cfg.max_new_tokens,
    }
    run_file.write_text(json.dumps(run, indent=2))

    data = cfg.data or str(
        bench_data_from_engine(Path(cfg.bench_data_dir), cfg.bench_per_skill, cfg.bench_seed, cfg.splits)
    )
    rows = select_rows(read_rows(data), cfg.splits, cfg.limit)
    if not rows:
        raise ValueError(f"no rows of splits {cfg.splits} in {data!r}")
    predictions_path = out / "predictions.jsonl"
    done = load_predictions(predictions_path)
    todo = [r for r in rows if r.id not in done]
    log.info(
        "%d rows selected, %d already scored in %s, %d to generate",
        len(rows),
        len(rows) - len(todo),
        out,
        len(todo),
    )

    speed = {}
    if todo:
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        model, processor = load_model(checkpoint, cfg.device, cfg.dtype)
        # Similar prompts batch together: fewer pad tokens, and image-free rows never share a batch with images.
        todo.sort(
            key=lambda r: (r.split, len(r.images), sum(len(str(t.get("value", ""))) for t in r.conversations))
        )
        n_tokens, start = 0, time.perf_counter()
        with predictions_path.open("a") as f, tqdm(total=len(todo), desc="vst-bench", unit="row") as bar:
            for i in range(0, len(todo), cfg.batch_size):
                batch = todo[i : i + cfg.batch_size]
                messages = [build_messages(r, cfg.system_prompt, cfg.think) for r in batch]
                for row, (text, length) in zip(
                    batch, generate(model, processor, messages, cfg.max_new_tokens)
                ):
                    record = {
                        "id": row.id,
                        "split": row.split,
                        "skill": row.skill,
                        "family": row.family,
                        "score": score_answer(text, row.meta_info),
                        "output": text,
                        "new_tokens": length,
                    }
                    done[row.id] = record
                    f.write(json.dumps(record) + "\n")
                    n_tokens += length
                f.flush()
                bar.update(len(batch))
        seconds = time.perf_counter() - start
        speed = {
            "rows": len(todo),
            "seconds": seconds,
            "rows_per_s": len(todo) / seconds,
            "new_tokens_per_s": n_tokens / seconds,
            "batch_size": cfg.batch_size,
            "device": str(getattr(model, "device", cfg.device)),
        }

    # Re-scored from the stored outputs on every run, so a resumed run and a fixed scorer agree with a fresh one.
    records = [dict(done[r.id], score=score_answer(done[r.id]["output"], r.meta_info)) for r in rows]
    summary = summarize(records, cfg.think)
    results = {
        "model": cfg.model,
        "checkpoint": checkpoint,
        "data": data,
        "think": cfg.think,
        "splits": summary,
        "speed": speed,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_markdown(summary, cfg.model, out / "results.md")
    write_chart(summary, cfg.model, out / "results.png")
    for split, result in summary.items():
        log.info(
            "%s split: overall %.2f over %d skills (%d rows)",
            split,
            result["overall"],
            len(result["skills"]),
            result["n"],
        )
    log.info("vst-bench wrote predictions.jsonl, results.json, results.md, results.png to %s", out)
    return results


# "../configs" as an absolute path: Hydra reads a relative config_path as a Python package ("pkg://configs") when
# the command runs as a console script, and configs/ is not a package.
@hydra.main(
    config_path=str(Path(__file__).resolve().parents[1] / "configs"),
    config_name="vst_bench",
    version_base="1.3",
)
def main(cfg: DictConfig) -> None:
    run_bench(BenchConfig(**OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
