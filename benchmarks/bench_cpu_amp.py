"""bf16 autocast on the CPU (vst/cpu_amp.py): the tiny VLA's training step and chunk decoding, and the tiny
backbone's packed SFT step, fp32 vs AMP.

    .venv/bin/python benchmarks/bench_cpu_amp.py [--reps 8] [--threads 1] [--batch 8]

Side by side in one process, on the same weights and the same batches (the full preset's shapes: two 128 px
cameras resized to 112, the state, chunk 8, 7-D actions; AdamW):
- fp32: the policy as trained before `use_amp` (fp32 weights, fp32 everywhere);
- amp, bf16 attention: plain `torch.autocast(cpu, bf16)`, attention left to autocast (what the fix avoids);
- amp: `use_amp=true` (bf16 matmuls, fp32 attention and output head, fp32 weights and optimiser state).
Training: ms per step (forward + backward + AdamW) and the ratio to fp32, plus the first steps' losses of each
(they should agree to ~1%). Inference: ms per `predict_action_chunk` for 1 and 8 envs, fp32 (what the policy
does on the CPU, use_amp or not) vs its decoding loop inside bf16 autocast (why it does not: the one-token
decoding steps pay for the casts). Medians over `--reps`,
the variants taking turns so that load on a shared machine hits all alike: trust the ratios.
SFT: vst-train's packed micro-batches (2048 tokens of data-engine rows: perception, CoT, RL, general), the same
three variants (`train.bf16=true` on the CPU is the last one), ms per step and the first losses.
"""

import argparse
import json
import os
import statistics
import time

import torch
from bench_vla_decoding import env_batch, features  # this directory is on sys.path

from vla.configuration_vla import VLAConfig
from vla.inference import decode_actions
from vla.modeling_vla import VLAPolicy


def make_policy(variant: str, cache_dir: str | None) -> VLAPolicy:
    inputs, outputs = features(128)
    cfg = VLAConfig(
        backbone="tiny",
        cache_dir=cache_dir,
        device="cpu",
        chunk_size=8,
        n_action_steps=8,
        image_size=112,
        use_amp=variant == "amp",
        input_features=inputs,
        output_features=outputs,
    )
    torch.manual_seed(0)
    policy = VLAPolicy(cfg)
    if variant == "amp_bf16_attention":
        policy.config.use_amp = True  # autocast on, attention left at sdpa: the slow bf16 CPU kernels
    return policy


def train_batches(n: int, batch_size: int) -> list[dict]:
    batches = []
    for i in range(n):
        batch = env_batch(batch_size, "cpu", seed=i)
        gen = torch.Generator().manual_seed(i)
        batch["action"] = torch.rand(batch_size, 8, 7, generator=gen) * 2 - 1  # normalised to [-1, 1]
        batch["action_is_pad"] = torch.zeros(batch_size, 8, dtype=torch.bool)
        batches.append(batch)
    return batches


