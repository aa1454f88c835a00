"""The tiny presets' tokenizer: a byte-level BPE trained on the project's own text, with Qwen2.5-VL's chat tokens.

No tokenizer can be downloaded here, so the `tiny` and `small` presets ship their own (vst/assets/, a few
hundred KB) and nothing is trained at run time. Special tokens, chat template and processor follow Qwen2.5-VL's
conventions, so the prompt-building code written for the tiny model runs unchanged on real checkpoints.
Rebuild the shipped files with `python -m vst.tokenizer` (deterministic: same corpus, same file).
"""

import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from sim.palette import COLORS, KINDS

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_FILE = ASSETS / "tiny_tokenizer.json"
CHAT_TEMPLATE_FILE = ASSETS / "chat_template.jinja"

# Qwen2.5-VL's control tokens, in the roles its processor and chat template give them.
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
SPECIAL_TOKENS = [PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
# Reasoning tags are ordinary text (they survive skip_special_tokens) but get one id each, as in Qwen3.
THINK_TOKENS = ["<think>", "</think>"]
DEFAULT_VOCAB_SIZE = 4096
# Letters, digits one at a time (numbers stay compositional), punctuation runs, whitespace: a GPT-2-style split.
SPLIT_PATTERN = r"'(?:s|t|re|ve|m|ll|d)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

SYSTEM_PROMPT = "You are a helpful assistant."


def _corpus_lines(rng: random.Random, n: int) -> list[str]:
    """Representative text of every kind the project trains on: robot instructions, spatial Q&A, numbers,
    JSON 3D boxes, multiple choice, `<think>` traces, captions, general Q&A."""
    colors, kinds = list(COLORS), list(KINDS)
    relations = ["left of", "right of", "in front of", "behind", "next to", "on top of", "near", "far from"]
    verbs = ["pick up", "grasp", "lift", "push", "move", "slide", "stack", "put", "place"]
    units = ["metres", "meters", "centimetres", "cm", "m", "degrees"]

    scene_words = [
        "table",
        "floor",
        "shelf",
        "drawer",
        "cabinet",
        "stove",
        "basket",
        "tray",
        "wall",
        "robot",
        "gripper",
        "arm",
        "camera",
        "image",
        "view",
        "scene",
        "room",
        "kitchen",
        "counter",
        "sink",
    ]
    adjectives = [
        "small",
        "large",
        "tall",
        "short",
        "wide",
        "narrow",
        "round",
        "square",
        "empty",
        "full",
        "nearest",
        "farthest",
        "highest",
        "lowest",
        "leftmost",
        "rightmost",
        "wooden",
        "metal",
    ]
    general_q = [
        "What is the capital of France? Paris.",
        "What is the largest planet? Jupiter.",
        "How many days are in a week? Seven.",
        "What colour is the sky on a clear day? Blue.",
        "Read the text in the image. It says STOP.",
        "Solve for x: 2x + 3 = 11. x = 4.",
        "Which is heavier, a kilogram of iron or a kilogram of feathers? They weigh the same.",
        "What shape has three sides? A triangle.",
        "Is water wet? Yes, usually.",
        "What does the sign show? An arrow pointing to the exit.",
    ]

    def obj() -> str:
        return f"{rng.choice(colors)} {rng.choice(kinds)}"

    def num(lo: float = 0.0, hi: float = 3.0) -> str:
        return f"{rng.uniform(lo, hi):.{rng.choice([1, 2, 2, 3])}f}"

    def box() -> str:
        vals = (
            [num(-1, 1), num(-0.5, 0.5), num(0.3, 3)]
            + [num(0.02, 0.4) for _ in range(3)]
            + ["0.0", num(-3.14, 3.14), "0.0"]
        )
        return json.dumps({"label": obj(), "bbox_3d": [float(v) for v in vals]})

    def think(answer: str) -> str:
        a, b = obj(), obj()
        return (
            f"<think>The {a} is at about {num(0.3, 3)} m depth and the {b} at {num(0.3, 3)} m. "
            f"The {a} looks {rng.choice(['larger', 'smaller'])}, so it is {rng.choice(['closer', 'farther'])}. "
            f"So the answer is {answer}.</think> {answer}"
        )

    templates = [
        lambda: (
            f"{rng.choice(verbs)} the {obj()} {rng.choice(relations)} the {obj()} and place it on the {obj()}"
        ),
        lambda: f"What action should the robot take to {rng.choice(verbs)} the {obj()}?",
        lambda: (
            f"Which object is closer to the camera, the {obj()} or the {obj()}? Answer with the object's name."
        ),
        lambda: f"How far is the {obj()} from the {obj()} in {rng.choice(units[:3])}? {num()}",
        lambda: f"What is the height of the {obj()} in centimetres? {rng.randint(2, 40)}",
        lambda: (
            f"Is the {obj()} {rng.choice(relations)} the {obj()}? {rng.choice(['Yes', 'No', 'yes', 'no'])}."
        ),
        lambda: f"How many {rng.choice(kinds)}s are on the table? {rng.randint(0, 9)}",
        lambda: (
            f"Which is {rng.choice(relations)} the {obj()}? (A) the {obj()} (B) the {obj()} (C) the {obj()} "
            f"(D) the {obj()}. Answer with the option's letter. {rng.choice('ABCD')}"
        ),
        lambda: (
            f"The camera's horizontal field of view is {rng.randint(40, 100)} degrees and the vertical one "
            f"{rng.randint(30, 80)} degrees; the image is {rng.choice([112, 160, 224])}x{rng.choice([112, 120, 224])}. "
            f"Detect the 3D bounding boxes of all objects as JSON."
        ),
        lambda: "[" + ", ".join(box() for _ in range(rng.randint(1, 3))) + "]",
        lambda: (
            f"Between the two views the camera moved {rng.choice(['forward', 'backward', 'left', 'right'])} "
            f"{num(0, 1)} m and turned {rng.choice(['left', 'right'])} {rng.randint(0, 90)} degrees."
        ),
        lambda: f"Which image was taken closer to the {obj()}? Image {rng.randint(1, 4)}.",
        lambda: think(rng.choice(["A", "B", "C", "D", obj(), num()])),
        lambda: f"A {obj()} and a {obj()} on a wooden table, the {obj()} is {rng.choice(relations)} them.",
        lambda: (
            f"Describe the scene. There are {rng.randint(1, 6)} objects: "
            + ", ".join(obj() for _ in range(3))
            + "."
        ),
        lambda: f"What is {rng.randint(0, 99)} + {rng.randint(0, 99)}? {rng.randint(0, 198)}",
        lambda: f"What colour is the {rng.choice(kinds)}? It is {rng.choice(colors)}.",
        lambda: (
            f"Estimate the distance between the {obj()} and the camera. About {num(0.3, 3)} {rng.choice(units)}."
        ),
        lambda: f"{SYSTEM_PROMPT} Please answer the question about the image.",
        lambda: (
            f"{rng.choice(['open', 'close'])} the {rng.choice(['top', 'middle', 'bottom'])} drawer of the cabinet"
        ),
        lambda: (
            f"put the {obj()} on the {rng.choice(scene_words)} and turn {rng.choice(['on', 'off'])} the stove"
        ),
        lambda: (
            f"The {rng.choice(adjectives)} {obj()} is on the {rng.choice(scene_words)}, {rng.choice(relations)} the {obj()}."
        ),
        lambda: (
            f"Which object is the {rng.choice(adjectives)} one in the {rng.choice(scene_words)}? The {obj()}."
        ),
        lambda: rng.choice(general_q),
    ]
    return [rng.choice(templates)() for _ in range(n)]


def engine_lines(n_rows: int, seed: int = 0) -> list[str]:
    """Every turn of `n_rows` rows from the data engine (all row types in equal shares, so CoT traces, RL
    prompts and general rows weigh as much as VST-P perception), i.e. the exact text the tiny models train on."""
    # renders scenes: imported here because only rebuilding the asset needs it
    from vst.data.generate import DataConfig, generate_rows

    cfg = DataConfig(seed=seed, row_mix={"perception": 1, "cot": 1, "rl": 1, "general": 1})
    return [turn["value"] for row in generate_rows(cfg, range(n_rows)) for turn in row["conversations"]]


def robot_lines(rng: random.Random, n: int) -> list[str]:
    """The VLA's prompts: the sim tasks' instructions in OpenVLA's question, with a signed robot state."""
    from sim.tasks import TASKS

    instructions = [t.instruction for t in TASKS.values()]
    state = lambda: " ".join(f"{rng.uniform(-1, 1):+.2f}" for _ in range(rng.choice([7, 8, 9])))  # noqa: E731
    return [
        f"What action should the robot take to {rng.choice(instructions)}?"
        + (f" Robot state: {state()}" if k % 2 else "")
        for k in range(n)
    ]


def build_corpus(n_rows: int = 3000, n_template_lines: int = 20_000, seed: int = 0) -> list[str]:
    """The deterministic training text for the shipped tokenizer: data-engine rows, robot prompts and broader
    templated text (so words the engine does not use yet still get sensible pieces)."""
    rng = random.Random(seed)
    return engine_lines(n_rows, seed) + robot_lines(rng, 2000) + _corpus_lines(rng, n_template_lines)


def train_tokenizer(corpus: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Byte-level BPE (every byte in the base alphabet, so no text is ever unknown) plus the chat tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def wrap_tokenizer(tok: Tokenizer, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """The transformers view of the raw tokenizer, with Qwen's roles for eos/pad and its chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        padding_side="right",
        model_max_length=32768,
        chat_template=chat_template if chat_template is not None else CHAT_TEMPLATE_FILE.read_text(),
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str | Path = TOKENIZER_FILE) -> PreTrainedTokenizerFast:
    """The shipped tiny tokenizer (or another raw tokenizers JSON), ready for a processor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer file {path} is missing; rebuild it with `python -m vst.tokenizer`"
        )
    tok = Tokenizer.from_file(str(path))
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer {path} lacks the Qwen chat tokens {missing}")
    return wrap_tokenizer(tok)


def build_processor(
    tokenizer: PreTrainedTokenizerFast,
    *,
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL's processor around a locally built tokenizer; images are resized into [min, max] pixels."""
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    vision = dict(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size)
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(size), **vision),
        video_processor=Qwen2VLVideoProcessor(size=dict(size), **vision),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def main() -> None:
    """Rebuild vst/assets/tiny_tokenizer.json from the corpus."""
    tok = train_tokenizer(build_corpus())
    ASSETS.mkdir(parents=True, exist_ok=True)
    TOKENIZER_FILE.write_text(tok.to_str(pretty=False))
    print(
        f"wrote {TOKENIZER_FILE} ({tok.get_vocab_size()} tokens, {TOKENIZER_FILE.stat().st_size // 1024} KiB)"
    )


if __name__ == "__main__":
    main()
