"""Padding-free sequence packing for Qwen2.5-VL, and the padded batches it replaces.

A packed micro-batch is one row holding several samples back to back. Three things keep the samples apart:
- attention: position_ids go in as (4, 1, L): row 0 holds plain text positions that restart at 0 for every
  sample; with no attention mask, transformers turns those restarts into a block-diagonal causal mask (sdpa,
  eager) or into varlen boundaries (flash attention), so no token sees another sample;
- rotary positions: rows 1-3 are each sample's own 3D mrope index (temporal, height, width), computed on the
  sample alone and concatenated, exactly what the model would compute for it unpacked;
- the loss: targets are shifted per sample before packing (a sample's last token predicts nothing), so no
  token is trained to predict the next sample's first token.
The vision tower already encodes each image separately (its own cu_seqlens), so images simply concatenate.

Attention cost: a block-diagonal mask keeps samples apart but still multiplies through the whole L x L square.
`varlen_sdpa` (registered with transformers as an attention implementation; `use_varlen_attention` switches a
model's text decoder to it) runs causal sdpa on each sample's own segment instead, the effect of flash-attn's
varlen kernel with plain PyTorch, on CPU or GPU. Models already on flash attention keep it (it reads the same
position ids).
"""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

IGNORE = -100


def shift_targets(labels: torch.Tensor) -> torch.Tensor:
    """targets[t] = labels[t + 1]: what position t is trained to predict, -100 where nothing."""
    return torch.cat([labels[1:], labels.new_full((1,), IGNORE)])


def _vision(samples: list[dict]) -> dict:
    with_images = [s for s in samples if s.get("pixel_values") is not None]
    if not with_images:
        return {}
    return {
        "pixel_values": torch.cat([s["pixel_values"] for s in with_images]),
        "image_grid_thw": torch.cat([s["image_grid_thw"] for s in with_images]),
    }


def pack(samples: list[dict]) -> dict:
    """One (1, sum L) row from samples with input_ids (L,), targets (L,) and position_ids (3, L)."""
    text_pos = torch.cat([torch.arange(len(s["input_ids"])) for s in samples])
    rope_pos = torch.cat([s["position_ids"] for s in samples], dim=1)
    return {
        "input_ids": torch.cat([s["input_ids"] for s in samples])[None],
        "targets": torch.cat([s["targets"] for s in samples])[None],
        "position_ids": torch.cat([text_pos[None], rope_pos])[:, None],
        **_vision(samples),
    }


def pad(samples: list[dict], pad_id: int) -> dict:
    """(B, max L) rows, right-padded, with an attention mask: the unpacked baseline."""
    n, width = len(samples), max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    position_ids = torch.zeros((3, n, width), dtype=torch.long)
    for i, s in enumerate(samples):
        k = len(s["input_ids"])
        input_ids[i, :k], targets[i, :k], attention_mask[i, :k] = s["input_ids"], s["targets"], 1
        position_ids[:, i, :k] = s["position_ids"]
    return {
        "input_ids": input_ids,
        "targets": targets,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        **_vision(samples),
    }


def plan_micro_batches(
    lengths: list[int], order: list[int], *, packing: bool, pack_tokens: int, batch_size: int
) -> list[list[int]]:
    """Group sample indices (taken in `order`) into micro-batches: with packing, consecutive samples while their
    total length fits in `pack_tokens`; without, `batch_size` samples each. Deterministic for a given order."""
    if not packing:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches, current, used = [], [], 0
    for i in order:
        if lengths[i] > pack_tokens:
            raise ValueError(f"sample {i} has {lengths[i]} tokens, more than pack_tokens={pack_tokens}")
        if used + lengths[i] > pack_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches


def varlen_sdpa(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """Causal attention per packed sample, segments starting where the text positions restart at 0; anything
    else (padded batches, the vision tower, cached generation) goes to transformers' sdpa unchanged."""
    position_ids, length = kwargs.get("position_ids"), query.shape[2]
    if (
        position_ids is None
        or query.shape[0] != 1
        or key.shape[2] != length
        or position_ids.shape[-1] != length
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    bounds = [*(position_ids[0] == 0).nonzero().flatten().tolist(), length]
    out = [
        F.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            dropout_p=dropout,
            scale=scaling,
            is_causal=True,
            enable_gqa=True,
        )
        for a, b in zip(bounds, bounds[1:])
    ]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register("varlen_sdpa", varlen_sdpa)
AttentionMaskInterface.register("varlen_sdpa", sdpa_mask)


def use_varlen_attention(model) -> None:
    """Give the text decoder per-sample attention for packed rows (not saved with checkpoints: runtime only)."""
    if model.config.get_text_config()._attn_implementation in ("sdpa", "eager"):
        model.set_attn_implementation({"text_config": "varlen_sdpa"})
