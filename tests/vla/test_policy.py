import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessorList

from vla.action_tokenizer import MissingStatsError
from vla.configuration_vla import VLAConfig
from vla.decoding import ActionTokenLogitsProcessor
from vla.inference import decode_actions, decode_uncached
from vla.modeling_vla import TemporalEnsemble, VLAPolicy
from vla.processor_vla import make_vla_pre_post_processors


def _randomize_llm(policy, seed=0):
    """An untrained tiny LLM gives about the same answer to every prompt; large random weights make greedy
    decoding depend on the context, so that the equalities below can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if p.ndim >= 2 and ("language_model" in name or "lm_head" in name):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _train(policy, batch: dict, steps: int) -> tuple[list[float], dict]:
    """`steps` AdamW steps on one batch: the losses and the last step's info."""
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=2e-3)
    policy.train()
    losses = []
    for _ in range(steps):
        loss, info = policy.forward(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, info


def _episode0_tail(vla) -> int:
    """First of the last 4 frames of episode 0: their 4-step chunks run 0..3 steps past its end."""
    return int(vla.meta.episodes["length"][0]) - 4


def test_action_tokens_never_overwrite_the_vocabulary(vla):
    from vst.backbone import build_backbone, resolve_backbone

    base_model, base_processor = build_backbone(resolve_backbone("tiny", {"cache_dir": vla.cache}))
    policy, _, _ = vla.policy()
    tok, base_tok = policy.processor.tokenizer, base_processor.tokenizer
    base_vocab = base_tok.get_vocab()
    assert policy.token_range.start == len(base_tok)  # appended after the real vocabulary, contiguous
    assert len(policy.token_range) == 256
    vocab = tok.get_vocab()
    assert all(vocab[t] == i for t, i in base_vocab.items())  # every real token keeps its id
    text = "What action should the robot take to lift the red cube? Robot state: +0.12"
    assert tok(text)["input_ids"] == base_tok(text)["input_ids"]
    assert tok.convert_ids_to_tokens(list(policy.token_range))[:2] == ["<act_0>", "<act_1>"]
    # The real rows of the embedding are the backbone's; the model grew to cover the new ids.
    emb = policy.model.get_input_embeddings().weight
    assert emb.shape[0] >= policy.token_range.stop
    assert torch.equal(emb[: len(base_tok)], base_model.get_input_embeddings().weight[: len(base_tok)])
    assert policy.model.config.get_text_config().vocab_size == emb.shape[0]


def test_training_steps_reduce_the_loss(vla):
    policy, pre, _ = vla.policy()
    batch = vla.batch(pre, chunk_size=4, start=_episode0_tail(vla))  # chunks run past the episode's end
    assert batch["action_is_pad"].any()
    losses, info = _train(policy, batch, steps=8)
    assert losses[-1] < 0.7 * losses[0], losses
    assert 0.0 <= info["token_acc"] <= 1.0
    per_sample, _ = policy.forward(batch, reduction="none")
    assert per_sample.shape == (4,) and torch.isfinite(per_sample).all()


def test_padded_chunk_steps_are_not_targets(vla):
    policy, pre, _ = vla.policy()
    batch = vla.batch(pre, chunk_size=4, start=_episode0_tail(vla))
    labels = policy.training_inputs(batch)["labels"]
    counted = (labels != -100).sum(1)
    expected = (~batch["action_is_pad"]).sum(1) * policy.config.action_dim
    assert torch.equal(counted, expected) and (counted < 4 * 7).any()


def test_optimizer_groups_separate_the_vision_tower(vla):
    policy, _, _ = vla.policy(optimizer_lr_vision=1e-6, freeze_merger=True)
    groups = policy.get_optim_params()
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(policy.model.named_parameters())
    assert by_id[id(named["model.visual.patch_embed.proj.weight"])]["lr"] == 1e-6
    assert "lr" not in by_id[id(named["model.language_model.layers.0.self_attn.q_proj.weight"])]
    assert not any(n.startswith("model.visual.merger.") and id(p) in by_id for n, p in named.items())


def test_cached_decoding_matches_uncached_and_generate(vla):
    policy, pre, _ = vla.policy()
    _randomize_llm(policy)
    policy.eval()
    batch = vla.batch(pre, chunk_size=4)
    batch["task"] = [
        "lift the red cube",
        "lift the red cube that sits next to the bowl on the left",
        "lift",
        "up",
    ]
    inputs = policy.model_inputs(batch)
    assert inputs["attention_mask"].sum(1).unique().numel() > 1  # rows of different lengths, left-padded
    n = policy.num_target_tokens
    cached = decode_actions(policy.model, inputs, n, policy.token_range)
    uncached, _ = decode_uncached(policy.model, inputs, n, policy.token_range)
    assert torch.equal(cached, uncached)
    assert cached.unique().numel() > 4  # not a constant answer: the check above has teeth
    assert ((cached >= policy.token_range.start) & (cached < policy.token_range.stop)).all()
    # Each row alone (no padding) gives the same ids as in the batch.
    for i in range(len(batch["task"])):
        one = {k: v[i : i + 1] for k, v in batch.items() if torch.is_tensor(v) or isinstance(v, list)}
        assert torch.equal(
            decode_actions(policy.model, policy.model_inputs(one), n, policy.token_range), cached[i : i + 1]
        )
    # HF generate with the same constraint agrees (it builds its positions its own way).
    mm = (inputs["input_ids"] == policy.model.config.image_token_id).int()
    generated = policy.model.generate(
        **inputs,
        mm_token_type_ids=mm,
        max_new_tokens=n,
        do_sample=False,
        logits_processor=LogitsProcessorList([ActionTokenLogitsProcessor(policy.token_range)]),
        pad_token_id=policy.pad_token_id,
    )
    assert torch.equal(generated[:, inputs["input_ids"].shape[1] :], cached)


def test_select_action_runs_chunks_from_a_queue(vla, monkeypatch):
    policy, pre, post = vla.policy(chunk_size=4, n_action_steps=3)
    policy.eval()
    batch = vla.batch(pre, chunk_size=4)
    calls = []
    real = policy.predict_action_chunk
    monkeypatch.setattr(policy, "predict_action_chunk", lambda b: calls.append(1) or real(b))
    chunk = real(batch)
    actions = [policy.select_action(batch) for _ in range(4)]
    assert len(calls) == 2 and actions[0].shape == (4, 7)
    assert torch.equal(torch.stack(actions[:3], 1), chunk[:, :3])
    policy.reset()
    policy.select_action(batch)
    assert len(calls) == 3
    assert post(actions[0]).shape == (4, 7)


def test_save_and_reload_in_a_fresh_dir_gives_identical_actions(vla, tmp_path, monkeypatch):
    policy, pre, post = vla.policy()
    _randomize_llm(policy, seed=1)
    policy.eval()
    batch = vla.batch(pre, chunk_size=4)
    before = post(policy.predict_action_chunk(batch))
    saved = vla.move(vla.save(policy, pre, post, tmp_path / "a"), tmp_path / "b")
    for name in ("config.json", "model.safetensors", "backbone/config.json", "action_tokenizer.json"):
        assert (saved / name).is_file()

    import vst.backbone

    def no_backbone(*a, **k):
        raise AssertionError("from_pretrained must not touch the original backbone")

    monkeypatch.setattr(vst.backbone, "build_backbone", no_backbone)
    monkeypatch.setattr(vst.backbone, "resolve_backbone", no_backbone)
    reloaded = VLAPolicy.from_pretrained(saved)
    model = reloaded.model
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied like the tiny backbone
    from lerobot.policies.factory import make_pre_post_processors

    pre2, post2 = make_pre_post_processors(reloaded.config, pretrained_path=str(saved))
    after = post2(reloaded.predict_action_chunk(pre2(_raw_batch(vla))))
    assert torch.equal(before, after)
    assert reloaded.processor.tokenizer.get_vocab() == policy.processor.tokenizer.get_vocab()


def _raw_batch(vla):
    """The same frames as `vla.batch`, unprocessed (to go through a reloaded preprocessor)."""
    return vla.batch(lambda b: b, chunk_size=4)


def test_untied_backbone_round_trips(vla, tmp_path):
    """A backbone with a separate LM head keeps it separate, action rows initialised in both."""
    import dataclasses

    from vst.backbone import build_from_config, load_model_config

    preset = load_model_config("tiny")
    preset = dataclasses.replace(preset, arch=dataclasses.replace(preset.arch, tie_word_embeddings=False))
    model, processor = build_from_config(preset)
    model.save_pretrained(tmp_path / "untied")
    processor.save_pretrained(tmp_path / "untied")
    policy, pre, post = vla.policy(backbone=str(tmp_path / "untied"))
    head, emb = policy.model.lm_head.weight, policy.model.get_input_embeddings().weight
    assert head is not emb and head.shape == emb.shape
    rng = policy.token_range
    assert not torch.equal(head[rng.start : rng.stop], emb[rng.start : rng.stop])
    saved = vla.save(policy, pre, post, tmp_path / "ckpt")
    reloaded = VLAPolicy.from_pretrained(saved)
    assert reloaded.model.lm_head.weight is not reloaded.model.get_input_embeddings().weight
    assert torch.equal(reloaded.model.lm_head.weight, head)
    assert torch.equal(reloaded.model.get_input_embeddings().weight, emb)


def test_gradient_checkpointing_gives_the_same_gradients(vla):
    results = []
    for checkpointing in (False, True):
        policy, pre, _ = vla.policy(gradient_checkpointing=checkpointing)
        assert policy.model.is_gradient_checkpointing == checkpointing
        policy.train()
        loss, _ = policy.forward(vla.batch(pre, chunk_size=4))
        loss.backward()
        q = policy.model.model.language_model.layers[0].self_attn.q_proj.weight
        results.append((loss.detach(), q.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0])
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_state_off_needs_no_state_stats(vla):
    policy, pre, _ = vla.policy(use_state=False)
    stats = {k: v for k, v in vla.meta.stats.items() if k != "observation.state"}
    pre, post = make_vla_pre_post_processors(policy.config, stats)
    batch = vla.batch(pre, chunk_size=4)
    assert "Robot state" not in policy.prompt.texts(batch)[0]
    assert policy.predict_action_chunk(batch).shape == (4, 4, 7)


def test_lora_trains_adapters_and_action_rows_only(vla, tmp_path):
    policy, pre, post = vla.policy(lora_rank=4)
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "embed_tokens" in n or "visual" in n for n in trainable)
    assert not any("q_proj.base_layer" in n for n in trainable)
    emb = policy.model.get_input_embeddings().weight
    before = emb.detach().clone()
    batch = vla.batch(pre, chunk_size=4)
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-2)
    loss, _ = policy.forward(batch)
    loss.backward()
    optimizer.step()
    rng = policy.token_range
    assert torch.equal(emb[: rng.start], before[: rng.start])  # real vocabulary untouched
    assert not torch.equal(emb[rng.start : rng.stop], before[rng.start : rng.stop])
    policy.eval()
    actions = policy.predict_action_chunk(batch)
    reloaded = VLAPolicy.from_pretrained(vla.save(policy, pre, post, tmp_path / "lora"))
    assert torch.equal(reloaded.predict_action_chunk(batch), actions)


