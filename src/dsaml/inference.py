"""Whole-song prediction with sliding windows (docs/method.md, "Evaluation").

One prediction entry point per layer: the network (`DSAMLNet.__call__`, one batch of clips) -> its windows
over a song (`window_outputs`) -> the song (`predict_song`, tensors; `dsaml.meta.SlidingWindows`, the same
for a labelled sequence with its settings bound, used by the test protocols and personalisation) -> a
checkpoint on audio files (`dsaml.predictor.Predictor.predict`, with a listener's map when it carries one).

The per-segment part of the network (spectrogram CNN + fusion with the global vector, and the first encoder
layer's query/key/value projections, shared by both attention passes) is computed once per song; the
windows of `window` segments are slices of it, run through the encoder and head `batch_size` at a time.
The window length is the model's training clip length (a checkpoint's `task.support_segments`: 60 on DEAM,
20 on PMEmo); callers pass it, there is no default. Stitching rules (windows start at 0, stride, 2 stride, ...
and the last one ends at the song's end):

- "mean" (correctly aligned): each position is the mean of the outputs of every window covering it.
- "weighted": as "mean", but each window's output at window position j (0-based) counts with weight
  min(j + 1, window - j), its distance from the nearer window edge: positions near an edge, where attention
  sees one side only, count less (experiments/benchmarks/bench_stride.py measures both).
- "last": the first window's outputs, then for each later window the outputs at the positions it adds
  (stride 1: its last output) -- the original's valence rule, applied correctly to both channels.
- "original": the original exactly (stride 1 only): valence as "last"; arousal takes the first window's
  outputs, then the last 5 outputs of windows 6, 11, 16, ... (0-based), then, if still short, the last
  ((n_windows - 1) mod 5) outputs of the final window (the last 5 when that is 0), which makes the song's
  length (checked against the reference vector). It
  skips position 60 and shifts every later arousal value by one place (kept for paper comparisons).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from dsaml.data.batch import window_starts
from dsaml.models.network import DSAMLNet

STITCH_RULES = ("mean", "weighted", "last", "original")
ORIGINAL_WINDOW = 60  # segments per window (30 s) of the original's prediction procedure
CNN_CHUNK = 512  # segments per spectrogram-encoder call (bounds peak memory on long songs)


def edge_weights(window: int) -> Tensor:
    """Weight of each window position for stitch="weighted": its distance from the nearer window edge.

    Args:
        window (int): segments per window.

    Returns:
        Tensor: [window] float32, min(j + 1, window - j) for j = 0 .. window - 1 (on the CPU).
    """
    position = torch.arange(window)
    return torch.minimum(position + 1, window - position).float()


def stitch_windows(outputs: Tensor, starts: list[int], length: int, rule: str, channel: str) -> Tensor:
    """Stitch the window outputs of one channel into the song's curve (rules: the module docstring).

    Args:
        outputs (Tensor): one channel's window outputs [n_windows, window] (`window_outputs`).
        starts (list[int]): the first segment of each window, ascending (`window_starts`: the windows
            cover segments 0 .. length - 1, the last one ending at the song's end).
        length (int): T, the song's length in segments (0.5 s each).
        rule (str): one of STITCH_RULES (not checked here: `predict_song` checks it).
        channel (str): "arousal" or "valence" (only "original" treats them differently).

    Returns:
        Tensor: the curve [length], on the outputs' device and of their dtype.
    """
    n, window = outputs.shape
    if rule in ("mean", "weighted"):
        position = torch.arange(window, device=outputs.device)
        index = torch.tensor(starts, device=outputs.device)[:, None] + position
        weight = edge_weights(window) if rule == "weighted" else torch.ones(window)
        weights = weight.to(outputs).expand(n, window)
        total = outputs.new_zeros(length).index_add_(0, index.flatten(), (outputs * weights).flatten())
        count = outputs.new_zeros(length).index_add_(0, index.flatten(), weights.flatten())
        return total / count
    if rule == "last" or (rule == "original" and channel == "valence"):
        pieces = [outputs[0]]
        for i in range(1, n):
            added = starts[i] + window - (starts[i - 1] + window)
            pieces.append(outputs[i, window - added :])
        return torch.cat(pieces)
    pieces = [outputs[0]]  # the original's arousal rule (stride 1), off-by-one included
    pieces += [outputs[w, -5:] for w in range(6, n, 5)]
    short = length - sum(len(p) for p in pieces)  # = (n - 1) mod 5, or 5 when that is 0
    if short > 0:
        pieces.append(outputs[n - 1, -short:])
    return torch.cat(pieces)


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    """Run the block with `net` in eval mode, restoring its mode afterwards."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def _song_inputs(
    net: nn.Module, logmel: Tensor | np.ndarray, global_vectors: Tensor | np.ndarray | None
) -> tuple[Tensor, Tensor | None]:
    """logmel [T, 51, 128] and global vectors [1 or T, D_g] as tensors of the network's dtype and device,
    with a batch axis added: [1, T, 51, 128], [1, 1 or T, D_g]."""
    param = next(net.parameters())
    logmel = torch.as_tensor(logmel, dtype=param.dtype, device=param.device)
    if logmel.ndim != 3:
        raise ValueError(f"logmel has shape {tuple(logmel.shape)}, expected [T, 51, 128] (one song)")
    if global_vectors is not None:
        global_vectors = torch.as_tensor(global_vectors, dtype=param.dtype, device=param.device)[None]
    return logmel[None], global_vectors


