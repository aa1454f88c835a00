import numpy as np
import pytest
import torch
from lerobot.datasets.compute_stats import get_feature_stats
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vla.action_tokenizer import (
    BinActionTokenizer,
    MissingStatsError,
    NotActionTokenError,
    QuantileNormalizer,
    add_action_tokens,
)


def tiny_text_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here, in seconds, the way the project builds tokenizers without a hub."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(["pick up the red cube and put it left of the blue bowl"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def bins(low, high, num_bins=256, hf=None) -> BinActionTokenizer:
    tok = BinActionTokenizer(QuantileNormalizer(low, high), num_bins)
    tok.add_to_tokenizer(hf if hf is not None else tiny_text_tokenizer())
    return tok


def test_added_tokens_keep_existing_ids_and_are_contiguous_at_the_end():
    hf = tiny_text_tokenizer()
    hf.add_special_tokens({"extra_special_tokens": ["<image>"]})  # an earlier added token must survive too
    before, size = hf.get_vocab(), len(hf)
    text = "pick up the red cube <image>"
    ids_before = hf(text)["input_ids"]

    tok = bins([-1, -1], [1, 1], hf=hf)

    after = hf.get_vocab()
    assert all(after[t] == i for t, i in before.items())
    assert tok.token_range == range(size, size + 256) and len(hf) == size + 256
    assert hf.convert_tokens_to_ids(tok.tokens) == list(tok.token_range)
    assert hf(text)["input_ids"] == ids_before
    # each action token is one unsplittable token, and text decoding shows it
    assert hf("<act_0><act_255>")["input_ids"] == [size, size + 255]
    assert hf.decode([size + 7]) == "<act_7>"


def test_adding_again_or_after_reload_reuses_the_ids(tmp_path):
    hf = tiny_text_tokenizer()
    tok = bins([-1], [1], hf=hf)
    assert tok.add_to_tokenizer(hf) == tok.token_range and len(hf) == tok.token_range.stop
    hf.save_pretrained(tmp_path)
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert tok.add_to_tokenizer(reloaded) == tok.token_range


def test_mismatched_or_partial_tokenizer_is_refused():
    tok = bins([-1], [1])
    other = tiny_text_tokenizer()
    other.add_special_tokens({"extra_special_tokens": ["<pad_extra>"]})  # shifts where the tokens land
    with pytest.raises(ValueError, match="mismatched tokenizer"):
        tok.add_to_tokenizer(other)
    partial = tiny_text_tokenizer()
    partial.add_special_tokens({"extra_special_tokens": ["<act_0>", "<act_1>"]})
    with pytest.raises(ValueError, match="2 of the 256"):
        add_action_tokens(partial, [f"<act_{i}>" for i in range(256)])


def test_exact_bins_for_hand_picked_values():
    tok = bins([-1, 0], [1, 10], num_bins=256)
    start = tok.token_range.start
    # levels sit at -1 + 2i/255; both ends are levels, the midpoint 0 rounds up to level 128
    ids = tok.encode(np.array([[-1.0, 0.0], [1.0, 10.0], [0.0, 5.0]]))
    assert (ids - start).tolist() == [0, 0, 255, 255, 128, 128]
    # 4 levels over [-1, 1]: -1, -1/3, 1/3, 1
    small = bins([-1], [1], num_bins=4)
    got = small.to_bins(np.array([[-1.0], [-0.7], [-0.6], [0.0], [0.5], [1.0]]))[:, 0]
    assert got.tolist() == [0, 0, 1, 2, 2, 3]


def test_bin_edges_round_half_up():
    # 5 levels at -1, -.5, 0, .5, 1: the bin edges -.75, -.25, .25, .75 are exact in binary floating point
    tok = bins([-1], [1], num_bins=5)
    edges = np.array([-0.75, -0.25, 0.25, 0.75])
    assert tok.to_bins(edges[:, None])[:, 0].tolist() == [1, 2, 3, 4]
    below = edges - 1e-9
    assert tok.to_bins(below[:, None])[:, 0].tolist() == [0, 1, 2, 3]


def test_round_trip_within_half_a_bin_and_clipping():
    rng = np.random.default_rng(0)
    low, high = np.array([-0.3, -2.0, 0.0]), np.array([0.5, 2.0, 0.01])
    tok = bins(low, high)
    inside = rng.uniform(low, high, size=(4000, 3))
    back = tok.decode(tok.encode(inside[:, None, :]))[:, 0, :]
    err = np.abs(back - inside)
    assert (err <= tok.max_error * (1 + 1e-6) + 1e-7).all()
    assert np.allclose(tok.max_error, (high - low) / 2 / 255)
    # the bound is tight: some value lands almost half a bin away
    assert (err.max(0) > 0.9 * tok.max_error).all()
    # decoding the levels returns them exactly (inverse of the inverse)
    levels = tok.from_bins(np.arange(256)[:, None].repeat(3, 1))
    assert (tok.to_bins(levels) == np.arange(256)[:, None]).all()
    # out of range clips to the extreme levels
    outside = np.array([[[-10.0, -100.0, -1.0], [10.0, 100.0, 1.0]]])
    assert np.allclose(tok.decode(tok.encode(outside))[0], [low, high], atol=1e-6)


