import numpy as np
import pytest
import torch
from lerobot.datasets.compute_stats import get_feature_stats
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vla.action_tokenizer import QuantileNormalizer
from vla.fast_tokenizer import FastActionTokenizer

K = 8


def smooth_episodes(n: int, steps: int = 100, seed: int = 0) -> list[np.ndarray]:
    """OSC-delta-like 7-D episodes: velocities of a few smooth reaches plus sensor noise, and a -1/1 gripper
    that closes once per episode."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, steps)[:, None]
    episodes = []
    for _ in range(n):
        centres, widths = rng.uniform(0, 1, (3, 1, 1)), rng.uniform(0.1, 0.3, (3, 1, 1))
        pose = (rng.normal(0, 0.5, (3, 1, 6)) * np.exp(-(((t - centres) / widths) ** 2))).sum(0)
        velocity = np.gradient(pose, axis=0) * 10 + rng.normal(0, 0.01, pose.shape)
        gripper = np.where(np.arange(steps) < rng.integers(steps // 4, 3 * steps // 4), -1.0, 1.0)
        episodes.append(np.concatenate([velocity, gripper[:, None]], 1))
    return episodes


def chunks_of(episodes: list[np.ndarray], k: int = K, stride: int = 2) -> np.ndarray:
    return np.stack([e[i : i + k] for e in episodes for i in range(0, len(e) - k + 1, stride)])


@pytest.fixture(scope="module")
def data():
    episodes = smooth_episodes(24)
    stats = {"action": get_feature_stats(np.concatenate(episodes), axis=0, keepdims=False)}
    normalizer = QuantileNormalizer.from_stats(stats)
    train, held_out = chunks_of(episodes[:18]), chunks_of(episodes[18:])
    fast = FastActionTokenizer.train(train, normalizer, scale=10.0, vocab_size=512)
    fast.add_to_tokenizer(tiny_text_tokenizer())
    return fast, held_out


def tiny_text_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["move the gripper above the green block"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


def test_round_trip_error_is_bounded_on_smooth_held_out_chunks(data):
    fast, held_out = data
    norm = fast.normalizer
    errors = []
    for chunk in held_out:
        back, malformed = fast.decode_with_flag(fast.encode(chunk))
        assert not malformed and back.shape == (K, 7) and back.dtype == np.float32
        errors.append(np.abs(norm.normalize(back) - norm.normalize(chunk)))
    errors = np.stack(errors)
    assert errors.max() <= 0.5 * np.sqrt(K) / fast.scale + 1e-6  # the documented worst case
    assert np.sqrt((errors**2).mean()) <= 1.2 / (fast.scale * np.sqrt(12))  # about the rounding RMS
    # the binary gripper keeps its sign
    gripper = np.concatenate([fast.decode(fast.encode(c))[:, 6] for c in held_out])
    assert (np.sign(gripper) == held_out[:, :, 6].reshape(-1)).all()


def test_compresses_smooth_trajectories_better_than_bins(data):
    fast, held_out = data
    ratio = fast.compression_ratio(held_out)
    assert ratio > 2.0  # K*D = 56 bin tokens per chunk vs FAST's mean
    lengths = [len(fast.encode(c)) for c in held_out]
    assert np.isclose(ratio, K * 7 / np.mean(lengths))


def test_noise_compresses_worse_than_smooth(data):
    fast, held_out = data
    rng = np.random.default_rng(5)
    noise = rng.uniform(fast.normalizer.low, fast.normalizer.high, size=(50, K, 7))
    assert fast.compression_ratio(noise) < fast.compression_ratio(held_out)


def test_low_frequencies_come_first(data):
    fast, _ = data
    chunk = fast.normalizer.unnormalize(np.full((K, 7), 0.3))
    coeffs = fast.coefficients(chunk).reshape(K, 7)
    assert (coeffs[0] != 0).all() and (coeffs[1:] == 0).all()  # a constant chunk: only the DC row


def test_malformed_sequences_decode_to_the_right_shape(data):
    fast, held_out = data
    ids = fast.encode(held_out[0])
    outside = fast.token_range.start - 1
    cases = {
        "empty": [],
        "short": ids[:1],
        "long": ids + ids,
        "foreign ids": [outside, *ids, 10**9],
        "one token repeated": [fast.token_range.start] * 200,
    }
    for name, case in cases.items():
        back, malformed = fast.decode_with_flag(case)
        assert back.shape == (K, 7) and np.isfinite(back).all(), name
        assert malformed, name
    # extra coefficients are truncated and foreign ids dropped, leaving the well-formed part intact
    assert np.allclose(fast.decode_with_flag(ids + ids)[0], fast.decode(ids))
    assert np.allclose(fast.decode_with_flag([outside, *ids])[0], fast.decode(ids))


def test_tokens_are_added_without_touching_existing_ids(data):
    fast, _ = data
    hf = tiny_text_tokenizer()
    before, size = hf.get_vocab(), len(hf)
    fast2 = FastActionTokenizer(fast.normalizer, fast.chunk_size, fast.scale, fast.bpe)
    assert fast2.add_to_tokenizer(hf) == range(size, size + fast.vocab_size)
    assert all(hf.get_vocab()[t] == i for t, i in before.items())


def test_batches_and_tensors(data):
    fast, held_out = data
    batch = fast.encode(torch.tensor(held_out[:3]))
    assert len(batch) == 3 and batch[1] == fast.encode(held_out[1])
    assert np.allclose(fast.decode(torch.tensor(batch[0])), fast.decode(batch[0]))


def test_save_load_identity(data, tmp_path):
    fast, held_out = data
    fast.save(tmp_path / "fast.json")
    loaded = FastActionTokenizer.load(tmp_path / "fast.json")
    assert loaded.token_range == fast.token_range and loaded.chunk_size == K and loaded.scale == fast.scale
    for chunk in held_out[:20]:
        assert loaded.encode(chunk) == fast.encode(chunk)
        assert np.array_equal(loaded.decode(fast.encode(chunk)), fast.decode(fast.encode(chunk)))


def test_bad_inputs_raise_clear_errors(data, tmp_path):
    fast, _ = data
    with pytest.raises(ValueError, match=r"expected a \(8, 7\) chunk"):
        fast.encode(np.zeros((5, 7)))
    with pytest.raises(ValueError, match="vocab_size 10 is below"):
        FastActionTokenizer.train(np.zeros((4, K, 7)), fast.normalizer, vocab_size=10)
    with pytest.raises(ValueError, match="equally shaped"):
        FastActionTokenizer.train([np.zeros((K, 7)), np.zeros((4, 7))], fast.normalizer)
    (tmp_path / "bad.json").write_text('{"kind": "fast", "bpe": {"model": 3}}')
    with pytest.raises(ValueError, match="not a valid FAST action tokenizer file"):
        FastActionTokenizer.load(tmp_path / "bad.json")
