"""Training throughput and model FLOPs utilisation (MFU) of a backbone preset with random weights.

    .venv/bin/python benchmarks/bench_backbone_mfu.py model=small                       # GPU, bf16
    .venv/bin/python benchmarks/bench_backbone_mfu.py model=qwen2_5_vl_3b_shape pack_tokens=8192
    .venv/bin/python benchmarks/bench_backbone_mfu.py model=tiny device=cpu dtype=float32 steps=3   # smoke run

Synthetic samples shaped like the SFT data (text + `images_per_sample` images of `image_px`^2 pixels) are packed
into `pack_tokens`-token sequences exactly as `vst-train` packs them, and each step is forward + backward +
AdamW in pure bf16. Model FLOPs per step: 6 x (matmul parameters) x tokens for the LLM (per LLM token) and the
vision tower (per patch), plus causal attention 6·L·s²·d per sample and the vision tower's window/full attention.
MFU = model FLOPs / step time / the GPU's dense bf16 peak (`peak_tflops`, default from the device name).
"""

import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vst.backbone import build_from_config, load_model_config
from vst.packing import pack, shift_targets
from vst.sft import token_loss_sum

DEFAULTS = {
    "model": "small",
    "device": "cuda",
    "dtype": "bfloat16",
    "attn": "varlen_sdpa",  # varlen_sdpa (per-sample segments) | sdpa (block mask) | flash_attention_2 (if installed)
    "pack_tokens": 8192,
    "sample_tokens": 1024,  # text + image tokens of one synthetic sample
    "images_per_sample": 1,
    "image_px": 448,
    "steps": 10,
    "warmup": 3,
    "gradient_checkpointing": False,
    "peak_tflops": None,  # None: from the device name (dense bf16)
    "seed": 0,
    "output_dir": "outputs/bench/backbone_mfu",
}
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "4090": 165.2}