def test_binary_gripper_with_real_lerobot_stats_stays_minus_one_one():
    rng = np.random.default_rng(1)
    arm = rng.normal(0, 0.2, size=(3000, 6))
    gripper = np.where(rng.random(3000) < 0.4, 1.0, -1.0)[:, None]
    actions = np.concatenate([arm, gripper], 1)
    stats = {"action": get_feature_stats(actions, axis=0, keepdims=False)}
    tok = BinActionTokenizer.from_stats(stats)
    tok.add_to_tokenizer(tiny_text_tokenizer())
    back = tok.decode(tok.encode(actions[None]))[0]
    # lerobot's histogram quantiles are within 1e-3 of the extremes; the extremes are levels
    assert np.allclose(back[:, 6], actions[:, 6], atol=1e-3)
    assert (np.sign(back[:, 6]) == actions[:, 6]).all()


def test_constant_dimension_does_not_divide_by_zero():
    tok = bins([0.0, 3.0], [1.0, 3.0])
    with np.errstate(all="raise"):
        ids = tok.encode(np.array([[0.5, 3.0], [0.2, 7.0]]))
        back = tok.decode(ids)
    assert np.isfinite(back).all() and np.allclose(back[:, 1], 3.0)


def test_missing_stats_keys_are_named():
    with pytest.raises(MissingStatsError, match=r"lack \['q01'\]"):
        BinActionTokenizer.from_stats({"action": {"q99": [1.0], "min": [0.0]}})
    with pytest.raises(MissingStatsError, match="no 'action' entry"):
        BinActionTokenizer.from_stats({"observation.state": {}})
    with pytest.raises(ValueError, match=r"q99 < q01 in action dimensions \[1\]"):
        QuantileNormalizer([0, 1], [1, 0])


def test_chunks_are_time_major_and_batches_work_for_numpy_and_torch():
    tok = bins([0, 0, 0], [1, 1, 1], num_bins=11)  # levels every 0.1
    start = tok.token_range.start
    chunk = np.array([[0.0, 0.1, 0.2], [0.3, 0.4, 0.5]])  # (K=2, D=3)
    assert (tok.encode(chunk) - start).tolist() == [0, 1, 2, 3, 4, 5]
    batch = np.stack([chunk, 1 - chunk])  # (B=2, K=2, D=3)
    ids = tok.encode(batch)
    assert ids.shape == (2, 6) and (ids[1] - start).tolist() == [10, 9, 8, 7, 6, 5]
    assert np.allclose(tok.decode(ids), batch, atol=1e-6) and tok.decode(ids).dtype == np.float32
    ids_t = tok.encode(torch.tensor(batch, dtype=torch.float32))
    assert ids_t.dtype == torch.int64 and torch.equal(ids_t, torch.from_numpy(ids))
    back_t = tok.decode(ids_t)
    assert isinstance(back_t, torch.Tensor) and back_t.shape == (2, 2, 3)


def test_bad_inputs_raise_clear_errors():
    tok = bins([0, 0], [1, 1])
    with pytest.raises(ValueError, match="action dimension 2"):
        tok.encode(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="chunk"):
        tok.encode(np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="3 token ids"):
        tok.decode(list(tok.token_range[:3]))
    with pytest.raises(NotActionTokenError, match=r"ids \[5\] at positions \[1\]"):
        tok.decode([tok.token_range.start, 5])
    with pytest.raises(RuntimeError, match="add_to_tokenizer"):
        BinActionTokenizer(QuantileNormalizer([0], [1])).encode(np.zeros((1, 1)))


def test_save_load_identity(tmp_path):
    rng = np.random.default_rng(2)
    tok = bins(rng.normal(-1, 0.1, 7), rng.normal(1, 0.1, 7), num_bins=64)
    tok.save(tmp_path / "bins.json")
    loaded = BinActionTokenizer.load(tmp_path / "bins.json")
    assert loaded.token_range == tok.token_range and loaded.num_bins == 64
    assert np.array_equal(loaded.normalizer.low, tok.normalizer.low)
    assert np.array_equal(loaded.normalizer.high, tok.normalizer.high)
    actions = rng.normal(0, 1, (3, 5, 7))
    assert np.array_equal(loaded.encode(actions), tok.encode(actions))
    assert not (tmp_path / "bins.json.tmp").exists()


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bins.json"
    path.write_text('{"kind": "bins", "num_bins": 256')
    with pytest.raises(ValueError, match="not a valid bin action tokenizer file"):
        BinActionTokenizer.load(path)
    path.write_text('{"kind": "fast"}')
    with pytest.raises(ValueError, match="not 'bins'"):
        BinActionTokenizer.load(path)
