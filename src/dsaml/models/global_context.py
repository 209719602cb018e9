"""Global-context sources (docs/method.md, "Features": the global context vector; `model.global_context`).

- `LearnedGlobalContext` ("learned", default, offline): built inside the network from the song's own log-mel.
  The window semantics are the original's: one vector for a whole 30 s training clip, and on a full song one
  vector per segment for the 30 s window centred on it (segments i - 30 .. i + 29, clipped to the song; the
  log-mel starts at 15 s, so the part of the window before it is not available). Window statistics come from
  running sums over segments, so a song costs O(T), not one recomputation per window.
- "precomputed:<name>" / "clap": the caller passes vectors stored in the feature store;
  `dsaml.data.vector_file` imports them from a .npz / .h5 keyed by song id (e.g. ImageBind embeddings
  computed with the original pipeline) and `ClapAudioEncoder` (in `dsaml.models.clap`)
  produces them during preprocessing.
- "none": no global term.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LearnedGlobalContext(nn.Module):
    """Global vector from per-band log-mel mean and standard deviation over a 30 s window, then an MLP.

    clip(logmel [B, T, F, M]) -> [B, 1, D]: one vector per clip (the whole input is the window).
    song(logmel [B, T, F, M]) -> [B, T, D]: one vector per segment, centred window of `window` segments.
    """

    def __init__(self, n_mels: int = 128, hidden_size: int = 1024, window: int = 60) -> None:
        super().__init__()
        self.window = window
        self.norm = nn.LayerNorm(2 * n_mels)
        self.project = nn.Sequential(
            nn.Linear(2 * n_mels, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )

    def clip(self, logmel: Tensor) -> Tensor:
        frames = logmel.flatten(1, 2)  # [B, T * F, M]
        mean = frames.mean(dim=1)
        std = (frames.var(dim=1, unbiased=False) + 1e-6).sqrt()
        return self._embed(mean, std)[:, None]

    def song(self, logmel: Tensor) -> Tensor:
        b, t, f, _ = logmel.shape
        x = logmel.double()
        zero = x.new_zeros(b, 1, x.shape[-1])
        csum = torch.cat([zero, x.sum(dim=2).cumsum(dim=1)], dim=1)  # [B, T + 1, M] running sums
        csq = torch.cat([zero, x.square().sum(dim=2).cumsum(dim=1)], dim=1)
        pos = torch.arange(t, device=logmel.device)
        start = (pos - self.window // 2).clamp(min=0)
        stop = (pos + self.window - self.window // 2).clamp(max=t)
        count = ((stop - start) * f).to(x.dtype)[None, :, None]
        mean = (csum[:, stop] - csum[:, start]) / count
        var = ((csq[:, stop] - csq[:, start]) / count - mean.square()).clamp(min=0)
        return self._embed(mean.to(logmel.dtype), (var + 1e-6).sqrt().to(logmel.dtype))

    def _embed(self, mean: Tensor, std: Tensor) -> Tensor:
        return self.project(self.norm(torch.cat([mean, std], dim=-1)))
