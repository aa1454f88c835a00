"""Rule-checked rewards for GRPO: format, accuracy by the row's answer mode, and their 0.5/0.5 mix.

Each `*_reward` function has the signature TRL's `GRPOTrainer` calls reward functions with: `completions` (strings,
or conversational lists of assistant messages) plus every dataset column as a keyword list, here `meta_info` (the
row's JSON string or dict); extra keywords (`prompts`, `completion_ids`, `trainer_state`, ...) are ignored. It returns
one float per completion. `format_score` / `accuracy_score` score one plain string. Malformed completions score 0 and
never raise; a malformed `meta_info` (our own data) raises ValueError naming the problem.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vst.scoring import MAX_OUTPUT_CHARS, THINK_CLOSE, THINK_OPEN, score_answer


def completion_text(completion: object) -> str | None:
    """The text of one completion as TRL hands it over: a string, or a list of messages whose content is a string
    or a list of {"type": "text", "text": ...} parts. None for anything else."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, list | tuple):
        return None
    parts = []
    for message in completion:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list | tuple):
            parts += [p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
        else:
            return None
    return "".join(parts)


def format_score(text: object) -> float:
    """1.0 for `<think>reasoning</think> answer`: exactly one think block, first in the text, with non-blank reasoning
    (an empty block would be format credit for no thought) and a non-empty answer after it."""
    if not isinstance(text, str) or len(text) > MAX_OUTPUT_CHARS:
        return 0.0
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return 0.0
    before, _, rest = text.partition(THINK_OPEN)
    thought, closed, answer = rest.partition(THINK_CLOSE)
    return float(not before.strip() and bool(closed) and bool(thought.strip()) and bool(answer.strip()))


def accuracy_score(
    text: object, meta_info: str | Mapping, numeric: str = "tolerance", rel_tol: float = 0.05
) -> float:
    """Correctness of one answer by the row's mode (numeric: within `rel_tol` relative error, or "mra")."""
    return score_answer(text, meta_info, numeric=numeric, rel_tol=rel_tol)


def format_reward(completions: Sequence, **kwargs) -> list[float]:
    return [format_score(completion_text(c)) for c in completions]


def accuracy_reward(
    completions: Sequence,
    meta_info: Sequence[str | Mapping],
    numeric: str = "tolerance",
    rel_tol: float = 0.05,
    **kwargs,
) -> list[float]:
    _check_lengths(completions, meta_info)
    return [accuracy_score(completion_text(c), m, numeric, rel_tol) for c, m in zip(completions, meta_info)]


def mixed_reward(
    completions: Sequence,
    meta_info: Sequence[str | Mapping],
    accuracy_weight: float = 0.5,
    format_weight: float = 0.5,
    numeric: str = "tolerance",
    rel_tol: float = 0.05,
    **kwargs,
) -> list[float]:
    """accuracy_weight * accuracy + format_weight * format, per completion (the paper's single RL reward)."""
    accuracy = accuracy_reward(completions, meta_info, numeric, rel_tol)
    return [accuracy_weight * a + format_weight * f for a, f in zip(accuracy, format_reward(completions))]


def _check_lengths(completions: Sequence, meta_info: Sequence) -> None:
    if isinstance(meta_info, str | Mapping) or len(meta_info) != len(completions):
        raise ValueError(
            "meta_info must be a list with one entry per completion "
            f"(got {type(meta_info).__name__} for {len(completions)} completions)"
        )


@dataclass
class RewardConfig:
    """How the RL stage scores a completion; `functions`/`weights` plug into `GRPOTrainer(reward_funcs=...)` and
    `GRPOConfig(reward_weights=...)`, which then also log the accuracy and format rewards separately."""

    accuracy_weight: float = 0.5
    format_weight: float = 0.5
    numeric: str = "tolerance"  # "tolerance" (1 within rel_tol) or "mra" (VSI-Bench mean relative accuracy)
    rel_tol: float = 0.05

    def __post_init__(self):
        if self.numeric not in ("tolerance", "mra"):
            raise ValueError(f"RewardConfig.numeric must be 'tolerance' or 'mra', got {self.numeric!r}")
        if not 0 <= self.rel_tol < 1:
            raise ValueError(f"RewardConfig.rel_tol must be in [0, 1), got {self.rel_tol}")

    def functions(self) -> list[Callable[..., list[float]]]:
        # partial keeps the function's name for TRL's logs (it unwraps partials to name the reward column).
        return [functools.partial(accuracy_reward, numeric=self.numeric, rel_tol=self.rel_tol), format_reward]

    @property
    def weights(self) -> list[float]:
        return [self.accuracy_weight, self.format_weight]

    def __call__(self, completions: Sequence, meta_info: Sequence[str | Mapping], **kwargs) -> list[float]:
        return mixed_reward(
            completions, meta_info, self.accuracy_weight, self.format_weight, self.numeric, self.rel_tol
        )
