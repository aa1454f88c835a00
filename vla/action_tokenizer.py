"""OpenVLA-style action tokenizer: each action dimension, normalised to [-1, 1] with the dataset's q01/q99,
is quantised to one of `num_bins` uniform levels, and each level is a dedicated token added to the VLM's
tokenizer.

Two deliberate departures from OpenVLA's original:
- The levels are *added* tokens (`<act_0>` .. `<act_{N-1}>`, contiguous at the end of the vocabulary), not the
  last N ids of the existing vocabulary: no real word is overwritten and there is no off-by-one between the
  bin index and the token id. The caller resizes the model's embeddings to cover the new ids.
- Level i sits at -1 + 2i/(N-1), so both ends of [-1, 1] are levels and a binary -1/1 gripper round-trips
  exactly. Each value maps to its nearest level (the centre of its bin; the two end bins are half as wide), so
  the round-trip error of a value inside [q01, q99] is at most half a bin width: 1/(N-1) in normalised units,
  (q99 - q01) / (2 (N-1)) in action units. Values outside [q01, q99] are clipped first.

An action chunk (K, D) becomes K*D token ids in time-major order: all D dimensions of step 0, then step 1, ...
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch

# A dimension whose q99 - q01 is at most this is constant: it normalises to 0 and decodes to q01.
CONSTANT_SPAN = 1e-8


class MissingStatsError(KeyError):
    """Dataset stats lack an entry the tokenizer needs (KeyError, printed without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0])