def synthetic_sample(model, n_tokens: int, n_images: int, px: int, gen: torch.Generator) -> dict:
    """One sample: system-like text, n images of px x px (patch 14, merge 2), text; n_tokens in total."""
    cfg, vis = model.config, model.config.vision_config
    grid = px // vis.patch_size
    grid -= grid % vis.spatial_merge_size
    per_image = grid * grid // vis.spatial_merge_size**2
    n_text = n_tokens - n_images * (per_image + 2)
    if n_text < 8:
        raise ValueError(
            f"sample_tokens={n_tokens} leaves no room for text beside {n_images} images of {px}px"
        )
    vocab = min(cfg.get_text_config().vocab_size, cfg.vision_start_token_id)  # ordinary tokens only
    ids, types = [torch.randint(0, vocab, (4,), generator=gen)], [torch.zeros(4, dtype=torch.long)]
    for _ in range(n_images):
        block = torch.tensor(
            [cfg.vision_start_token_id] + [cfg.image_token_id] * per_image + [cfg.vision_end_token_id]
        )
        ids.append(block)
        types.append(torch.tensor([0] + [1] * per_image + [0]))
    ids.append(torch.randint(0, vocab, (n_text - 4,), generator=gen))
    types.append(torch.zeros(n_text - 4, dtype=torch.long))
    input_ids, mm_types = torch.cat(ids), torch.cat(types)
    grid_thw = torch.tensor([[1, grid, grid]] * n_images) if n_images else None
    position_ids, _ = model.model.get_rope_index(input_ids[None], mm_types[None], image_grid_thw=grid_thw)
    patch_dim = vis.in_channels * vis.temporal_patch_size * vis.patch_size**2
    labels = input_ids.clone()
    labels[: len(labels) // 2] = -100
    return {
        "input_ids": input_ids,
        "targets": shift_targets(labels),
        "position_ids": position_ids[:, 0],
        "pixel_values": torch.randn(n_images * grid * grid, patch_dim, generator=gen) if n_images else None,
        "image_grid_thw": grid_thw,
    }


def matmul_params(model) -> dict:
    """Parameters that take part in matrix products, per part (embedding lookups excluded, LM head included)."""
    parts = {"llm": 0, "vision": 0, "merger": 0}
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embed_tokens" in name:
            continue
        part = "merger" if "visual.merger" in name else "vision" if "visual" in name else "llm"
        parts[part] += p.numel()
    if model.config.tie_word_embeddings:  # the tied LM head is a matmul too
        parts["llm"] += model.get_output_embeddings().weight.numel()
    return parts


def step_flops(model, samples: list[dict]) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward) over these samples."""
    text, vis = model.config.get_text_config(), model.config.vision_config
    n = matmul_params(model)
    tokens = sum(len(s["input_ids"]) for s in samples)
    patches = sum(int(s["image_grid_thw"].prod(-1).sum()) for s in samples if s["image_grid_thw"] is not None)
    flops = (
        6 * n["llm"] * tokens
        + 6 * n["vision"] * patches
        + 6 * n["merger"] * patches / vis.spatial_merge_size**2
    )
    flops += sum(6 * text.num_hidden_layers * len(s["input_ids"]) ** 2 * text.hidden_size for s in samples)
    window = (vis.window_size // vis.patch_size) ** 2  # patches per attention window
    n_full = len(vis.fullatt_block_indexes)
    for s in samples:
        grids = s["image_grid_thw"].tolist() if s["image_grid_thw"] is not None else []
        for t, h, w in grids:
            p = t * h * w
            flops += 12 * vis.hidden_size * p * (n_full * p + (vis.depth - n_full) * min(window, p))
    return flops


def main() -> None:
    opts = OmegaConf.merge(DEFAULTS, OmegaConf.from_cli(sys.argv[1:]))
    device, dtype = torch.device(opts.device), getattr(torch, opts.dtype)
    torch.manual_seed(opts.seed)
    model, _ = build_from_config(load_model_config(opts.model), seed=opts.seed)
    model.set_attn_implementation(opts.attn)
    model.to(device=device, dtype=dtype).train()
    if opts.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    gen = torch.Generator().manual_seed(opts.seed)
    per_pack = max(1, opts.pack_tokens // opts.sample_tokens)
    batches = []
    for _ in range(opts.warmup + opts.steps):
        samples = [
            synthetic_sample(model, opts.sample_tokens, opts.images_per_sample, opts.image_px, gen)
            for _ in range(per_pack)
        ]
        b = pack(samples)
        batches.append(
            ({k: v.to(device) for k, v in b.items()}, step_flops(model, samples), len(b["input_ids"][0]))
        )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for i, (b, _, _) in enumerate(batches):
        sync()
        t0 = time.perf_counter()
        b = dict(b)
        if "pixel_values" in b:
            b["pixel_values"] = b["pixel_values"].to(dtype)
        loss = token_loss_sum(model, b) / (b["targets"] != -100).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= opts.warmup:
            times.append(time.perf_counter() - t0)

    measured = batches[opts.warmup :]
    flops = sum(f for _, f, _ in measured)
    tokens = sum(n for _, _, n in measured)
    seconds = sum(times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = opts.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    result = {
        "config": OmegaConf.to_container(opts),
        "device": name,
        "parameters_m": model.num_parameters() / 1e6,
        "matmul_parameters_m": {k: v / 1e6 for k, v in matmul_params(model).items()},
        "step_s": seconds / len(times),
        "tokens_per_s": tokens / seconds,
        "samples_per_s": per_pack * len(times) / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "peak_tflops": peak,
        "mfu": flops / seconds / 1e12 / peak if peak else None,
        "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"mfu_{opts.model}.json").write_text(json.dumps(result, indent=2))
    mfu = (
        f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (no peak known for this device)"
    )
    print(
        f"{opts.model} on {name} ({result['parameters_m']:.0f}M params, {opts.attn}, {opts.dtype}): "
        f"{result['tokens_per_s']:.0f} tokens/s, {result['samples_per_s']:.2f} samples/s, "
        f"{result['model_tflops_per_s']:.1f} model TFLOP/s, MFU {mfu}"
    )


if __name__ == "__main__":
    main()
