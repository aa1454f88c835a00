import pytest
import torch
import torch.nn.functional as F
from sft_rows import make_rows

from vst.backbone import build_backbone
from vst.packing import IGNORE, pack, pad, plan_micro_batches, shift_targets, use_varlen_attention
from vst.sft import encode_row, token_loss_sum

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = build_backbone("tiny", cache_dir=tmp_path_factory.mktemp("cache"))
    return model.eval(), processor


@pytest.fixture(scope="module")
def samples(tiny):
    model, processor = tiny
    return [encode_row(r, processor, model.model.get_rope_index) for r in make_rows(6)]


def test_shift_targets():
    assert shift_targets(torch.tensor([IGNORE, 5, 6, IGNORE])).tolist() == [5, 6, IGNORE, IGNORE]


def test_pack_layout(samples):
    b = pack(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert b["input_ids"].shape == (1, sum(lengths)) and b["position_ids"].shape == (4, 1, sum(lengths))
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    assert (
        b["position_ids"][0, 0] == 0
    ).nonzero().flatten().tolist() == starts.tolist()  # text positions restart
    assert (b["targets"][0, starts[1:] - 1] == IGNORE).all()  # no sample predicts the next one's first token
    n_images = sum(len(s["image_grid_thw"]) for s in samples if s["image_grid_thw"] is not None)
    assert len(b["image_grid_thw"]) == n_images == 7  # rows carry 1, 2, 1, 0, 1, 2 images


@pytest.fixture(params=["sdpa", "varlen_sdpa"])
def attn(request, tiny):
    """Both ways of keeping packed samples apart: the block-diagonal mask and per-sample segments."""
    model, _ = tiny
    model.set_attn_implementation({"text_config": request.param})
    yield request.param
    model.set_attn_implementation({"text_config": "sdpa"})


def test_packed_loss_equals_padded_loss(tiny, samples, attn):
    model, processor = tiny
    with torch.no_grad():
        packed = token_loss_sum(model, pack(samples))
        padded = token_loss_sum(model, pad(samples, processor.tokenizer.pad_token_id))
        one_by_one = sum(token_loss_sum(model, pack([s])) for s in samples)
        # the same concatenation without per-sample text positions lets samples attend to each other
        leaky = pack(samples)
        leaky["position_ids"] = leaky["position_ids"][1:]
        leaked = token_loss_sum(model, leaky)
    assert torch.allclose(packed, padded, rtol=1e-4) and torch.allclose(packed, one_by_one, rtol=1e-4)
    assert not torch.allclose(packed, leaked, rtol=1e-4)


def test_packed_logits_match_each_sample_alone(tiny, samples, attn):
    model, _ = tiny
    b = pack(samples)
    with torch.no_grad():
        logits = model(**{k: v for k, v in b.items() if k != "targets"}, use_cache=False).logits[0]
        start = 0
        for s in samples:
            alone = model(**{k: v for k, v in pack([s]).items() if k != "targets"}, use_cache=False).logits[0]
            assert torch.allclose(logits[start : start + len(alone)], alone, atol=1e-4)
            start += len(alone)


def test_padded_loss_is_the_token_mean_reference(tiny, samples):
    """The padded path itself agrees with transformers' own loss on the same labels."""
    model, processor = tiny
    b = pad(samples, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(**{k: v for k, v in b.items() if k != "targets"}, use_cache=False).logits
    mine = F.cross_entropy(logits.flatten(0, 1), b["targets"].flatten(), ignore_index=IGNORE)
    assert torch.allclose(mine * (b["targets"] != IGNORE).sum(), token_loss_sum(model, b), rtol=1e-5)


def test_plan_micro_batches():
    lengths = [5, 3, 8, 2, 7, 1]
    order = [2, 0, 5, 1, 4, 3]
    packed = plan_micro_batches(lengths, order, packing=True, pack_tokens=10, batch_size=99)
    assert [i for mb in packed for i in mb] == order  # order kept, every sample once
    assert all(sum(lengths[i] for i in mb) <= 10 for mb in packed)
    assert packed == [[2], [0, 5, 1], [4, 3]]
    assert plan_micro_batches(lengths, order, packing=False, pack_tokens=0, batch_size=4) == [
        [2, 0, 5, 1],
        [4, 3],
    ]
    with pytest.raises(ValueError, match="more than pack_tokens"):
        plan_micro_batches(lengths, order, packing=True, pack_tokens=6, batch_size=1)


def test_use_varlen_attention_switches_only_the_text_decoder(tmp_path):
    model, _ = build_backbone("tiny", cache_dir=tmp_path)
    use_varlen_attention(model)
    assert model.config.get_text_config()._attn_implementation == "varlen_sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path / "ckpt")
    assert "varlen" not in (tmp_path / "ckpt" / "config.json").read_text()  # runtime only, never saved