def sft_steps(reps: int) -> tuple[dict, dict]:
    """ms per packed SFT step (row encoding to optimiser step) and the first losses of each variant."""
    from vst.backbone import build_backbone
    from vst.cpu_amp import fp32_attention
    from vst.data.generate import DataConfig, generate_rows
    from vst.packing import IGNORE, pack, use_varlen_attention
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

    rows = generate_rows(
        DataConfig(seed=0, row_mix={"perception": 3, "cot": 1, "rl": 1, "general": 1}), range(200)
    )
    _, processor = build_backbone("tiny", seed=0)
    lengths = [row_length(r, processor) for r in rows]
    kept = [i for i, n in enumerate(lengths) if n <= 1024]
    rows, lengths = [rows[i] for i in kept], [lengths[i] for i in kept]
    batches = Plan(lengths, 0, True, 2048, 8, 1, 1).epoch(0)[: reps + 1]
    variants = {}
    for name in ("fp32", "amp_bf16_attention", "amp"):
        model, proc = build_backbone("tiny", seed=0)
        use_varlen_attention(model)
        if name == "amp":
            fp32_attention(model)
        model = prepare_model(model, TrainConfig()).train()
        opt = torch.optim.AdamW(param_groups(model, part_lrs(TrainConfig())))
        variants[name] = model, opt, RowDataset(rows, proc, model.model.get_rope_index)
    times = {v: [] for v in variants}
    losses = {v: [] for v in variants}
    for idx in batches:
        for name, (model, opt, ds) in variants.items():
            t = time.perf_counter()
            batch = pack([ds[i] for i in idx])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "fp32"):
                loss = token_loss_sum(model, batch) / (batch["targets"] != IGNORE).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
            times[name].append(time.perf_counter() - t)
            losses[name].append(round(loss.item(), 4))
    return {v: 1000 * statistics.median(ts[1:]) for v, ts in times.items()}, {
        v: x[:4] for v, x in losses.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cache-dir", default=os.environ.get("VST_CACHE"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from vst.cpu_amp import native_bf16

    variants = ["fp32", "amp_bf16_attention", "amp"]
    policies = {v: make_policy(v, args.cache_dir) for v in variants}
    for v in variants[1:]:
        policies[v].load_state_dict(policies["fp32"].state_dict())
    optims = {v: torch.optim.AdamW(p.get_optim_params(), lr=1e-4) for v, p in policies.items()}
    batches = train_batches(args.reps + 2, args.batch)

    times = {v: [] for v in variants}
    losses = {v: [] for v in variants}
    for batch in batches:
        for v in variants:
            policy, opt = policies[v], optims[v]
            policy.train()
            t = time.perf_counter()
            loss, _ = policy.forward(batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            times[v].append(time.perf_counter() - t)
            losses[v].append(round(loss.item(), 4))
    step_ms = {v: 1000 * statistics.median(ts[2:]) for v, ts in times.items()}  # two warm-up steps

    decode_ms = {}
    amp = policies["amp"].eval()
    for n in (1, 8):
        batch = env_batch(n, "cpu", seed=100 + n)
        ts = {v: [] for v in ("fp32", "autocast")}
        with torch.no_grad():
            for rep in range(args.reps + 1):
                for v in ts:
                    t = time.perf_counter()
                    inputs = amp.model_inputs(batch)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v == "autocast"):
                        decode_actions(amp.model, inputs, amp.num_target_tokens, amp.token_range)
                    if rep:
                        ts[v].append(time.perf_counter() - t)
        decode_ms[n] = {v: 1000 * statistics.median(x) for v, x in ts.items()}

    sft_ms, sft_losses = sft_steps(args.reps)
    result = {
        "native_bf16": native_bf16(),
        "sft_step_ms": sft_ms,
        "sft_speedup_vs_fp32": {v: sft_ms["fp32"] / sft_ms[v] for v in variants},
        "sft_first_losses": sft_losses,
        "threads": args.threads,
        "batch": args.batch,
        "train_step_ms": step_ms,
        "train_speedup_vs_fp32": {v: step_ms["fp32"] / step_ms[v] for v in variants},
        "first_losses": {v: losses[v][:4] for v in variants},
        "chunk_ms": decode_ms,
        "chunk_speedup_vs_fp32": {n: d["fp32"] / d["autocast"] for n, d in decode_ms.items()},
    }
    print(f"native bf16 on this CPU: {result['native_bf16']}; {args.threads} thread(s), batch {args.batch}")
    print("| training step | ms | x fp32 |\n|---|---:|---:|")
    for v in variants:
        print(f"| {v} | {step_ms[v]:.0f} | {step_ms['fp32'] / step_ms[v]:.2f} |")
    print("| chunk decoding (ms) | 1 env | 8 envs |\n|---|---:|---:|")
    for v in ("fp32", "autocast"):
        print(f"| {v} | {decode_ms[1][v]:.0f} | {decode_ms[8][v]:.0f} |")
    print("first losses:", json.dumps(result["first_losses"]))
    print("| SFT step (packed, 2048 tokens) | ms | x fp32 |\n|---|---:|---:|")
    for v in variants:
        print(f"| {v} | {sft_ms[v]:.0f} | {sft_ms['fp32'] / sft_ms[v]:.2f} |")
    print("SFT first losses:", json.dumps(sft_losses))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
