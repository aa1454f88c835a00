import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from vst.cpu_amp import fp32_attention, fp32_logits, native_bf16
from vst.packing import varlen_sdpa


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 1
    training = False


@pytest.mark.parametrize("base", ["sdpa", "varlen_sdpa"])
def test_upcast_attention_runs_fp32_under_autocast_and_returns_the_input_dtype(base):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 16, generator=gen) for _ in range(3))
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]  # two packed samples for varlen
    reference = {"sdpa": sdpa_attention_forward, "varlen_sdpa": varlen_sdpa}[base]
    want, _ = reference(_Module(), q, k, v, None, is_causal=True, position_ids=positions)
    upcast = ALL_ATTENTION_FUNCTIONS[base + "_fp32"]
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = upcast(_Module(), qb, kb, vb, None, is_causal=True, position_ids=positions)
    assert got.dtype == torch.bfloat16
    # exactly fp32 attention over the bf16 inputs, rounded once at the end: autocast did not reach inside
    exact, _ = reference(
        _Module(), qb.float(), kb.float(), vb.float(), None, is_causal=True, position_ids=positions
    )
    assert torch.equal(got, exact.to(torch.bfloat16))
    assert (got.float() - want).abs().max() < 0.05


def test_fp32_attention_switches_text_and_vision_runtime_only(tmp_path):
    from vst.backbone import build_backbone

    model, _ = build_backbone("tiny", cache_dir=tmp_path)
    fp32_attention(model)
    assert model.config.text_config._attn_implementation == "sdpa_fp32"
    assert model.config.vision_config._attn_implementation == "sdpa_fp32"
    model.config.save_pretrained(tmp_path / "saved")
    assert "sdpa_fp32" not in (tmp_path / "saved" / "config.json").read_text()  # runtime only, never saved
    fp32_attention(model)  # idempotent: an fp32 variant is not switched again
    assert model.config.text_config._attn_implementation == "sdpa_fp32"


def test_fp32_logits_ignores_autocast():
    head = torch.nn.Linear(8, 5, bias=True)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(x).dtype == torch.bfloat16
        out = fp32_logits(head, x.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, F.linear(x.bfloat16().float(), head.weight, head.bias))


def test_native_bf16_is_a_bool():
    assert isinstance(native_bf16(), bool)
