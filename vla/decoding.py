"""Constrained decoding to the action tokens, and parsing generated ids back into action chunks.

The action tokens of either tokenizer (bins or FAST) are one contiguous id range, so masking is a slice:
`mask_logits` for a hand-written KV-cached loop, `ActionTokenLogitsProcessor` for HF `generate`. Extra ids
(e.g. EOS, which ends a variable-length FAST sequence) can be allowed beside the range.
"""

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from transformers import LogitsProcessor

from vla.action_tokenizer import NotActionTokenError, check_action_ids, to_numpy

__all__ = [
    "ActionTokenLogitsProcessor",
    "ActionTokenizer",
    "NotActionTokenError",
    "greedy_action_ids",
    "mask_logits",
    "parse_action_tokens",
]


class ActionTokenizer(Protocol):
    """What decoding needs from BinActionTokenizer / FastActionTokenizer."""

    @property
    def token_range(self) -> range: ...

    def decode(self, ids: np.ndarray) -> np.ndarray: ...


def _check_vocab(logits: torch.Tensor, token_range: range, extra_ids: Sequence[int]) -> None:
    top = max([token_range.stop - 1, *extra_ids])
    if top >= logits.shape[-1]:
        raise ValueError(
            f"logits have {logits.shape[-1]} entries but allowed token id {top} is beyond them: resize the "
            "model's embeddings to len(tokenizer) after adding the action tokens"
        )


def mask_logits(logits: torch.Tensor, token_range: range, extra_ids: Sequence[int] = ()) -> torch.Tensor:
    """A copy of `logits` (..., V) with -inf everywhere outside `token_range` and `extra_ids`."""
    _check_vocab(logits, token_range, extra_ids)
    masked = torch.full_like(logits, float("-inf"))
    masked[..., token_range.start : token_range.stop] = logits[..., token_range.start : token_range.stop]
    if extra_ids:
        extra = torch.as_tensor(list(extra_ids), device=logits.device)
        masked[..., extra] = logits[..., extra]
    return masked


def greedy_action_ids(
    logits: torch.Tensor, token_range: range, extra_ids: Sequence[int] = ()
) -> torch.Tensor:
    """Argmax over the allowed ids only: (..., V) logits -> (...) ids. Without extra ids it reads just the
    slice, the cheap path for a greedy loop over bin tokens."""
    if extra_ids:
        return mask_logits(logits, token_range, extra_ids).argmax(-1)
    _check_vocab(logits, token_range, extra_ids)
    return logits[..., token_range.start : token_range.stop].argmax(-1) + token_range.start


class ActionTokenLogitsProcessor(LogitsProcessor):
    """For `model.generate(..., logits_processor=LogitsProcessorList([ActionTokenLogitsProcessor(rng)]))`:
    greedy or sampled, every generated id is an action token (or one of `extra_ids`)."""

    def __init__(self, token_range: range, extra_ids: Sequence[int] = ()):
        self.token_range = token_range
        self.extra_ids = tuple(int(i) for i in extra_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return mask_logits(scores, self.token_range, self.extra_ids)


def parse_action_tokens(
    ids: Sequence[int] | Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
    action_tokenizer: ActionTokenizer,
    stop_token_id: int | None = None,
) -> np.ndarray:
    """Generated ids -> actions: one sequence (L,) gives (K, D), a batch (B, L) gives (B, K, D).

    With `stop_token_id`, each sequence ends before its first stop id (EOS/padding after a FAST sequence).
    Raises NotActionTokenError naming the offending ids if any remaining id is not an action token; the
    tokenizer's own decode rules apply after that (bins: L must be a multiple of D; FAST: pad/truncate).
    """
    rows, single = _rows(ids)
    if stop_token_id is not None:
        rows = [_cut_at_first(row, stop_token_id) for row in rows]
    for b, row in enumerate(rows):
        try:
            check_action_ids(row, action_tokenizer.token_range)
        except NotActionTokenError as e:
            raise NotActionTokenError(str(e) if single else f"sequence {b}: {e}") from None
    chunks = [np.asarray(action_tokenizer.decode(row)) for row in rows]
    if len({c.shape for c in chunks}) > 1:
        raise ValueError(
            f"the sequences decode to chunks of different shapes {sorted({c.shape for c in chunks})}"
        )
    return chunks[0] if single else np.stack(chunks)


def _rows(ids) -> tuple[list[np.ndarray], bool]:
    """The sequences as 1-D int64 arrays (a batch may be ragged lists), and whether `ids` was one sequence."""
    if isinstance(ids, torch.Tensor | np.ndarray):
        array = to_numpy(ids).astype(np.int64)
        if array.ndim not in (1, 2):
            raise ValueError(f"expected ids of shape (L,) or (B, L), got {array.shape}")
        return ([array] if array.ndim == 1 else list(array)), array.ndim == 1
    ids = list(ids)
    single = not ids or np.ndim(ids[0]) == 0
    return (
        [np.asarray(ids, dtype=np.int64)] if single else [np.asarray(r, dtype=np.int64) for r in ids]
    ), single


def _cut_at_first(row: np.ndarray, stop_id: int) -> np.ndarray:
    stops = np.flatnonzero(row == stop_id)
    return row[: stops[0]] if stops.size else row
