import json
import random

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer

from vst import tokenizer as T


@pytest.fixture(scope="module")
def tok():
    return T.load_tokenizer()


@pytest.fixture(scope="module")
def processor(tok):
    return T.build_processor(tok, min_pixels=112 * 112, max_pixels=224 * 224)


def test_special_tokens_are_single_ids(tok):
    for t in T.SPECIAL_TOKENS + T.THINK_TOKENS:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [t]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(set(tok.convert_tokens_to_ids(T.SPECIAL_TOKENS + T.THINK_TOKENS))) == len(T.SPECIAL_TOKENS) + 2


@pytest.mark.parametrize(
    "text",
    [
        "pick up the red cube left of the bowl and place it on the plate",
        '[{"label": "blue mug", "bbox_3d": [0.12, -0.05, 0.84, 0.05, 0.05, 0.05, 0.0, 0.31, 0.0]}]',
        "<think>The cube is 0.35 m away.</think> (B)",
        "naïve café, 3°C, 日本, emoji 🤖 and tabs\tand\nnewlines",
    ],
)
def test_round_trip_is_exact(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_project_text_compresses_and_digits_split(tok):
    text = "pick up the red cube left of the bowl and place it on the plate"
    assert len(tok(text)["input_ids"]) <= len(text.split()) + 2  # common words are whole tokens
    assert tok.convert_ids_to_tokens(tok("1234")["input_ids"]) == ["1", "2", "3", "4"]


def test_think_tags_survive_skipping_special_tokens(tok):
    ids = tok("<think>a</think> B<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>a</think> B"


def test_training_is_deterministic():
    """Same corpus, same file: the shipped asset can be rebuilt (`python -m vst.tokenizer`, about a minute)."""
    rng = random.Random(0)
    corpus = T._corpus_lines(rng, 2000) + T.robot_lines(rng, 200)
    a, b = T.train_tokenizer(corpus, vocab_size=600), T.train_tokenizer(list(corpus), vocab_size=600)
    assert a.to_str() == b.to_str() and a.get_vocab_size() == 600


def test_shipped_tokenizer_knows_the_project_text(tok):
    """Trained on the data engine's rows: their fixed prompt text is made of whole-word tokens."""
    from vst.data.skills.single_image import BOX_FORMAT, CAMERA_FRAME

    for text in (BOX_FORMAT, CAMERA_FRAME):
        n_words = len(text.split())
        assert len(tok(text)["input_ids"]) <= 1.5 * n_words + text.count(",") + sum(c.isdigit() for c in text)
    assert 1000 <= len(tok) <= T.DEFAULT_VOCAB_SIZE


def test_chat_template_matches_qwen2_5_vl_format(tok):
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the cube?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "left"}]},
        {"role": "user", "content": "And the ball?"},
    ]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Where is the cube?<|im_end|>\n"
        "<|im_start|>assistant\nleft<|im_end|>\n"
        "<|im_start|>user\nAnd the ball?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    sys_msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}]},
    ]
    assert tok.apply_chat_template(sys_msgs, tokenize=False, add_vision_id=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|><|image_pad|><|vision_end|>"
        "<|im_end|>\n"
    )


def test_assistant_mask_covers_only_the_reply(tok):
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "the red cube"}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == "the red cube<|im_end|>"


@pytest.mark.parametrize(
    "hw,grid", [((120, 160), (1, 8, 12)), ((40, 40), (1, 8, 8)), ((480, 640), (1, 12, 18))]
)
def test_processor_expands_images_into_bounded_grids(processor, hw, grid):
    img = Image.fromarray(np.full((*hw, 3), 128, np.uint8))
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": img}, {"type": "text", "text": "What is it?"}],
        }
    ]
    out = processor.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert tuple(out["image_grid_thw"][0].tolist()) == grid
    n_pad = int(np.prod(grid)) // 4
    ids = processor.tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    start = ids.index("<|vision_start|>")
    assert (
        ids[start + 1 : start + 1 + n_pad] == ["<|image_pad|>"] * n_pad
        and ids[start + 1 + n_pad] == "<|vision_end|>"
    )
    assert 112 * 112 <= grid[1] * grid[2] * 14 * 14 <= 224 * 224


def test_bad_tokenizer_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m vst.tokenizer"):
        T.load_tokenizer(tmp_path / "missing.json")
    plain = T.train_tokenizer(["just some words"], vocab_size=300)
    raw = json.loads(plain.to_str())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|image_pad|>"]
    raw["model"]["vocab"].pop("<|image_pad|>")
    (tmp_path / "t.json").write_text(json.dumps(raw))
    Tokenizer.from_file(str(tmp_path / "t.json"))  # a valid file, just without the chat tokens
    with pytest.raises(ValueError, match="image_pad"):
        T.load_tokenizer(tmp_path / "t.json")
