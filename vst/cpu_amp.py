"""bf16 autocast on the CPU, with the two places where bf16 hurts kept in fp32.

CPUs with native bf16 (avx512_bf16, AMX) multiply bf16 matrices ~4x faster than fp32 ones, and the tiny
backbone's training step is mostly matmuls: autocast over fp32 weights (classic mixed precision, the weights and
optimiser state stay fp32) makes a step 1.4-1.6x faster (`benchmarks/bench_cpu_amp.py`). Two things stay fp32:
- attention: PyTorch's CPU flash-attention kernels are slower in bf16 than in fp32 (the backward ~2-6x), and CPU
  autocast would cast sdpa's inputs down, so `fp32_attention` switches a model to attention implementations that
  upcast q/k/v and run sdpa with autocast off;
- the output head: bf16 logits (8 bits of mantissa) tie neighbouring action bins, and greedy decoding would
  break every tie towards the lower bin: `fp32_logits` computes them in fp32.
On a GPU none of this applies: there bf16 is the weights' dtype (`dtype=bfloat16`) and sdpa is fast in bf16.
"""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from vst.packing import varlen_sdpa

FP32_SUFFIX = "_fp32"
_UPCASTABLE = {"sdpa": sdpa_attention_forward, "varlen_sdpa": varlen_sdpa}


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's check: avx512_bf16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _upcast(attention):
    def forward(module, query, key, value, attention_mask, **kwargs):
        dtype = query.dtype
        with torch.autocast("cpu", enabled=False):
            out, weights = attention(
                module, query.float(), key.float(), value.float(), attention_mask, **kwargs
            )
        return out.to(dtype), weights

    return forward


for _name, _attention in _UPCASTABLE.items():
    AttentionInterface.register(_name + FP32_SUFFIX, _upcast(_attention))
    AttentionMaskInterface.register(_name + FP32_SUFFIX, sdpa_mask)


def fp32_attention(model) -> None:
    """Switch the text decoder and the vision tower from sdpa (or varlen_sdpa) to their fp32 variants. Runtime
    only: transformers does not save the implementation with the config."""
    switch = {}
    for name in ("text_config", "vision_config"):
        sub = getattr(model.config, name, None)
        impl = getattr(sub, "_attn_implementation", None)
        if impl in _UPCASTABLE:
            switch[name] = impl + FP32_SUFFIX
    if switch:
        model.set_attn_implementation(switch)


def fp32_logits(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """The output head in fp32 whatever autocast says."""
    with torch.autocast(hidden.device.type, enabled=False):
        weight = head.weight.float()
        bias = None if head.bias is None else head.bias.float()
        return F.linear(hidden.float(), weight, bias)
