"""FAST-style action tokenizer (Pertsch et al. 2025, "FAST: Efficient Action Tokenization for VLAs"), trained
locally on a dataset's action chunks.

A (K, D) chunk is normalised to [-1, 1] with the dataset's q01/q99, each dimension gets an orthonormal DCT over
time, the coefficients are multiplied by `scale` and rounded, and the integer matrix is flattened low frequencies
first (all D dimensions of frequency 0, then frequency 1, ...). Smooth trajectories leave the high frequencies
at zero, so long runs of zeros follow a few informative coefficients; byte-pair encoding over the integer
sequence (each integer one character) turns those runs into few tokens. Every BPE token is then one added token
`<fast_i>` in the VLM's tokenizer, contiguous at the end of the vocabulary.

Error: rounding moves each coefficient by at most 0.5/scale, so (orthonormal DCT) each decoded normalised value
is off by at most 0.5*sqrt(K)/scale in the worst case and about 1/(scale*sqrt(12)) RMS; clipping to [-1, 1]
only ever reduces it. Coefficients cannot leave +-sqrt(K)*scale, the alphabet covers that whole range.

Decoding is lenient, because a model's output may be malformed: ids that are not FAST tokens are dropped, a
sequence with fewer than K*D coefficients is padded with zeros (the missing highest frequencies: a low-pass
of what was meant), a longer one is truncated to K*D; any of these sets the `malformed` flag.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import scipy.fft
import torch
from tokenizers import Tokenizer, models, trainers

from vla.action_tokenizer import QuantileNormalizer, add_action_tokens, to_numpy, write_atomic

# Integer coefficient c is the character chr(CHAR_BASE + c + max_coeff), in the Unicode private-use area
# (U+E000..U+F8FF), so no character is whitespace or gets normalised by the `tokenizers` library.
CHAR_BASE, CHAR_COUNT = 0xE000, 6400


@dataclass
class FastActionTokenizer:
    normalizer: QuantileNormalizer
    chunk_size: int  # K: the DCT length, fixed at training time
    scale: float
    bpe: Tokenizer
    token_prefix: str = "fast"
    first_token_id: int | None = None  # set by add_to_tokenizer (or loaded with a checkpoint)

    @classmethod
    def train(
        cls,
        chunks: np.ndarray | Iterable[np.ndarray],
        normalizer: QuantileNormalizer,
        scale: float = 10.0,
        vocab_size: int = 1024,
    ) -> Self:
        """Learns the BPE merges on the dataset's (K, D) action chunks (an (N, K, D) array or an iterable)."""
        chunks = [np.asarray(c) for c in chunks]
        if not chunks or any(c.ndim != 2 or c.shape != chunks[0].shape for c in chunks):
            raise ValueError("FAST training needs a non-empty set of equally shaped (K, D) action chunks")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        bpe = Tokenizer(models.BPE())  # no pre-tokenizer: each chunk's whole coefficient string is one word
        fast = cls(normalizer, chunks[0].shape[0], float(scale), bpe)
        alphabet = [chr(CHAR_BASE + i) for i in range(2 * fast.max_coeff + 1)]
        if len(alphabet) > CHAR_COUNT:
            raise ValueError(
                f"scale {scale} * sqrt(K={fast.chunk_size}) gives more coefficient values than {CHAR_COUNT}"
            )
        if vocab_size < len(alphabet):
            raise ValueError(f"vocab_size {vocab_size} is below the {len(alphabet)} coefficient values")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=alphabet,
            limit_alphabet=len(alphabet),
            show_progress=False,
        )
        bpe.train_from_iterator((fast._to_text(c) for c in chunks), trainer, length=len(chunks))
        return fast

    @property
    def action_dim(self) -> int:
        return self.normalizer.dim

    @property
    def max_coeff(self) -> int:
        """|coefficient| <= sqrt(K) * scale for any chunk normalised to [-1, 1]."""
        return int(np.ceil(np.sqrt(self.chunk_size) * self.scale))

    @property
    def vocab_size(self) -> int:
        return self.bpe.get_vocab_size()

    @property
    def tokens(self) -> list[str]:
        return [f"<{self.token_prefix}_{i}>" for i in range(self.vocab_size)]

    @property
    def token_range(self) -> range:
        if self.first_token_id is None:
            raise RuntimeError("the FAST tokens are not in a tokenizer yet: call add_to_tokenizer first")
        return range(self.first_token_id, self.first_token_id + self.vocab_size)

    def add_to_tokenizer(self, tokenizer) -> range:
        """Adds `<fast_0>`.. (or finds them in a reloaded tokenizer); resize the embeddings afterwards."""
        first = add_action_tokens(tokenizer, self.tokens)
        if self.first_token_id is not None and first != self.first_token_id:
            raise ValueError(
                f"this tokenizer holds the FAST tokens from id {first}, but the checkpoint's FAST "
                f"tokenizer was built with them from id {self.first_token_id}: mismatched tokenizer"
            )
        self.first_token_id = first
        return self.token_range

    def coefficients(self, chunk: np.ndarray) -> np.ndarray:
        """(K, D) actions -> (K*D,) rounded, scaled DCT coefficients, low frequencies first."""
        chunk = np.asarray(chunk)
        if chunk.shape != (self.chunk_size, self.action_dim):
            raise ValueError(f"expected a ({self.chunk_size}, {self.action_dim}) chunk, got {chunk.shape}")
        dct = scipy.fft.dct(self.normalizer.normalize(chunk), type=2, norm="ortho", axis=0)
        return (
            np.clip(np.rint(dct * self.scale), -self.max_coeff, self.max_coeff).astype(np.int64).reshape(-1)
        )

    def _to_text(self, chunk: np.ndarray) -> str:
        return "".join(chr(CHAR_BASE + int(c) + self.max_coeff) for c in self.coefficients(chunk))

    def bpe_ids(self, chunk: np.ndarray) -> list[int]:
        """The chunk's BPE ids, 0-based within the FAST vocabulary."""
        return self.bpe.encode(self._to_text(chunk)).ids

    def encode(self, actions: np.ndarray | torch.Tensor) -> list[int] | list[list[int]]:
        """(K, D) -> token ids; (B, K, D) -> one (variable-length) id list per chunk."""
        x = to_numpy(actions)
        if x.ndim == 3:
            return [self.encode(c) for c in x]
        first = self.token_range.start
        return [first + i for i in self.bpe_ids(x)]

    def decode_with_flag(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, bool]:
        """Token ids -> ((K, D) float32 actions, malformed); never raises on malformed ids (see module doc)."""
        ids = to_numpy(ids).astype(np.int64)
        if ids.ndim != 1:
            raise ValueError(f"decode one sequence of ids at a time, got shape {ids.shape}")
        rng = self.token_range
        fast_ids = ids[(ids >= rng.start) & (ids < rng.stop)] - rng.start
        text = "".join(self.bpe.id_to_token(int(i)) for i in fast_ids)
        coeffs = np.array([ord(ch) - CHAR_BASE - self.max_coeff for ch in text], dtype=np.float64)
        n = self.chunk_size * self.action_dim
        malformed = len(fast_ids) != len(ids) or len(coeffs) != n
        coeffs = np.pad(coeffs[:n], (0, max(0, n - len(coeffs))))
        normalized = scipy.fft.idct(
            coeffs.reshape(self.chunk_size, self.action_dim) / self.scale, type=2, norm="ortho", axis=0
        )
        return self.normalizer.unnormalize(normalized).astype(np.float32), malformed

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        return self.decode_with_flag(ids)[0]

    def compression_ratio(self, chunks: Iterable[np.ndarray]) -> float:
        """Binning's tokens per chunk (K*D) over FAST's mean tokens per chunk."""
        lengths = [len(self.bpe_ids(c)) for c in chunks]
        return self.chunk_size * self.action_dim / float(np.mean(lengths))

    def save(self, path: str | Path) -> None:
        state = {"kind": "fast", "chunk_size": self.chunk_size, "scale": self.scale}
        state |= {"token_prefix": self.token_prefix, "first_token_id": self.first_token_id}
        state |= {"stats": self.normalizer.to_dict(), "bpe": json.loads(self.bpe.to_str())}
        write_atomic(path, json.dumps(state))

    @classmethod
    def load(cls, path: str | Path) -> Self:
        try:
            state = json.loads(Path(path).read_text())
            if state.get("kind") != "fast":
                raise ValueError(f"kind is {state.get('kind')!r}, not 'fast'")
            bpe = Tokenizer.from_str(json.dumps(state["bpe"]))
            normalizer = QuantileNormalizer.from_dict(state["stats"])
            return cls(
                normalizer,
                int(state["chunk_size"]),
                float(state["scale"]),
                bpe,
                state["token_prefix"],
                state["first_token_id"],
            )
        except Exception as e:  # json, key, type and the tokenizers library's own errors
            raise ValueError(f"{path} is not a valid FAST action tokenizer file: {e}") from e
