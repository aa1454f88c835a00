import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vst import backbone as B


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("backbones")


@pytest.fixture(scope="module")
def tiny(cache):
    return B.build_backbone("tiny", cache_dir=cache)


def _inputs(processor, answer="left of the bowl"):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": img}, {"type": "text", "text": "Where is the red cube?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return processor.apply_chat_template(msgs, tokenize=True, return_dict=True, return_tensors="pt")


def test_every_preset_config_is_valid():
    names = B.preset_names()
    assert {"tiny", "small", "qwen2_5_vl_3b", "vst_3b_sft"} <= set(names)
    for name in names:
        cfg = B.load_model_config(name)
        assert cfg.name == name
    assert B.load_model_config("vst_3b_sft").path == "rayruiyang/VST-3B-SFT"


@pytest.mark.parametrize(
    "name,lo,hi", [("tiny", 1e6, 1e7), ("small", 1e7, 1e8), ("qwen2_5_vl_3b_shape", 3.5e9, 4e9)]
)
def test_preset_sizes(name, lo, hi):
    with torch.device("meta"):  # shapes only: no memory, no time
        model, _ = B.build_from_config(B.load_model_config(name))
    assert lo < model.num_parameters() < hi


def test_tiny_forward_backward_and_generate(tiny):
    model, processor = tiny
    batch = _inputs(processor)
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # the image reaches the loss
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        add_generation_prompt=True,
    )
    gen = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert (
        gen.shape[1] == prompt["input_ids"].shape[1] + 4 or gen[0, -1] in model.generation_config.eos_token_id
    )


def test_preset_is_cached_by_content_and_deterministic(cache, tiny, tmp_path):
    path = B.preset_checkpoint("tiny", cache_dir=cache)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert B.preset_checkpoint("tiny", cache_dir=cache) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    again, _ = B.build_backbone("tiny", cache_dir=tmp_path)  # a fresh build elsewhere: same weights
    other, _ = B.build_backbone("tiny", cache_dir=tmp_path, seed=1)
    w = lambda m: m.model.language_model.layers[0].mlp.up_proj.weight  # noqa: E731
    assert torch.equal(w(again), w(tiny[0])) and not torch.equal(w(other), w(tiny[0]))


def test_save_reloads_with_auto_classes(tiny, tmp_path):
    model, processor = tiny
    model.eval()
    batch = _inputs(processor)
    B.save_backbone(model, processor, tmp_path / "ckpt")
    B.save_backbone(model, processor, tmp_path / "ckpt")  # overwriting an existing checkpoint works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "ckpt")
    proc = AutoProcessor.from_pretrained(tmp_path / "ckpt")
    assert proc.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False
    ) == processor.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, again(**batch).logits, atol=1e-5)
    m2, p2 = B.build_backbone(str(tmp_path / "ckpt"), dtype="bfloat16")  # a checkpoint dir loads the same way
    assert m2.dtype == torch.bfloat16


def test_mismatched_processor_and_model_fail_clearly(tiny, cache):
    model, processor = tiny
    bad = AutoProcessor.from_pretrained(B.preset_checkpoint("tiny", cache_dir=cache))
    bad.image_token_id += 1
    with pytest.raises(ValueError, match="image token: model expects id"):
        B.check_compatible(model, bad)
    small_vocab = AutoModelForImageTextToText.from_config(
        model.config.__class__.from_dict(model.config.to_dict())
    )
    small_vocab.resize_token_embeddings(100)
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the model's embedding has only 100"):
        B.check_compatible(small_vocab, processor)
    bad_patch = AutoProcessor.from_pretrained(B.preset_checkpoint("tiny", cache_dir=cache))
    bad_patch.image_processor.merge_size = 1
    with pytest.raises(ValueError, match="spatial merge size"):
        B.save_backbone(model, bad_patch, cache / "never-written")
    assert not (cache / "never-written").exists()


def test_bad_names_and_presets_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="neither a model preset.*tiny"):
        B.build_backbone("tinyy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        B.build_backbone(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="mrope_section"):
        B.ArchConfig(128, 512, 2, 4, 2, [4, 4, 4], 2, 64, 128, 4)
    with pytest.raises(ValueError, match="exactly one of"):
        B.ModelConfig(name="x")
    with pytest.raises(ValueError, match="unknown dtype"):
        B._as_dtype("float33")


def test_resolve_backbone(tmp_path, cache):
    cfg = {"model": "tiny", "pipeline_dir": str(tmp_path / "pipe"), "cache_dir": str(cache)}
    with pytest.raises(
        FileNotFoundError, match=r"vst-train stage=pretrain model=tiny output_dir=.*pipe/pretrain"
    ):
        B.resolve_backbone("baseline", cfg)
    with pytest.raises(
        FileNotFoundError, match=r"vst-train stage=rl model=.*pipe/cot/model output_dir=.*pipe/rl"
    ):
        B.resolve_backbone("vst", cfg)
    (tmp_path / "pipe" / "pretrain" / "model").mkdir(parents=True)
    (tmp_path / "pipe" / "pretrain" / "model" / "config.json").write_text("{}")
    assert B.resolve_backbone("baseline", cfg) == str(tmp_path / "pipe" / "pretrain" / "model")
    assert B.resolve_backbone("tiny", cfg) == str(B.preset_checkpoint("tiny", cache_dir=cache))
    assert B.resolve_backbone("rayruiyang/VST-3B-SFT", cfg) == "rayruiyang/VST-3B-SFT"
    # a real base model is its own baseline, and its pipeline has no pretraining stage
    real = {"model": "qwen2_5_vl_3b", "pipeline_dir": str(tmp_path / "real")}
    assert B.resolve_backbone("baseline", real) == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert (
        B.stage_command("sft", "qwen2_5_vl_3b", "P")
        == "vst-train stage=sft model=qwen2_5_vl_3b output_dir=P/sft"
    )
    assert (
        B.stage_command("sft", "tiny", "P") == "vst-train stage=sft model=P/pretrain/model output_dir=P/sft"
    )
