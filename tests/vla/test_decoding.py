import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

from vla.action_tokenizer import BinActionTokenizer, NotActionTokenError, QuantileNormalizer
from vla.decoding import ActionTokenLogitsProcessor, greedy_action_ids, mask_logits, parse_action_tokens
from vla.fast_tokenizer import FastActionTokenizer

K, D = 4, 3


def tiny_text_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["stack the yellow cube on the purple one"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    hf = tiny_text_tokenizer()
    tok = BinActionTokenizer(QuantileNormalizer(-np.ones(D), np.ones(D)), num_bins=32)
    tok.add_to_tokenizer(hf)
    config = LlamaConfig(
        vocab_size=len(hf) + 8,  # models often carry more embedding rows than the tokenizer has tokens
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=hf.pad_token_id,
        eos_token_id=hf.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    return hf, tok, model


def test_random_logits_greedy_picks_are_always_action_tokens(setup):
    _, tok, _ = setup
    rng = tok.token_range
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(16, 5, 400, generator=generator) * 10
        logits[..., : rng.start] += 100  # the unconstrained argmax is never an action token
        assert not ((logits.argmax(-1) >= rng.start) & (logits.argmax(-1) < rng.stop)).any()
        for picks in (mask_logits(logits, rng).argmax(-1), greedy_action_ids(logits, rng)):
            assert ((picks >= rng.start) & (picks < rng.stop)).all()
        # the constrained argmax is the best action token, not just any action token
        assert torch.equal(
            greedy_action_ids(logits, rng), logits[..., rng.start : rng.stop].argmax(-1) + rng.start
        )


def test_extra_ids_are_allowed_beside_the_range(setup):
    _, tok, _ = setup
    rng = tok.token_range
    logits = torch.zeros(2, 400)
    logits[0, 0] = 5.0  # an allowed stop id wins
    logits[1, 1], logits[1, 0] = 5.0, -5.0  # a forbidden id is masked; the stop id loses here
    picks = greedy_action_ids(logits, rng, extra_ids=[0])
    assert picks[0] == 0 and rng.start <= picks[1] < rng.stop
    masked = mask_logits(logits, rng, extra_ids=[0])
    assert (
        torch.isinf(masked[:, 1 : rng.start]).all() and not torch.isinf(masked[:, rng.start : rng.stop]).any()
    )


def test_logits_narrower_than_the_action_tokens_name_the_fix(setup):
    _, tok, _ = setup
    with pytest.raises(ValueError, match="resize the model's embeddings"):
        mask_logits(torch.zeros(1, tok.token_range.stop - 1), tok.token_range)


@pytest.mark.parametrize("do_sample", [False, True])
def test_hf_generate_with_the_processor_yields_only_action_tokens(setup, do_sample):
    hf, tok, model = setup
    prompt = hf(["stack the cube", "stack the yellow cube on the one"], padding=True, return_tensors="pt")
    processor = LogitsProcessorList([ActionTokenLogitsProcessor(tok.token_range)])
    out = model.generate(
        **prompt, logits_processor=processor, max_new_tokens=K * D, min_new_tokens=K * D, do_sample=do_sample
    )
    new = out[:, prompt["input_ids"].shape[1] :]
    assert new.shape == (2, K * D)
    actions = parse_action_tokens(new, tok)
    assert actions.shape == (2, K, D) and (np.abs(actions) <= 1).all()


def test_kv_cached_greedy_loop_matches_masked_full_recompute(setup):
    _, tok, model = setup
    rng = tok.token_range
    prompt = torch.tensor([[5, 17, 42, 9], [7, 7, 100, 3]])
    with torch.no_grad():
        cache = DynamicCache()
        logits = model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]
        cached = []
        for _ in range(K * D):
            nxt = greedy_action_ids(logits, rng)
            cached.append(nxt)
            logits = model(nxt[:, None], past_key_values=cache, use_cache=True).logits[:, -1]
        cached = torch.stack(cached, 1)
        seq = prompt
        for _ in range(K * D):  # no cache: recompute the whole sequence each step
            nxt = mask_logits(model(seq).logits[:, -1], rng).argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(cached, seq[:, prompt.shape[1] :])
    assert parse_action_tokens(cached[0], tok).shape == (K, D)


def test_parse_names_non_action_ids(setup):
    _, tok, _ = setup
    good = list(tok.encode(np.zeros((K, D))))
    with pytest.raises(NotActionTokenError, match=r"ids \[3\] at positions \[2\]"):
        parse_action_tokens(good[:2] + [3] + good[3:], tok)
    with pytest.raises(NotActionTokenError, match=rf"sequence 1: .*ids \[{tok.token_range.stop}\]"):
        parse_action_tokens(np.array([good, good[:-1] + [tok.token_range.stop]]), tok)
    with pytest.raises(ValueError, match="not a whole number"):
        parse_action_tokens(good[:-1], tok)


def test_parse_cuts_at_the_stop_id_for_fast(setup):
    hf, _, _ = setup
    normalizer = QuantileNormalizer(-np.ones(D), np.ones(D))
    t = np.linspace(0, 1, K)[:, None]
    chunks = [np.sin(2 * np.pi * (t * f + p)) * np.ones(D) for f in (0.1, 0.2) for p in np.linspace(0, 1, 10)]
    fast = FastActionTokenizer.train(chunks, normalizer, vocab_size=256)
    fast.add_to_tokenizer(hf)
    eos = hf.eos_token_id
    a, b = fast.encode(chunks[0]), fast.encode(chunks[5])
    width = max(len(a), len(b)) + 2
    batch = [a + [eos] * (width - len(a)), b + [eos] * (width - len(b))]
    parsed = parse_action_tokens(torch.tensor(batch), fast, stop_token_id=eos)
    assert parsed.shape == (2, K, D)
    assert np.allclose(parsed[1], fast.decode(b))
    with pytest.raises(NotActionTokenError, match=f"ids \\[{eos}\\]"):
        parse_action_tokens(batch[0], fast)  # without the stop id, EOS is not an action token
