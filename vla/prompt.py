"""The one prompt of the VLA, used identically by training and inference.

    <|im_start|>user
    <|vision_start|><|image_pad|>*n<|vision_end|>   (one block per camera, in the config's camera order)
    What action should the robot take to {instruction}? Robot state: +0.12 -0.53 ...<|im_end|>
    <|im_start|>assistant
    <act_..> <act_..> ...                              (the target: K*D action tokens, FAST ids + <|im_end|>)

Qwen2.5-VL's chat format without a system turn (the fine-tuned VLA never needs one), with the question of
OpenVLA. Every image is resized to the same square size, so each camera costs a fixed number of image tokens
and the prompt is plain text: `PromptEncoder.prompt_ids` (text) and `PromptEncoder.pixels` (images) are all the
model input there is, for a training batch and for an inference batch alike.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vla.action_tokenizer import to_numpy

IMAGE_KEY_PREFIX = "observation.images."
STATE_KEY = "observation.state"
TASK_KEY = "task"

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
QUESTION = "What action should the robot take to {instruction}?"


class PromptError(ValueError):
    """A batch cannot be turned into the VLA's prompt (missing camera, too long, empty instruction, ...)."""


def clean_instruction(instruction: str) -> str:
    """One line, lower case, no trailing full stop: the dataset's and the env's task strings may differ in
    exactly these ways for the same task."""
    text = " ".join(str(instruction).split()).rstrip(".").strip().lower()
    if not text:
        raise PromptError(f"empty task instruction {instruction!r}")
    return text


def state_text(state: Sequence[float], decimals: int) -> str:
    """Fixed-precision signed numbers (the state is normalised to about [-1, 1] by the preprocessor)."""
    values = np.round(np.asarray(state, dtype=np.float64), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return " ".join(f"{v:+.{decimals}f}" for v in values)


def prompt_text(
    instruction: str, num_images: int, tokens_per_image: int, state: Sequence[float] | None, decimals: int = 2
) -> str:
    images = (VISION_START + IMAGE_PAD * tokens_per_image + VISION_END) * num_images
    question = QUESTION.format(instruction=clean_instruction(instruction))
    if state is not None:
        question += f" Robot state: {state_text(state, decimals)}"
    return f"{IM_START}user\n{images}{question}{IM_END}\n{IM_START}assistant\n"


@dataclass
class PromptEncoder:
    """Turns a LeRobot batch (after the preprocessor) into prompt token ids and image patches."""

    processor: object  # the backbone's Qwen2.5-VL processor (with the action tokens added)
    cameras: Sequence[str]
    image_size: int
    use_state: bool
    state_decimals: int
    max_length: int  # prompt + target tokens

    def __post_init__(self):
        image_processor = self.processor.image_processor
        self.patch = image_processor.patch_size
        self.merge = image_processor.merge_size
        if self.image_size % (self.patch * self.merge):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size * merge_size = "
                f"{self.patch * self.merge} for this backbone"
            )
        self.tokens_per_image = (self.image_size // self.patch) ** 2 // self.merge**2
        tokenizer = self.processor.tokenizer
        vocab = tokenizer.get_vocab()
        missing = [t for t in (IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD) if t not in vocab]
        if missing:
            raise ValueError(f"the backbone's tokenizer lacks the Qwen chat/vision tokens {missing}")
        self.image_token_id = vocab[IMAGE_PAD]
        self.eos_token_id = vocab[IM_END]

    # ------------------------------------------------------------------------------------------- text

    def texts(self, batch: dict) -> list[str]:
        tasks = batch.get(TASK_KEY)
        if tasks is None:
            raise PromptError(f"the batch has no {TASK_KEY!r} (the instruction); keys: {sorted(batch)}")
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        states = None
        if self.use_state:
            if STATE_KEY not in batch:
                raise PromptError(f"use_state=true but the batch has no {STATE_KEY!r}; keys: {sorted(batch)}")
            states = to_numpy(batch[STATE_KEY]).reshape(len(tasks), -1)
        return [
            prompt_text(
                task,
                len(self.cameras),
                self.tokens_per_image,
                None if states is None else states[i],
                self.state_decimals,
            )
            for i, task in enumerate(tasks)
        ]

    def prompt_ids(self, batch: dict, target_len: int = 0) -> list[list[int]]:
        """Token ids of each sample's prompt, unpadded; raises if prompt + `target_len` exceeds max_length."""
        texts = self.texts(batch)
        ids = self.processor.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for text, row in zip(texts, ids):
            if len(row) + target_len > self.max_length:
                question = text.split("\n")[1].split(VISION_END)[-1]
                raise PromptError(
                    f"the prompt has {len(row)} tokens (+ {target_len} action tokens) but max_length is "
                    f"{self.max_length}: instruction too long for the context ({question[:120]!r}...); "
                    "shorten it or raise max_length"
                )
        return ids

    # ----------------------------------------------------------------------------------------- images

    def image_keys(self) -> list[str]:
        return [IMAGE_KEY_PREFIX + cam for cam in self.cameras]

    def pixels(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values, image_grid_thw) of every sample's cameras, sample-major, camera order as in the
        prompt. Images are (B, 3, H, W) floats in [0, 1] (uint8 is accepted)."""
        keys = self.image_keys()
        missing = [k for k in keys if k not in batch]
        if missing:
            present = sorted(k for k in batch if k.startswith(IMAGE_KEY_PREFIX))
            raise PromptError(f"the batch lacks the cameras {missing} (it has {present})")
        images = []
        for key in keys:
            img = batch[key]
            if img.ndim != 4 or img.shape[1] != 3:
                raise PromptError(f"{key} must be (B, 3, H, W), got {tuple(img.shape)}")
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            if img.shape[-2:] != (self.image_size, self.image_size):
                img = F.interpolate(
                    img, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
                )
            images.append(img.clamp(0.0, 1.0))
        stacked = torch.stack(images, dim=1).flatten(0, 1)  # (B * cams, 3, S, S), sample-major
        out = self.processor.image_processor(
            images=stacked, do_resize=False, do_rescale=False, return_tensors="pt"
        )
        return out["pixel_values"], out["image_grid_thw"]
