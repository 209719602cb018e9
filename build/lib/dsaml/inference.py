"""Whole-song prediction with sliding windows (spec section 5).

The per-segment part of the network (spectrogram CNN + fusion with the global vector, and the first encoder
layer's query/key/value projections, shared by both attention passes) is computed once per song; the
windows of `window` segments are slices of it, run through the encoder and head `batch_size` at a time.
Stitching rules (windows start at 0, stride, 2 stride, ... and the last one ends at the song's end):

- "mean" (default, correctly aligned): each position is the mean of the outputs of every window covering it.
- "last": the first window's outputs, then for each later window the outputs at the positions it adds
  (stride 1: its last output) -- the original's valence rule, applied correctly to both channels.
- "original": the original exactly (stride 1 only): valence as "last"; arousal takes the first window's
  outputs, then the last 5 outputs of windows 6, 11, 16, ... (0-based), then, if still short, the last
  ((n_windows - 1) mod 5) outputs of the final window (the last 5 when that is 0), which makes the song's
  length (checked against the reference vector). It
  skips position 60 and shifts every later arousal value by one place (kept for paper comparisons).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dsaml.models.network import DSAMLNet

STITCH_RULES = ("mean", "last", "original")
WINDOW = 60  # segments per window (30 s), as in training
CNN_CHUNK = 512  # segments per spectrogram-encoder call (bounds peak memory on long songs)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start positions of the sliding windows; the last window always ends at `length`."""
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def stitch_windows(outputs: Tensor, starts: list[int], length: int, rule: str, channel: str) -> Tensor:
    """outputs [n_windows, window] of one channel ("arousal" | "valence") -> [length] by `rule`."""
    n, window = outputs.shape
    if rule == "mean":
        total = outputs.new_zeros(length)
        count = outputs.new_zeros(length)
        index = torch.tensor(starts, device=outputs.device)[:, None] + torch.arange(
            window, device=outputs.device
        )
        total.index_add_(0, index.flatten(), outputs.flatten())
        count.index_add_(0, index.flatten(), torch.ones_like(outputs).flatten())
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


@torch.no_grad()
def predict_song(
    net: DSAMLNet,
    logmel: Tensor | np.ndarray,
    global_vectors: Tensor | np.ndarray | None = None,
    stride: int = 1,
    stitch: str = "mean",
    batch_size: int = 32,
    window: int = WINDOW,
) -> tuple[Tensor, Tensor]:
    """Predict a whole song: logmel [T, 51, 128], global_vectors [1 or T, D_g] or None (None for the "learned"
    and "none" global contexts) -> (arousal [T], valence [T]) float32 tensors on the CPU.

    Fewer than `window` segments: one forward. Otherwise windows of `window` segments every `stride` segments,
    stitched by `stitch` (see the module docstring). The network is used in eval mode (restored afterwards).
    """
    if stitch not in STITCH_RULES:
        raise ValueError(f"stitch={stitch!r} is not one of {', '.join(STITCH_RULES)}")
    if stitch == "original" and stride != 1:
        raise ValueError(f"stitch='original' reproduces the original's stride-1 rule; got stride={stride}")
    if stride < 1 or batch_size < 1:
        raise ValueError(f"stride={stride} and batch_size={batch_size} must be positive integers")
    param = next(net.parameters())
    logmel = torch.as_tensor(logmel, dtype=param.dtype, device=param.device)
    if logmel.ndim != 3:
        raise ValueError(f"logmel has shape {tuple(logmel.shape)}, expected [T, 51, 128] (one song)")
    if global_vectors is not None:
        global_vectors = torch.as_tensor(global_vectors, dtype=param.dtype, device=param.device)[None]
    was_training = net.training
    net.eval()
    try:
        h = net.encode_segments(logmel[None], global_vectors, song=True, chunk=CNN_CHUNK)[0]  # [T, D]
        length = h.shape[0]
        if length <= window:
            out = net.predict_encoded(h[None], return_diagonal=False)
            return out["arousal"][0].float().cpu(), out["valence"][0].float().cpu()
        starts = window_starts(length, window, stride)
        cache = net.song_cache(h)
        arousal, valence = [], []
        for first in range(0, len(starts), batch_size):
            index = torch.tensor(starts[first : first + batch_size], device=h.device)[:, None] + torch.arange(
                window, device=h.device
            )  # [n, window]
            out = net.predict_windows(h, index, cache)
            arousal.append(out["arousal"])
            valence.append(out["valence"])
        a = stitch_windows(torch.cat(arousal), starts, length, stitch, "arousal")
        v = stitch_windows(torch.cat(valence), starts, length, stitch, "valence")
        return a.float().cpu(), v.float().cpu()
    finally:
        net.train(was_training)
