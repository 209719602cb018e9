"""What the network is fed: the typed dicts of tensors every part of dsaml passes around, and the helpers
that cut, window and batch them.

Shapes: B items, T segments of 0.5 s, F = 51 frames, M = 128 mel bands, D the global-vector width. Curves
are in the dataset's label range, label i belongs to segment i. ``global`` is None (or absent) when the
network builds its own global context; one row ([1, D]) is a per-clip vector that holds for every segment.

- `SongSequence`: one song, clip or part of one: logmel [T, F, M], arousal / valence [T], global [1 or T, D].
- `SongItem`: a `SongSequence` read from the store, with its song id (and for test items the rater,
  the item's index and the cross-song protocol's support).
- `ClipBatch`: B clips of one length: logmel [B, T, F, M], arousal / valence [B, T], global [B, 1 or T, D],
  songs [B] when read from the store.
- `Episode`: one rater's MAML episode: a support and a query `ClipBatch` (PDMER training and validation).
- `MetaBatch`: one meta-step's episodes (this rank's share of them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import torch
from torch import Tensor

Array = Any  # a Tensor, or a NumPy array where a caller still holds one

# "global" is a keyword, so the optional key is declared in the functional form
_GlobalVectors = TypedDict("_GlobalVectors", {"global": Tensor | None}, total=False)


class SongSequence(_GlobalVectors):
    """One song, clip or part of one (see the module docstring for the shapes)."""

    logmel: Tensor
    arousal: Tensor
    valence: Tensor


class _SongItemExtras(TypedDict, total=False):
    index: int  # test items: position in the test set
    rater: str | None  # test items: whose curve (None: rater-averaged)
    cross_support: ClipBatch | list[SongItem]  # PDMER test: the rater's other songs (clips, or whole songs)


class SongItem(SongSequence, _SongItemExtras):
    """A sequence read from the store: segments [start, stop) of song `song` and its curves."""

    song: str


class _ClipBatchExtras(TypedDict, total=False):
    songs: list[str]  # read from the store: the song of each row


class ClipBatch(_GlobalVectors, _ClipBatchExtras):
    """B clips of one length (see the module docstring for the shapes)."""

    logmel: Tensor
    arousal: Tensor
    valence: Tensor


class _EpisodeExtras(TypedDict, total=False):
    index: int  # validation episodes: position in the fixed list


class Episode(_EpisodeExtras):
    """One rater's episode: adapt on `support`, score on `query`; songs = support songs then query songs."""

    rater: str
    support: ClipBatch
    query: ClipBatch
    songs: list[str]


class MetaBatch(TypedDict):
    """One meta-step: its index, the meta-batch size over all ranks, and this rank's episodes."""

    step: int
    episodes_per_step: int
    episodes: list[Episode]


