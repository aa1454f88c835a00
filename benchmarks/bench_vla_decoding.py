"""VLA decoding speed: the policy's constrained, KV-cached, batched decoding vs a plain `model.generate` loop.

    .venv/bin/python benchmarks/bench_vla_decoding.py [--reps 5] [--threads 1]          # tiny VLA, CPU
    .venv/bin/python benchmarks/bench_vla_decoding.py --gpu-3b                          # 3B-shaped VLA, bf16, CUDA

For 1 and 8 envs and chunk sizes 1 and 8, on the same model and the same observations (two 128 px cameras,
the state, a spatial instruction), side by side in one process:
- ours: `policy.predict_action_chunk(batch)` for all envs at once (prompt + images, one prefill, K*D greedy
  steps on the KV cache restricted to the action-token slice);
- generate loop: per env, `model.generate(..., do_sample=False)` with HF's logits processor constraining it to
  the action tokens (the usual way to serve a VLA), same prompt and images;
- generate batched: one `model.generate` call for all envs (left-padded), to separate batching from the loop.
Every variant's actions are checked equal to ours. Reported: ms per chunk call, ms per `select_action` (a chunk
call serves K of them), actions/s over all envs, and our speed-up. Timings are medians of `--reps` runs after
one warm-up; on a shared machine trust the ratios more than the absolute figures.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from lerobot.configs import FeatureType, PolicyFeature
from transformers import LogitsProcessorList

from vla.configuration_vla import VLAConfig
from vla.decoding import ActionTokenLogitsProcessor, parse_action_tokens
from vla.modeling_vla import VLAPolicy

INSTRUCTION = "pick up the red cube that is left of the bowl and place it on the plate"


def features(image_size: int) -> tuple[dict, dict]:
    inputs = {
        f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size))
        for c in ("agentview", "wrist")
    }
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (8,))
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (7,))}


def make_policy(
    backbone: str, chunk: int, device: str, dtype: str, image_size: int, cache_dir: str | None
) -> VLAPolicy:
    inputs, outputs = features(128)
    cfg = VLAConfig(
        backbone=backbone,
        cache_dir=cache_dir,
        device=device,
        dtype=dtype,
        chunk_size=chunk,
        n_action_steps=chunk,
        image_size=image_size,
        input_features=inputs,
        output_features=outputs,
    )
    torch.manual_seed(0)
    policy = VLAPolicy(cfg).to(device).eval()
    gen = torch.Generator().manual_seed(0)  # large random LLM weights: answers depend on the input
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if p.ndim >= 2 and "language_model" in name:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.5).to(p.dtype))
    return policy


def env_batch(n: int, device: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        f"observation.images.{c}": torch.from_numpy(rng.random((n, 3, 128, 128), dtype=np.float32))
        for c in ("agentview", "wrist")
    }
    batch["observation.state"] = torch.from_numpy(rng.uniform(-1, 1, (n, 8)).astype(np.float32))
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["task"] = [INSTRUCTION] * n
    return batch


def generate_chunk(policy: VLAPolicy, batch: dict, per_env: bool) -> torch.Tensor:
    """HF generate with the action-token constraint, per env in a loop or batched."""
    n = len(batch["task"])
    rows = [slice(i, i + 1) for i in range(n)] if per_env else [slice(0, n)]
    processors = LogitsProcessorList([ActionTokenLogitsProcessor(policy.token_range)])
    chunks = []
    for rows_i in rows:
        sub = {k: v[rows_i] for k, v in batch.items()}
        inputs = policy.model_inputs(sub)
        mm = (inputs["input_ids"] == policy.model.config.image_token_id).int()
        out = policy.model.generate(
            **inputs,
            mm_token_type_ids=mm,
            max_new_tokens=policy.num_target_tokens,
            min_new_tokens=policy.num_target_tokens,
            do_sample=False,
            logits_processor=processors,
            pad_token_id=policy.pad_token_id,
        )
        chunks.append(
            parse_action_tokens(out[:, inputs["input_ids"].shape[1] :].cpu(), policy.action_tokenizer)
        )
    return torch.as_tensor(np.concatenate(chunks), dtype=torch.float32)


def interleaved(fns: dict, reps: int, sync) -> dict[str, float]:
    """Median seconds per call of each function, the functions taking turns so that load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(policy: VLAPolicy, batch: dict, reps: int, sync, exact: bool) -> dict[str, float]:
    with torch.no_grad():
        ours = policy.predict_action_chunk(batch).cpu()
        for per_env in (True, False):
            same = torch.equal(generate_chunk(policy, batch, per_env), ours)
            assert same or not exact, f"generate (per_env={per_env}) disagrees with our decoding"
        return interleaved(
            {
                "ours": lambda: policy.predict_action_chunk(batch),
                "generate_loop": lambda: generate_chunk(policy, batch, per_env=True),
                "generate_batched": lambda: generate_chunk(policy, batch, per_env=False),
            },
            reps,
            sync,
        )


def bench(
    backbone: str,
    device: str,
    dtype: str,
    envs: list[int],
    chunks: list[int],
    reps: int,
    image_size: int,
    cache_dir,
) -> list[dict]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for chunk in chunks:
        policy = make_policy(backbone, chunk, device, dtype, image_size, cache_dir)
        for n in envs:
            t = measure(policy, env_batch(n, device), reps, sync, exact=dtype == "float32")
            row = {"envs": n, "chunk": chunk, "tokens_per_chunk": policy.num_target_tokens}
            for name, seconds in t.items():
                row[f"{name}_ms_per_call"] = round(1000 * seconds, 1)
                row[f"{name}_ms_per_select_action"] = round(1000 * seconds / chunk, 2)
                row[f"{name}_actions_per_s"] = round(n * chunk / seconds, 1)
            row["speedup_vs_generate_loop"] = round(t["generate_loop"] / t["ours"], 2)
            row["speedup_vs_generate_batched"] = round(t["generate_batched"] / t["ours"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| envs | K | ours ms/call | ours ms/select_action | ours actions/s | generate-loop actions/s | generate-batched actions/s | speed-up vs loop | vs batched |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['envs']} | {r['chunk']} | {r['ours_ms_per_call']} | {r['ours_ms_per_select_action']} | "
            f"{r['ours_actions_per_s']} | {r['generate_loop_actions_per_s']} | {r['generate_batched_actions_per_s']} | "
            f"{r['speedup_vs_generate_loop']}x | {r['speedup_vs_generate_batched']}x |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a loaded 2-core box)"
    )
    ap.add_argument("--envs", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 8])
    ap.add_argument(
        "--gpu-3b", action="store_true", help="3B-shaped Qwen2.5-VL, random weights, bf16 on CUDA"
    )
    ap.add_argument("--cache-dir", default=None, help="where built presets go (default: a temporary dir)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        if args.gpu_3b:
            if not torch.cuda.is_available():
                raise SystemExit("--gpu-3b needs a CUDA device")
            setup = dict(backbone="qwen2_5_vl_3b_shape", device="cuda", dtype="bfloat16", image_size=224)
        else:
            setup = dict(backbone="tiny", device="cpu", dtype="float32", image_size=112)
        print(
            f"setup {setup}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()}",
            flush=True,
        )
        rows = bench(envs=args.envs, chunks=args.chunks, reps=args.reps, cache_dir=cache, **setup)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