class NotActionTokenError(ValueError):
    """A token id that should be an action token is not one."""


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@dataclass
class QuantileNormalizer:
    """Maps each dimension's [q01, q99] onto [-1, 1]. Quantiles rather than min/max so that a few outliers do
    not squeeze the useful range into a handful of bins; values beyond them are clipped."""

    low: np.ndarray  # q01, shape (D,)
    high: np.ndarray  # q99, shape (D,)

    def __post_init__(self):
        self.low = np.asarray(self.low, dtype=np.float64).reshape(-1)
        self.high = np.asarray(self.high, dtype=np.float64).reshape(-1)
        if self.low.shape != self.high.shape:
            raise ValueError(f"q01 has {self.low.size} dimensions but q99 has {self.high.size}")
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()):
            raise ValueError(f"q01/q99 must be finite, got q01={self.low.tolist()} q99={self.high.tolist()}")
        if (bad := np.flatnonzero(self.high < self.low)).size:
            raise ValueError(f"q99 < q01 in action dimensions {bad.tolist()}")

    @classmethod
    def from_stats(cls, stats: Mapping, key: str = "action") -> Self:
        """From LeRobot dataset stats (`dataset.meta.stats`): `stats[key]["q01"]` and `stats[key]["q99"]`."""
        if key not in stats:
            raise MissingStatsError(f"dataset stats have no {key!r} entry (found {sorted(stats)})")
        feature = stats[key]
        missing = [q for q in ("q01", "q99") if q not in feature]
        if missing:
            raise MissingStatsError(
                f"dataset stats[{key!r}] lack {missing} (found {sorted(feature)}); recompute the stats with "
                "lerobot >= 0.4, whose compute_stats stores the quantiles"
            )
        return cls(to_numpy(feature["q01"]), to_numpy(feature["q99"]))

    @property
    def dim(self) -> int:
        return self.low.size

    def _check_dim(self, x: np.ndarray) -> None:
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"actions of shape {x.shape} do not end in the stats' action dimension {self.dim}"
            )

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float64)
        self._check_dim(actions)
        if not np.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        span = self.high - self.low
        constant = span <= CONSTANT_SPAN
        scaled = 2.0 * (actions - self.low) / np.where(constant, 1.0, span) - 1.0
        return np.clip(np.where(constant, 0.0, scaled), -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        normalized = np.asarray(normalized, dtype=np.float64)
        self._check_dim(normalized)
        return self.low + (np.clip(normalized, -1.0, 1.0) + 1.0) / 2.0 * (self.high - self.low)

    def to_dict(self) -> dict:
        return {"q01": self.low.tolist(), "q99": self.high.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Self:
        return cls.from_stats({"action": d})


def write_atomic(path: str | Path, text: str) -> None:
    """Writes via a temporary file and a rename, so an interrupted save never leaves a truncated file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def add_action_tokens(tokenizer, tokens: Sequence[str]) -> int:
    """Adds `tokens` to a HF tokenizer as extra special tokens and returns the id of the first one; the ids
    are contiguous and never reuse an existing token's id. A tokenizer that already holds all of them (one
    reloaded from a checkpoint) keeps its ids."""
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present and len(present) != len(tokens):
        raise ValueError(
            f"the tokenizer already holds {len(present)} of the {len(tokens)} action tokens "
            f"(e.g. {present[:3]}): a partial set cannot be extended contiguously"
        )
    if not present:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": list(tokens)}, replace_extra_special_tokens=False
        )
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if ids != list(range(ids[0], ids[0] + len(tokens))):
        raise ValueError(f"action tokens {tokens[0]}..{tokens[-1]} did not get contiguous ids")
    return ids[0]


def check_action_ids(ids: np.ndarray, token_range: range) -> None:
    """Raises NotActionTokenError naming the ids (and positions) outside `token_range`."""
    ids = np.asarray(ids)
    bad = np.argwhere((ids < token_range.start) | (ids >= token_range.stop))
    if bad.size:
        where = [tuple(p) if len(p) > 1 else int(p[0]) for p in bad[:8].tolist()]
        values = sorted({int(v) for v in ids[tuple(bad.T)]})
        raise NotActionTokenError(
            f"{len(bad)} ids are not action tokens (allowed {token_range.start}..{token_range.stop - 1}): "
            f"ids {values[:8]} at positions {where}"
        )


@dataclass
class BinActionTokenizer:
    normalizer: QuantileNormalizer
    num_bins: int = 256
    token_prefix: str = "act"
    first_token_id: int | None = None  # set by add_to_tokenizer (or loaded with a checkpoint)

    def __post_init__(self):
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")

    @classmethod
    def from_stats(cls, stats: Mapping, num_bins: int = 256, key: str = "action") -> Self:
        return cls(QuantileNormalizer.from_stats(stats, key), num_bins)

    @property
    def action_dim(self) -> int:
        return self.normalizer.dim

    @property
    def tokens(self) -> list[str]:
        return [f"<{self.token_prefix}_{i}>" for i in range(self.num_bins)]

    @property
    def token_range(self) -> range:
        """The contiguous ids of the action tokens in the HF tokenizer, for masking the decoder."""
        if self.first_token_id is None:
            raise RuntimeError("the action tokens are not in a tokenizer yet: call add_to_tokenizer first")
        return range(self.first_token_id, self.first_token_id + self.num_bins)

    @property
    def max_error(self) -> np.ndarray:
        """Worst-case round-trip error per dimension, in action units, for values inside [q01, q99]."""
        return (self.normalizer.high - self.normalizer.low) / (2 * (self.num_bins - 1))

    def add_to_tokenizer(self, tokenizer) -> range:
        """Adds the action tokens (or finds them in a reloaded tokenizer); resize the model's embeddings
        to at least `len(tokenizer)` afterwards."""
        first = add_action_tokens(tokenizer, self.tokens)
        if self.first_token_id is not None and first != self.first_token_id:
            raise ValueError(
                f"this tokenizer holds the action tokens from id {first}, but the checkpoint's action "
                f"tokenizer was built with them from id {self.first_token_id}: mismatched tokenizer"
            )
        self.first_token_id = first
        return self.token_range

    def to_bins(self, actions: np.ndarray) -> np.ndarray:
        unit = (self.normalizer.normalize(actions) + 1.0) / 2.0  # in [0, 1]
        return np.floor(unit * (self.num_bins - 1) + 0.5).astype(np.int64)  # nearest level, halves round up

    def from_bins(self, bins: np.ndarray) -> np.ndarray:
        bins = np.asarray(bins)
        if bins.size and (bins.min() < 0 or bins.max() >= self.num_bins):
            raise ValueError(f"bin indices must lie in [0, {self.num_bins - 1}]")
        return self.normalizer.unnormalize(2.0 * bins / (self.num_bins - 1) - 1.0)

    def encode(self, actions: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(..., K, D) actions -> (..., K*D) token ids, time-major; a tensor in gives a long tensor back."""
        x = to_numpy(actions)
        if x.ndim < 2:
            raise ValueError(f"expected an action chunk (K, D) or a batch (B, K, D), got shape {x.shape}")
        ids = self.to_bins(x).reshape(*x.shape[:-2], -1) + self.token_range.start
        return torch.from_numpy(ids).to(actions.device) if isinstance(actions, torch.Tensor) else ids

    def decode(self, ids: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray | torch.Tensor:
        """(..., K*D) token ids -> (..., K, D) float32 actions; every id must be an action token."""
        x = to_numpy(ids).astype(np.int64)
        n = x.shape[-1] if x.ndim else 0
        if n == 0 or n % self.action_dim:
            raise ValueError(f"{n} token ids are not a whole number (>= 1) of {self.action_dim}-D actions")
        check_action_ids(x, self.token_range)
        bins = (x - self.token_range.start).reshape(*x.shape[:-1], -1, self.action_dim)
        actions = self.from_bins(bins).astype(np.float32)
        return torch.from_numpy(actions).to(ids.device) if isinstance(ids, torch.Tensor) else actions

    def save(self, path: str | Path) -> None:
        state = {"kind": "bins", "num_bins": self.num_bins, "token_prefix": self.token_prefix}
        state |= {"first_token_id": self.first_token_id, "stats": self.normalizer.to_dict()}
        write_atomic(path, json.dumps(state, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Self:
        try:
            state = json.loads(Path(path).read_text())
            if state.get("kind") != "bins":
                raise ValueError(f"kind is {state.get('kind')!r}, not 'bins'")
            normalizer = QuantileNormalizer.from_dict(state["stats"])
            return cls(normalizer, int(state["num_bins"]), state["token_prefix"], state["first_token_id"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a valid bin action tokenizer file: {e}") from e
