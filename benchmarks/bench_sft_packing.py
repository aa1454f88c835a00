"""SFT throughput with sequence packing vs padded batches: same rows, same model, one run, side by side.

    .venv/bin/python benchmarks/bench_sft_packing.py                         # tiny preset, 160 rows, CPU
    .venv/bin/python benchmarks/bench_sft_packing.py model=small rows=2000    # on a GPU

Both modes train one epoch over the same data-engine rows (perception, CoT, RL, general; single-, multi-image
and video), each with its own copy of the same initial model, through vst-train's own pieces (row encoding,
epoch plan, pack/pad, loss, AdamW with its LR groups). Their steps alternate (one packed step, then padded steps
until the padded side has caught up in samples), so a shared, drifting machine load hits both alike. Each step
is timed from row encoding to optimizer step. Real tokens only: padding does not count as throughput.
Writes <output_dir>/bench_sft_packing.json.
"""

import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vst.backbone import build_backbone
from vst.data.generate import DataConfig, generate_rows
from vst.packing import IGNORE, pack, pad, use_varlen_attention
from vst.sft import (
    Plan,
    RowDataset,
    TrainConfig,
    param_groups,
    part_lrs,
    prepare_model,
    row_length,
    token_loss_sum,
)

DEFAULTS = {
    "model": "tiny",
    "rows": 160,
    "seed": 0,
    "pack_tokens": 2048,  # packed micro-batch: up to this many tokens
    "batch_size": 8,  # padded micro-batch: this many samples
    "max_seq_len": 1024,  # longer rows are left out of both modes
    "device": "cuda" if torch.cuda.is_available() else "cpu",
    "output_dir": "outputs/bench/sft_packing",
}


class Mode:
    """One side of the comparison: its model copy, optimizer, micro-batches and running totals."""

    def __init__(self, name, opts, rows, lengths):
        self.name, self.packing = name, name == "packed"
        model, self.processor = build_backbone(opts.model, seed=opts.seed, device=opts.device)
        t = TrainConfig()
        if self.packing:
            use_varlen_attention(model)
        self.model = prepare_model(model, t).train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, part_lrs(t)))
        self.dataset = RowDataset(rows, self.processor, model.model.get_rope_index)
        plan = Plan(lengths, opts.seed, self.packing, opts.pack_tokens, opts.batch_size, 1, 1)
        self.batches, self.device = plan.epoch(0), opts.device
        self.seconds, self.samples, self.tokens, self.steps = 0.0, 0, 0, 0

    def step(self) -> None:
        t0 = time.perf_counter()
        samples = [self.dataset[i] for i in self.batches[self.steps]]
        batch = pack(samples) if self.packing else pad(samples, self.processor.tokenizer.pad_token_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        loss = token_loss_sum(self.model, batch) / (batch["targets"] != IGNORE).sum()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.samples += len(samples)
        self.tokens += sum(len(s["input_ids"]) for s in samples)
        self.steps += 1

    @property
    def done(self) -> bool:
        return self.steps == len(self.batches)

    def report(self) -> dict:
        return {
            "steps": self.steps,
            "samples": self.samples,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens / self.seconds,
            "samples_per_s": self.samples / self.seconds,
        }


def main() -> None:
    opts = OmegaConf.merge(DEFAULTS, OmegaConf.from_cli(sys.argv[1:]))
    torch.manual_seed(opts.seed)
    rows = generate_rows(
        DataConfig(seed=opts.seed, row_mix={"perception": 3, "cot": 1, "rl": 1, "general": 1}),
        range(opts.rows),
    )
    _, processor = build_backbone(opts.model, seed=opts.seed)
    lengths = [row_length(r, processor) for r in rows]
    kept = [i for i, n in enumerate(lengths) if n <= opts.max_seq_len]
    rows, lengths = [rows[i] for i in kept], [lengths[i] for i in kept]
    packed, padded = Mode("packed", opts, rows, lengths), Mode("padded", opts, rows, lengths)
    print(
        f"{len(rows)} rows ({opts.rows - len(rows)} over max_seq_len), {sum(lengths)} tokens, model={opts.model}"
    )
    while not (packed.done and padded.done):
        if not packed.done:
            packed.step()
        while not padded.done and (packed.done or padded.samples < packed.samples):
            padded.step()
        print(
            f"\rpacked {packed.steps}/{len(packed.batches)} steps, padded {padded.steps}/{len(padded.batches)}",
            end="",
        )
    print()
    result = {"config": OmegaConf.to_container(opts), "packed": packed.report(), "padded": padded.report()}
    for key in ("tokens_per_s", "samples_per_s"):
        result[f"ratio_{key}"] = result["packed"][key] / result["padded"][key]
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_sft_packing.json").write_text(json.dumps(result, indent=2))
    print(f"{'mode':8} {'steps':>6} {'tokens/s':>10} {'samples/s':>10}")
    for mode in ("packed", "padded"):
        r = result[mode]
        print(f"{mode:8} {r['steps']:6d} {r['tokens_per_s']:10.0f} {r['samples_per_s']:10.2f}")
    print(
        f"packed / padded: tokens/s x{result['ratio_tokens_per_s']:.2f}, samples/s x{result['ratio_samples_per_s']:.2f} "
        f"(pack_tokens={opts.pack_tokens}, batch_size={opts.batch_size}; wrote {out / 'bench_sft_packing.json'})"
    )


if __name__ == "__main__":
    main()