CURVE_KEYS = ("logmel", "arousal", "valence")  # the per-segment keys every sequence and batch holds


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start positions of the sliding windows over a sequence; the last window always ends at `length`.

    Args:
        length (int): T, the sequence's length in segments (>= window).
        window (int): segments per window (>= 1).
        stride (int): segments between window starts (>= 1).

    Returns:
        list[int]: 0, stride, 2 stride, ... <= length - window, then length - window when the stride does
        not land on it.

    Raises:
        IndexError: length < window (no window fits; callers check).
        ValueError: stride 0.
    """
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def _global_rows(vectors: Array, start: int, stop: int | None) -> Array:
    """Rows [start, stop) of per-segment vectors; a per-clip vector (one row) holds for any range."""
    return vectors if len(vectors) == 1 else vectors[start:stop]


def slice_sequence(seq: Mapping[str, Any], start: int, stop: int | None) -> SongSequence:
    """Segments [start, stop) of a sequence (Python slice rules; stop None: to the end).

    Args:
        seq (Mapping): a `SongSequence` (logmel [T, F, M], arousal / valence [T], global [1 or T, D] or
            None / absent).
        start (int): first segment.
        stop (int or None): one past the last segment.

    Returns:
        SongSequence: the slices (views); ``global`` only when it has vectors (a per-clip [1, D] kept
        whole).
    """
    out: dict[str, Any] = {k: seq[k][start:stop] for k in CURVE_KEYS}
    if seq.get("global") is not None:
        out["global"] = _global_rows(seq["global"], start, stop)
    return out  # type: ignore[return-value]


def as_batch(seq: Mapping[str, Any]) -> ClipBatch:
    """One sequence as a batch of one.

    Args:
        seq (Mapping): a `SongSequence` (logmel [T, F, M], arousal / valence [T], global [1 or T, D]).

    Returns:
        ClipBatch: logmel [1, T, F, M], arousal / valence [1, T], global [1, 1 or T, D] or None when the
        sequence has no vectors.
    """
    batch: dict[str, Any] = {k: seq[k][None] for k in CURVE_KEYS}
    batch["global"] = None if seq.get("global") is None else seq["global"][None]
    return batch  # type: ignore[return-value]


def clips_of(batch: Mapping[str, Any]) -> list[SongSequence]:
    """A batch's clips as sequences (views).

    Args:
        batch (Mapping): a `ClipBatch` (logmel [B, T, F, M], arousal / valence [B, T], global
            [B, 1 or T, D] or None / absent).

    Returns:
        list[SongSequence]: B sequences (logmel [T, F, M], arousal / valence [T], global [1 or T, D] or
        None).
    """
    glob = batch.get("global")
    return [
        {**{k: batch[k][i] for k in CURVE_KEYS}, "global": None if glob is None else glob[i]}  # type: ignore[misc]
        for i in range(len(batch["arousal"]))
    ]


def collate(items: Sequence[SongItem]) -> ClipBatch:
    """Stack store items into a batch, cropping every sequence to the shortest one (labels may be a few
    values shorter than the audio).

    Args:
        items (Sequence[SongItem]): B items (logmel [T_i, F, M], arousal / valence [T_i], ``global``
            [1 or T_i, D] in every item or in none, ``song``).

    Returns:
        ClipBatch: logmel [B, T, F, M], arousal / valence [B, T] with T = min T_i; global [B, 1 or T, D]
        (when the items have it); songs [B].
    """
    length = min(len(it["arousal"]) for it in items)
    batch: dict[str, Any] = {key: torch.stack([it[key][:length] for it in items]) for key in CURVE_KEYS}
    if "global" in items[0]:
        batch["global"] = torch.stack([_global_rows(it["global"], 0, length) for it in items])
    batch["songs"] = [it["song"] for it in items]
    return batch  # type: ignore[return-value]


def windows_batch(seq: Mapping[str, Any], window: int) -> ClipBatch:
    """Cut a sequence into a support batch of windows (the inner loop's input).

    Args:
        seq (Mapping): a `SongSequence` (tensors or NumPy arrays): logmel [T, F, M], arousal / valence [T],
            global [1 or T, D] or None / absent.
        window (int): segments per window.

    Returns:
        ClipBatch: n windows of min(T, window) segments starting every `window` segments, the last one
        ending at the sequence's end (so it may overlap the one before; n = 1, the whole sequence, when
        T <= window): logmel [n, W, F, M], arousal / valence [n, W] float32; global [n, W, D] float32,
        a per-clip [1, D] repeated as [n, 1, D] (its dtype kept), or None.
    """
    batch: dict[str, Any] = {k: cut_windows(seq[k], window) for k in CURVE_KEYS}
    vectors = seq.get("global")
    n_windows = len(batch["arousal"])
    batch["global"] = (
        None
        if vectors is None
        else (
            torch.stack([torch.as_tensor(vectors)] * n_windows)
            if len(vectors) == 1
            else cut_windows(vectors, window)
        )
    )
    return batch  # type: ignore[return-value]


def cut_windows(x: Array, window: int) -> Tensor:
    """The windows of `windows_batch` of one per-segment array x [T, ...] -> float32
    [n, min(T, window), ...]."""
    n = len(x)
    starts = window_starts(n, window, window) if n > window else [0]
    size = min(n, window)
    return torch.stack([torch.as_tensor(x[s : s + size]) for s in starts]).float()


def join_pieces(seq: Mapping[str, Any], pieces: Sequence[tuple[int, int]]) -> SongSequence:
    """The segments [start, stop) of each piece of a sequence, joined in order into one sequence.

    Args:
        seq (Mapping): a `SongSequence` (tensors or NumPy arrays).
        pieces (Sequence[tuple[int, int]]): (start, stop) segment ranges.

    Returns:
        SongSequence: logmel [T', F, M], arousal / valence [T'] tensors with T' = the pieces' total length;
        global joined the same way ([1, D] kept whole) or None.
    """
    out: dict[str, Any] = {
        k: torch.cat([torch.as_tensor(seq[k])[a:b] for a, b in pieces]) for k in CURVE_KEYS
    }
    vectors = seq.get("global")
    if vectors is not None:
        vectors = torch.as_tensor(vectors)
        out["global"] = vectors if len(vectors) == 1 else torch.cat([vectors[a:b] for a, b in pieces])
    else:
        out["global"] = None
    return out  # type: ignore[return-value]