def test_fast_tokenizer_policy_trains_predicts_and_reloads(vla, tmp_path):
    policy, pre, post = vla.policy(action_tokenizer="fast", fast_vocab_size=300, fast_max_tokens=24)
    assert len(policy.token_range) == 300
    batch = vla.batch(pre, chunk_size=4)
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=2e-3)
    for _ in range(2):
        loss, _ = policy.forward(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.eval()
    chunk = policy.predict_action_chunk(batch)
    assert chunk.shape == (4, 4, 7) and torch.isfinite(chunk).all()
    reloaded = VLAPolicy.from_pretrained(vla.save(policy, pre, post, tmp_path / "fast"))
    assert torch.equal(reloaded.predict_action_chunk(batch), chunk)


# ------------------------------------------------------------------------------------------- bad input


def test_dataset_action_dim_differs_from_the_policy(vla, tmp_path):
    from lerobot.configs import FeatureType, PolicyFeature

    policy, pre, post = vla.policy()
    batch = vla.batch(pre, chunk_size=4)
    batch["action"] = batch["action"][..., :6]
    with pytest.raises(ValueError, match=r"expects \(B, 4, 7\).*does not match"):
        policy.forward(batch)
    saved = vla.save(policy, pre, post, tmp_path / "ckpt")
    six = vla.config(output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))})
    with pytest.raises(ValueError, match="predicts 7-D actions but the config/dataset has 6-D"):
        VLAPolicy.from_pretrained(saved, config=six)
    stats = {k: dict(v) for k, v in vla.meta.stats.items()}
    stats["action"] = {q: v[:6] for q, v in stats["action"].items()}
    with pytest.raises(ValueError, match="have 6 dimensions but the policy's action has 7"):
        make_vla_pre_post_processors(vla.config(), stats)