@torch.no_grad()
def window_outputs(
    net: DSAMLNet,
    logmel: Tensor | np.ndarray,
    global_vectors: Tensor | np.ndarray | None = None,
    *,
    window: int,
    starts: list[int],
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Eval-mode outputs of the windows of one song; the song is encoded once.

    Args:
        net (DSAMLNet): the network (used in eval mode, restored afterwards).
        logmel (Tensor or np.ndarray): the song's log-mel segments [T, 51, 128] (0.5 s each).
        global_vectors (Tensor, np.ndarray or None): as in `predict_song`.
        window (int): segments per window.
        starts (list[int]): the first segment of each window (each <= T - window).
        batch_size (int): windows per forward.
        progress (Callable or None): called as progress(done, total) in windows after each batch.

    Returns:
        (arousal, valence): each [len(starts), window], of the network's dtype, on its device.

    Raises:
        ValueError: logmel is not [T, 51, 128], or the global vectors do not match the network's
            global context (`DSAMLNet.forward`).
    """
    logmel, global_vectors = _song_inputs(net, logmel, global_vectors)
    with eval_mode(net):
        h = net.encode_segments(logmel, global_vectors, song=True, chunk=CNN_CHUNK)[0]  # [T, D]
        cache = net.song_cache(h)
        arousal, valence = [], []
        position = torch.arange(window, device=h.device)
        for first in range(0, len(starts), batch_size):
            index = torch.tensor(starts[first : first + batch_size], device=h.device)[:, None] + position
            out = net.predict_windows(h, index, cache)  # [n, window] each
            arousal.append(out["arousal"])
            valence.append(out["valence"])
            if progress is not None:
                progress(min(first + batch_size, len(starts)), len(starts))
    return torch.cat(arousal), torch.cat(valence)


@torch.no_grad()
def predict_song(
    net: DSAMLNet,
    logmel: Tensor | np.ndarray,
    global_vectors: Tensor | np.ndarray | None = None,
    *,
    window: int,
    stride: int,
    stitch: str,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Predict a whole song: one forward when it has at most `window` segments, else windows of `window`
    segments every `stride` segments (`window_outputs`) stitched by `stitch` (see the module docstring).
    The network is used in eval mode (restored afterwards).

    Args:
        net (DSAMLNet): the network.
        logmel (Tensor or np.ndarray): the song's log-mel segments [T, 51, 128] (0.5 s each).
        global_vectors (Tensor, np.ndarray or None): [1 or T, D_g], or None for the "learned" and "none"
            global contexts.
        window (int): segments per window (the model's training clip length).
        stride (int): segments between window starts (<= window).
        stitch (str): one of STITCH_RULES.
        batch_size (int): windows per forward.
        progress (Callable or None): called as progress(done, total) with the windows done after each
            batch (1, 1 after the single forward of a short song).

    Returns:
        (arousal [T], valence [T]): float32 tensors on the CPU.

    Raises:
        ValueError: an unknown stitch; stitch="original" with stride != 1; window, stride or batch_size
            below 1; stride > window on a song longer than window; logmel not [T, 51, 128] or global
            vectors that do not match the network (`DSAMLNet.forward`).
    """
    if stitch not in STITCH_RULES:
        raise ValueError(f"stitch={stitch!r} is not one of {', '.join(STITCH_RULES)}")
    if stitch == "original" and stride != 1:
        raise ValueError(f"stitch='original' reproduces the original's stride-1 rule; got stride={stride}")
    if min(window, stride, batch_size) < 1:
        raise ValueError(
            f"window={window}, stride={stride} and batch_size={batch_size} must be positive integers"
        )
    logmel, global_vectors = _song_inputs(net, logmel, global_vectors)
    length = logmel.shape[1]
    if stride > window and length > window:
        raise ValueError(
            f"stride={stride} > window={window}: the segments between windows would be predicted by none"
        )
    if length <= window:
        with eval_mode(net):
            h = net.encode_segments(logmel, global_vectors, song=True, chunk=CNN_CHUNK)
            out = net.predict_encoded(h, return_diagonal=False)
        if progress is not None:
            progress(1, 1)
        return out["arousal"][0].float().cpu(), out["valence"][0].float().cpu()
    starts = window_starts(length, window, stride)
    arousal, valence = window_outputs(
        net,
        logmel[0],
        None if global_vectors is None else global_vectors[0],
        window=window,
        starts=starts,
        batch_size=batch_size,
        progress=progress,
    )
    a = stitch_windows(arousal, starts, length, stitch, "arousal")
    v = stitch_windows(valence, starts, length, stitch, "valence")
    return a.float().cpu(), v.float().cpu()
