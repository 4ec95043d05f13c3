"""The one preprocessing path: tokenisation, length bucketing and dynamic padding.

Training, bulk classification, evaluation and serving all call :class:`TextEncoder` and
:func:`length_batches` / :func:`pad_batch`, so train/serve skew cannot happen by construction.
Sequences are never padded to `max_length`: each batch is padded to its own longest sequence,
rounded up to a multiple of :data:`PAD_MULTIPLE` so the forward pass sees few distinct shapes.

Long texts: :meth:`TextEncoder.encode_windows` tokenises each text once, untruncated, and cuts it
into overlapping windows of ``max_length - 2`` content tokens (each with its own [CLS]/[SEP]);
:func:`window_starts` is the one definition of where windows start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PAD_MULTIPLE = 8
DEFAULT_SORT_WINDOW = 4096
DEFAULT_MAX_WINDOWS = 64
"""Windows read per text at most: at a 136-token window and half-window stride, 63 × 67 + 134 ≈ 4,350 tokens."""


@dataclass(frozen=True)
class Windows:
    """The model inputs of a list of texts cut into windows, flat, in text order.

    ``counts[i]`` windows belong to text ``i`` (at least one, also for an empty text); ``capped[i]``
    is True when text ``i`` had more tokens than ``max_windows`` windows cover (its tail is unread).
    """

    sequences: list[np.ndarray]
    counts: np.ndarray
    capped: np.ndarray


def default_stride(content_length: int) -> int:
    """Default window stride: half a window's content tokens (each token is read in two windows)."""
    return max(1, content_length // 2)


def window_starts(n_tokens: int, content_length: int, stride: int) -> list[int]:
    """Start offsets of the windows over `n_tokens` content tokens (uncapped).

    One window when the text fits; else windows every `stride` tokens, the last one moved back to end
    exactly at the text's end (so every window is full): ``1 + ceil((n - content) / stride)`` windows.
    """
    if n_tokens <= content_length:
        return [0]
    count = 1 + -(-(n_tokens - content_length) // stride)
    return [*range(0, (count - 1) * stride, stride), n_tokens - content_length]


class TextEncoder:
    """Tokenises texts with the model's own tokenizer, truncating to `max_length`, without padding."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_id = int(tokenizer.pad_token_id or 0)

    @classmethod
    def from_dir(cls, model_dir: str, max_length: int) -> TextEncoder:
        """Encoder for the tokenizer stored in a model directory."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(model_dir), max_length)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int32, with [CLS]/[SEP]) of each text, truncated to `max_length`."""
        if not texts:
            return []
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [np.asarray(ids, dtype=np.int32) for ids in encoded["input_ids"]]

    def encode_windows(
        self, texts: Sequence[str], stride: int | None = None, max_windows: int = DEFAULT_MAX_WINDOWS
    ) -> Windows:
        """Each text tokenised once without truncation, cut into windows of `max_length` tokens.

        A window holds ``max_length - 2`` content tokens plus [CLS]/[SEP]; consecutive windows start
        `stride` content tokens apart (default :func:`default_stride`). A text needing more than
        `max_windows` windows keeps its first `max_windows` and is marked in ``Windows.capped``.
        A text that fits gives exactly the ids of :meth:`encode`.
        """
        content = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        stride = int(stride) if stride else default_stride(content)
        if stride > content:
            raise ValueError(
                f"window_stride {stride} is longer than a window ({content} content tokens): text between "
                f"windows would be skipped; give a stride of at most {content}"
            )
        if not texts:
            return Windows([], np.zeros(0, np.int64), np.zeros(0, bool))
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=False,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the model's maximum" warning: windows handle it
        )
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        sequences: list[np.ndarray] = []
        counts = np.zeros(len(texts), np.int64)
        capped = np.zeros(len(texts), bool)
        for i, ids in enumerate(encoded["input_ids"]):
            starts = window_starts(len(ids), content, stride)
            capped[i] = len(starts) > max_windows
            starts = starts[:max_windows]
            counts[i] = len(starts)
            for start in starts:
                window = np.empty(min(content, len(ids) - start) + 2, np.int32)
                window[0], window[-1] = cls_id, sep_id
                window[1:-1] = ids[start : start + content]
                sequences.append(window)
        return Windows(sequences, counts, capped)

    def token_lengths(self, texts: Sequence[str], max_length: int = 512) -> np.ndarray:
        """Untruncated-up-to-`max_length` token counts (used to choose `max_length` from data)."""
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=max_length, padding=False, return_attention_mask=False
        )
        return np.asarray([len(ids) for ids in encoded["input_ids"]], dtype=np.int32)


def choose_max_length(lengths: np.ndarray, quantile: float = 0.99, floor: int = 32, cap: int = 256) -> int:
    """A token window that covers `quantile` of the texts, rounded up to PAD_MULTIPLE, within [floor, cap]."""
    if len(lengths) == 0:
        return floor
    value = int(np.quantile(lengths, quantile))
    value = -(-value // PAD_MULTIPLE) * PAD_MULTIPLE
    return max(floor, min(cap, value))


def length_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    window: int = DEFAULT_SORT_WINDOW,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Group row indices into batches of similar length.

    Rows are sorted by length within consecutive windows of `window` rows (bounded memory, and
    the order of the stream is kept at window granularity), then cut into batches of at most
    `batch_size` rows and, given `max_tokens`, at most `max_tokens` padded tokens (rows × the batch's
    :func:`padded_length`: what the forward pass costs). A single row longer than `max_tokens` is a
    batch of its own.
    """
    lengths = np.asarray(lengths)
    batches: list[np.ndarray] = []
    for start in range(0, len(lengths), window):
        chunk = np.arange(start, min(start + window, len(lengths)))
        ordered = chunk[np.argsort(lengths[chunk], kind="stable")]
        if max_tokens is None:
            batches.extend(ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size))
            continue
        first = 0
        for i in range(1, len(ordered) + 1):
            # Rows are ascending, so row i-1 sets the width of the batch ordered[first:i].
            rows = i - first
            if i < len(ordered) and rows < batch_size:
                grown = (rows + 1) * padded_length(lengths[ordered[i]])
                if grown <= max_tokens:
                    continue
            batches.append(ordered[first:i])
            first = i
    return batches


def padded_length(longest: int, max_length: int | None = None) -> int:
    """Length a batch is padded to: its longest row rounded up to PAD_MULTIPLE (capped at max_length)."""
    length = -(-int(longest) // PAD_MULTIPLE) * PAD_MULTIPLE
    return min(length, max_length) if max_length else length


def pad_batch(sequences: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) as int32 [batch, padded_length] for a list of token id arrays."""
    width = padded_length(max(len(seq) for seq in sequences))
    ids = np.full((len(sequences), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(sequences), width), dtype=np.int32)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


@dataclass
class PaddingStats:
    """Token accounting of a batching plan: waste = padded tokens / real tokens."""

    real_tokens: int = 0
    padded_tokens: int = 0

    def add(self, lengths: np.ndarray, width: int) -> None:
        """Account one batch of rows with `lengths` padded to `width`."""
        self.real_tokens += int(lengths.sum())
        self.padded_tokens += int(len(lengths) * width)

    @property
    def waste(self) -> float:
        """Padded tokens per real token (1.0 = no padding at all)."""
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0