def test_stats_without_quantiles_are_refused(vla):
    stats = {k: dict(v) for k, v in vla.meta.stats.items()}
    del stats["action"]["q99"]
    with pytest.raises(MissingStatsError, match=r"lack \['q99'\]"):
        make_vla_pre_post_processors(vla.config(), stats)
    with pytest.raises(MissingStatsError, match="got none"):
        make_vla_pre_post_processors(vla.config(), None)


def test_checkpoint_without_normalisation_stats(vla, tmp_path):
    policy, pre, post = vla.policy()
    saved = vla.save(policy, pre, post, tmp_path / "ckpt")
    for f in saved.glob("policy_postprocessor*"):
        f.unlink()
    files = sorted(p.name for p in saved.rglob("*"))
    with pytest.raises(MissingStatsError, match="normalisation"):
        VLAPolicy.from_pretrained(saved)
    post.save_pretrained(saved)
    state = next(saved.glob("policy_postprocessor_step_*.safetensors"))
    from safetensors.torch import load_file, save_file

    save_file({k: v for k, v in load_file(state).items() if not k.startswith("action.")}, state)
    with pytest.raises(MissingStatsError, match=r"no action \['q01', 'q99'\] stats"):
        VLAPolicy.from_pretrained(saved)
    assert {p.name for p in saved.rglob("*")} >= set(files)  # nothing was deleted by the failed loads


def test_model_output_that_is_not_action_tokens_is_refused(vla, monkeypatch):
    """Masked decoding cannot produce other ids; if a decoder ever did, parsing names them."""
    import vla.modeling_vla as modeling
    from vla.action_tokenizer import NotActionTokenError

    policy, pre, _ = vla.policy()
    batch = vla.batch(pre, chunk_size=4)
    real = modeling.decode_actions

    def corrupt(*args, **kwargs):
        ids = real(*args, **kwargs)
        ids[1, 3] = 5  # a real-vocabulary token
        return ids

    monkeypatch.setattr(modeling, "decode_actions", corrupt)
    with pytest.raises(NotActionTokenError, match=r"sequence 1: 1 ids are not action tokens.*ids \[5\]"):
        policy.predict_action_chunk(batch)


def test_incomplete_checkpoint_names_missing_files(vla, tmp_path):
    policy, pre, post = vla.policy()
    saved = vla.save(policy, pre, post, tmp_path / "ckpt")
    (saved / "action_tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="action_tokenizer.json"):
        VLAPolicy.from_pretrained(saved)


# ------------------------------------------------------------------------------ LeRobot's loading path


def test_reload_through_lerobot_path_and_closed_loop_rollout(vla, tmp_path):
    """sim.policies.load_policy reloads exactly as lerobot-eval does (PreTrainedConfig.from_pretrained ->
    get_policy_class -> from_pretrained -> make_pre_post_processors); then sim-eval runs one episode."""
    from sim.policies import load_policy

    policy, pre, post = vla.policy()
    saved = vla.save(policy, pre, post, tmp_path / "ckpt")
    loaded, pre2, post2 = load_policy(str(saved), device="cpu")
    assert isinstance(loaded, VLAPolicy)
    batch = _raw_batch(vla)
    policy.eval()
    assert torch.equal(post2(loaded.select_action(pre2(batch))), post(policy.select_action(pre(batch))))

    out = tmp_path / "eval"
    cmd = [
        str(Path(sys.executable).parent / "sim-eval"),
        f"policy={saved}",
        "task=lift",
        "episodes=1",
        "workers=1",
    ]
    cmd += ["image_size=64", "max_steps=12", "videos=0", "device=cpu", f"output_dir={out}"]
    run = subprocess.run(cmd, env=vla.env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    episode = json.loads((out / "episodes.jsonl").read_text().splitlines()[0])
    assert episode["task"] == "lift" and episode["steps"] == 12
    assert (out / "summary.json").is_file()


def test_eval_executes_fewer_actions_per_chunk_when_asked(vla, tmp_path):
    """sim-eval n_action_steps=N: predict again after N actions of each chunk (receding horizon)."""
    from sim.policies import load_policy

    policy, pre, post = vla.policy()
    saved = vla.save(policy, pre, post, tmp_path / "ckpt")
    loaded, pre2, _ = load_policy(str(saved), device="cpu", n_action_steps=1)
    calls = []
    predict = loaded.predict_action_chunk
    loaded.predict_action_chunk = lambda b: calls.append(1) or predict(b)
    batch = pre2(_raw_batch(vla))
    loaded.reset()
    first = [loaded.select_action(batch) for _ in range(3)]
    assert len(calls) == 3 and torch.equal(first[0], first[1])  # same observation, same chunk, first action
    with pytest.raises(ValueError, match=r"1\.\.chunk_size"):
        load_policy(str(saved), device="cpu", n_action_steps=policy.config.chunk_size + 1)


def test_soft_bin_targets_give_credit_to_neighbouring_bins():
    from vla.modeling_vla import soft_bin_cross_entropy

    rng = range(10, 266)  # 256 bin tokens after a 10-token vocabulary
    wanted = torch.tensor([10 + 100, 10 + 100])
    logits = torch.zeros(2, 266)
    logits[0, 10 + 102] = 8.0  # peaked two bins off
    logits[1, 10 + 200] = 8.0  # peaked a hundred bins off
    near, far = soft_bin_cross_entropy(logits, wanted, rng, sigma=2.0)
    assert near < far  # one-hot cross-entropy scores both misses the same
    hard = torch.nn.functional.cross_entropy(logits, wanted, reduction="none")
    assert torch.allclose(soft_bin_cross_entropy(logits, wanted, rng, sigma=0.05), hard, atol=1e-4)
    with pytest.raises(ValueError, match="bin_label_sigma"):
        VLAConfig(action_tokenizer="fast", bin_label_sigma=2.0)


def test_training_with_soft_bin_targets_reduces_the_loss(vla):
    policy, pre, _ = vla.policy(bin_label_sigma=2.0)
    batch = vla.batch(pre, chunk_size=4)
    losses, _ = _train(policy, batch, steps=8)
    # the soft target's own entropy (~2.1 nats at sigma 2) is the floor, so compare the drop, not a ratio
    assert losses[-1] < losses[0] - 1.0, losses


def test_temporal_ensemble_is_the_weighted_mean_of_every_prediction_for_the_step():
    """Against the definition: at step t, every chunk c_s predicted at s in (t-K, t] proposes c_s[t - s]; the
    action is their mean with weights exp(-coeff * i), i = 0 for the oldest."""
    gen = torch.Generator().manual_seed(0)
    coeff, k = 0.3, 4
    chunks = [torch.randn(2, k, 3, generator=gen) for _ in range(9)]
    ens = TemporalEnsemble(coeff)
    for t, chunk in enumerate(chunks):
        got = ens.update(chunk)
        proposals = [chunks[s][:, t - s] for s in range(max(0, t - k + 1), t + 1)]  # oldest first
        w = torch.exp(-coeff * torch.arange(len(proposals), dtype=torch.float32))
        want = sum(wi * p for wi, p in zip(w, proposals)) / w.sum()
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="reset"):
        ens.update(torch.zeros(3, k, 3))  # another batch of envs without a reset


@pytest.mark.parametrize("every", [2, 3])
def test_temporal_ensemble_every_n_steps_mixes_the_overlapping_chunks(every):
    """A chunk at steps 0, N, 2N, ...: step t mixes c_s[t - s] of every chunk s with s <= t < s + K, oldest first."""
    gen = torch.Generator().manual_seed(1)
    coeff, k = 0.3, 4
    ens, chunks = TemporalEnsemble(coeff, every=every), {}
    for t in range(11):
        if ens.due():
            chunks[t] = torch.randn(2, k, 3, generator=gen)
            ens.add(chunks[t])
        got = ens.pop()
        proposals = [c[:, t - s] for s, c in chunks.items() if s <= t < s + k]
        w = torch.exp(-coeff * torch.arange(len(proposals), dtype=torch.float32))
        torch.testing.assert_close(got, sum(wi * p for wi, p in zip(w, proposals)) / w.sum())
    assert sorted(chunks) == list(range(0, 11, every))


def test_temporal_ensemble_every_chunk_size_steps_is_the_queue():
    ens, chunks = TemporalEnsemble(0.01, every=4), [torch.randn(1, 4, 2) for _ in range(3)]
    got = []
    for c in chunks:
        assert ens.due()
        ens.add(c)
        got += [ens.pop() for _ in range(4)]
    torch.testing.assert_close(torch.stack(got, 1), torch.cat(chunks, 1))
    with pytest.raises(ValueError, match="every 0 steps"):
        TemporalEnsemble(0.01, every=0)


def test_eval_with_temporal_ensembling_predicts_every_step(vla, tmp_path):
    """sim-eval temporal_ensemble=C: a chunk every step. With one observation every call predicts the same chunk c,
    so step t mixes c[t] (predicted at 0, the oldest), c[t-1], ..., c[0] (predicted now)."""
    from sim.policies import load_policy

    policy, pre, post = vla.policy()
    saved = vla.save(policy, pre, post, tmp_path / "ckpt")
    loaded, pre2, _ = load_policy(str(saved), device="cpu", temporal_ensemble=0.01)
    assert loaded.config.n_action_steps == 1 and loaded.config.temporal_ensemble_coeff == 0.01
    batch = pre2(_raw_batch(vla))
    chunk = loaded.predict_action_chunk(batch)
    calls = []
    predict = loaded.predict_action_chunk
    loaded.predict_action_chunk = lambda b: calls.append(1) or predict(b)
    loaded.reset()
    actions = [loaded.select_action(batch) for _ in range(3)]
    assert len(calls) == 3
    for t, action in enumerate(actions):
        w = torch.exp(-0.01 * torch.arange(t + 1, dtype=torch.float32))
        torch.testing.assert_close(action, sum(w[i] * chunk[:, t - i] for i in range(t + 1)) / w.sum())
    assert not torch.allclose(actions[1], chunk[:, 1])  # the chunks' steps disagree: it is a mix
    strided, _, _ = load_policy(str(saved), device="cpu", n_action_steps=2, temporal_ensemble=0.01)
    predict, calls = strided.predict_action_chunk, []
    strided.predict_action_chunk = lambda b: calls.append(1) or predict(b)
    strided.reset()
    actions = [strided.select_action(batch) for _ in range(4)]
    assert len(calls) == 2  # a chunk at steps 0 and 2
    torch.testing.assert_close(actions[1], chunk[:, 1])  # only the step-0 chunk covers step 1
    w = torch.exp(-0.01 * torch.arange(2, dtype=torch.float32))
    torch.testing.assert_close(actions[3], (w[0] * chunk[:, 3] + w[1] * chunk[:, 1]) / w.sum())


def test_amp_trains_like_fp32_with_fp32_weights_attention_and_logits(vla):
    """use_amp: bf16 matmuls over fp32 weights; the loss follows fp32's, attention and logits stay fp32."""
    ref, pre, _ = vla.policy()
    amp, _, _ = vla.policy(use_amp=True)
    amp.load_state_dict(ref.state_dict())
    text, vision = amp.model.config.text_config, amp.model.config.vision_config
    assert (text._attn_implementation, vision._attn_implementation) == ("sdpa_fp32", "sdpa_fp32")
    assert ref.model.config.text_config._attn_implementation == "sdpa"
    batch = vla.batch(pre, chunk_size=4)
    seen = {}
    hook = amp.model.lm_head.register_forward_hook(lambda *a: seen.setdefault("bf16_head", True))
    losses_ref, _ = _train(ref, batch, steps=4)
    losses_amp, _ = _train(amp, batch, steps=4)
    hook.remove()
    assert "bf16_head" not in seen  # the head runs through fp32_logits, never through the bf16 module call
    assert losses_amp == pytest.approx(losses_ref, rel=0.02)
    assert losses_amp[-1] < losses_amp[0]
    assert all(p.dtype == torch.float32 for p in amp.parameters())
    # On the CPU decoding stays fp32: the same actions as the fp32 policy with the same weights.
    amp.eval(), ref.eval()
    chunk = amp.predict_action_chunk(batch)
    assert chunk.shape == (4, 4, 7) and torch.equal(chunk, ref.predict_action_chunk(batch))


def test_amp_decoding_runs_bf16_matmuls_and_follows_fp32_logits(vla):
    """Decoding under autocast runs bf16 matmuls (not a no-op switch) with fp32 logits close to fp32's."""
    ref, pre, _ = vla.policy()
    _randomize_llm(ref, seed=2)
    amp, _, _ = vla.policy(use_amp=True)
    amp.load_state_dict(ref.state_dict())
    ref.eval(), amp.eval()
    batch = vla.batch(pre, chunk_size=4)
    dtypes = []
    mlp = amp.model.model.language_model.layers[0].mlp.down_proj
    hook = mlp.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    inputs = amp.model_inputs(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what use_amp does on a GPU, here on the CPU
        ids_amp, logits_amp = decode_uncached(amp.model, inputs, 1, amp.token_range)
    hook.remove()
    ids_ref, logits_ref = decode_uncached(ref.model, ref.model_inputs(batch), 1, ref.token_range)
    assert set(dtypes) == {torch.bfloat16} and logits_amp.dtype == torch.float32
    assert not torch.equal(logits_amp, logits_ref)
    rng = amp.token_range
    a, r = logits_amp[..., rng.start : rng.stop], logits_ref[..., rng.start : rng.stop]
    assert torch.corrcoef(torch.stack([a.flatten(), r.flatten()]))[0, 1] > 0.99
