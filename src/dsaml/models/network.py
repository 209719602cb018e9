"""`DSAMLNet`: spectrogram encoder -> fusion with the global vector -> dual-scale encoder -> BiLSTM head.

Shapes: logmel [B, T, F=51, M=128] (natural-log mel power, one 0.5 s segment per step), global vectors
[B, 1 or T, D_g]; outputs arousal / valence [B, T]. See docs/method.md, "Network".
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from dsaml.models.attention import QKV, DualScaleEncoder
from dsaml.models.config import DSAMLConfig
from dsaml.models.global_context import LearnedGlobalContext
from dsaml.models.listener_prior import ListenerPrior
from dsaml.models.spectrogram import SpectrogramEncoder


class Fusion(nn.Module):
    """h = Linear(D -> D)(sigmoid(Linear(476 -> D)(s) + g)); with fusion off, h = Linear(476 -> D)(s) + g.

    in_features: CNN features per segment (476); hidden_size: D; global_dim: width of the global vectors g
    (None or D: used as they are; otherwise a learned Linear(global_dim -> D)); fusion: False = the ablation.
    """

    def __init__(
        self,
        in_features: int = 476,
        hidden_size: int = 1024,
        global_dim: int | None = None,
        fusion: bool = True,
    ) -> None:
        super().__init__()
        self.enabled = fusion
        self.spectrogram_project = nn.Linear(in_features, hidden_size)
        if fusion:
            self.fusion_project = nn.Linear(hidden_size, hidden_size)
        if global_dim is not None and global_dim != hidden_size:
            self.global_project = nn.Linear(global_dim, hidden_size)

    def forward(self, features: Tensor, global_vectors: Tensor | None) -> Tensor:
        s = self.spectrogram_project(features)
        if global_vectors is not None:
            if hasattr(self, "global_project"):
                global_vectors = self.global_project(global_vectors)
            s = s + global_vectors
        return self.fusion_project(torch.sigmoid(s)) if self.enabled else s


class EmotionHead(nn.Module):
    """BiLSTM(D -> D/4 per direction) -> Linear(D/2 -> D/4) -> Dropout -> Linear(D/4 -> 2):
    [B, T, D] -> [B, T, 2] (arousal, valence)."""

    def __init__(self, hidden_size: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        d = hidden_size
        self.bilstm = nn.LSTM(d, d // 4, batch_first=True, bidirectional=True)
        self.hidden = nn.Linear(d // 2, d // 4)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d // 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(self.hidden(self.bilstm(x)[0])))


def block_options(block: type[nn.Module], cfg: DSAMLConfig) -> dict[str, Any]:
    """The named arguments of `block` (but `fast`, fixed by the network) taken from the config's fields of
    the same names: every block argument is a config field with the same default."""
    names = inspect.signature(block).parameters
    return {name: getattr(cfg, name) for name in names if name != "fast"}


class DSAMLNet(nn.Module):
    """The DSAML network: spectrogram CNN -> fusion with the global vectors -> dual-scale encoder -> BiLSTM
    head (docs/method.md, "Network").

    Submodules: ``spectrogram`` (CNN, 476 features per segment), ``global_context`` (with
    global_context="learned" only), ``fusion``, ``encoder`` (the body's dual-scale encoder) and ``head``
    (`EmotionHead`, what `adapt_head` adapts).

    Args:
        cfg (DSAMLConfig): the hyper-parameters (D = hidden_size, H = num_heads, L = num_layers, F = n_frames,
            M = n_mels).

    Attributes:
        listener_prior (ListenerPrior or None): the prior over listeners' read-outs of these weights
            (`dsaml.models.listener_prior`; the method: `dsaml.meta.listener_prior`), not part of the
            weights: set by the training module and by `load_network` from the checkpoint's
            hyper-parameters; None when none was estimated.
    """

    listener_prior: ListenerPrior | None = None

    def __init__(self, cfg: DSAMLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        fast = cfg.impl == "fast"
        fused = fast and cfg.cnn_kernel == "fused"
        self.spectrogram = SpectrogramEncoder(cfg.n_frames, cfg.n_mels, fused=fused)
        if cfg.global_context == "learned":
            self.global_context = LearnedGlobalContext(cfg.n_mels, cfg.hidden_size, cfg.global_window)
        self.fusion = Fusion(self.spectrogram.out_features, cfg.hidden_size, cfg.global_dim, cfg.fusion)
        self.encoder = DualScaleEncoder(**block_options(DualScaleEncoder, cfg), fast=fast)
        self.head = EmotionHead(**block_options(EmotionHead, cfg))

    def forward(
        self,
        logmel: Tensor,
        global_vectors: Tensor | None = None,
        return_attention: bool = False,
        return_diagonal: bool = True,
    ) -> dict[str, Tensor]:
        """Predict the emotion curves of a batch of clips.

        Args:
            logmel (Tensor): log-mel segment images [B, T, F=51, M=128] float32 (natural-log mel power, one
                0.5 s segment per step).
            global_vectors (Tensor or None): the global context [B, 1 or T, D_g] with
                D_g = ``cfg.global_input_dim``; None with global_context="learned" (one vector per input
                clip is built from logmel) or "none". ValueError when it does not match the config.
            return_attention (bool): also return the attention maps.
            return_diagonal (bool): return the attention diagonal (what the regulariser consumes).

        Returns:
            dict[str, Tensor]: "arousal", "valence" [B, T]; "attention_diagonal" [B, 2, T] (with
            return_diagonal): the head-averaged diagonal of the attention probabilities of layer L - 1 and
            of the last layer; "attention_maps" [B, passes * L, H, T, T] (with return_attention; local
            layers first, then global).
        """
        return self.predict_encoded(
            self.encode_segments(logmel, global_vectors),
            return_attention=return_attention,
            return_diagonal=return_diagonal,
        )

    def encode_segments(
        self,
        logmel: Tensor,
        global_vectors: Tensor | None = None,
        song: bool = False,
        chunk: int | None = None,
    ) -> Tensor:
        """Per-segment part of the network (CNN + fusion): logmel [B, T, F, M] -> h [B, T, D].

        Each output step depends only on its own segment and its global vector, so a song is encoded once and
        its sliding windows are slices of the result. `song=True` selects the per-segment centred global
        windows of the learned context (full songs); False, one learned vector per input clip. `chunk` bounds
        how many segments go through the CNN at once (memory on long songs).
        """
        self._check_inputs(logmel, global_vectors)
        b, t = logmel.shape[:2]
        images = logmel.reshape(b * t, *logmel.shape[2:])
        features = torch.cat([self.spectrogram(part) for part in images.split(chunk or b * t)]).view(b, t, -1)
        return self.fuse(features, logmel, global_vectors, song)

    def fuse(
        self, features: Tensor, logmel: Tensor, global_vectors: Tensor | None = None, song: bool = False
    ) -> Tensor:
        """The CNN's features [B, T, 476] of logmel [B, T, F, M] -> h [B, T, D]: the global vectors (given,
        or learned from logmel: see `encode_segments`) fused in."""
        if self.cfg.global_context == "learned":
            global_vectors = self.global_context.song(logmel) if song else self.global_context.clip(logmel)
        return self.fusion(features, global_vectors)

    def predict_encoded(self, h: Tensor, **encoder_options: Any) -> dict[str, Tensor]:
        """Sequence part: h [B, T, D] -> outputs (see the class docstring). `encoder_options`:
        `DualScaleEncoder.forward`'s return_attention, return_diagonal and first_qkv (the first encoder
        layer's q, k, v [B, H, T, D/H] of h when already computed: sliding windows slice a song's)."""
        out = self.encoder(h, **encoder_options)
        return {**self.emotions(out.pop("encoded")), **out}

    def body(
        self, logmel: Tensor, global_vectors: Tensor | None = None, return_diagonal: bool = True
    ) -> dict[str, Tensor]:
        """Everything before the head (CNN, fusion, dual-scale encoder).

        The head-only adaptation (ANIL, `adapt_head`) computes this once per support batch and adapts
        `head` on it.

        Args:
            logmel (Tensor): [B, T, F=51, M=128] (as in `forward`).
            global_vectors (Tensor or None): [B, 1 or T, D_g] or None (as in `forward`).
            return_diagonal (bool): also return the attention diagonal.

        Returns:
            dict[str, Tensor]: "encoded" [B, T, D]; "attention_diagonal" [B, 2, T] (with return_diagonal).
        """
        return self.encoder(self.encode_segments(logmel, global_vectors), return_diagonal=return_diagonal)

    def emotions(self, encoded: Tensor, head: nn.Module | None = None) -> dict[str, Tensor]:
        """The head on body features.

        Args:
            encoded (Tensor): body features [B, T, D] (`body`'s "encoded").
            head (nn.Module or None): replaces the network's own head (an adapted copy); None: ``self.head``.

        Returns:
            dict[str, Tensor]: "arousal", "valence" [B, T].
        """
        emotions = (self.head if head is None else head)(encoded)
        return {"arousal": emotions[..., 0], "valence": emotions[..., 1]}

    def song_cache(self, h: Tensor) -> QKV:
        """What sliding windows can share, computed once per song: the first encoder layer's q, k, v of the
        song's encoding h [T, D] -> [H, T, D/H] each (per-token projections; both passes start from h)."""
        return tuple(p[0] for p in self.encoder.layers[0].attention.project(h[None]))

    def predict_windows(self, h: Tensor, index: Tensor, cache: QKV) -> dict[str, Tensor]:
        """Windows of a song: h [T, D] (encode_segments), index [n, W] segment positions,
        cache = song_cache(h) -> outputs for h[index] ([n, W] each), without the regulariser's diagonal."""
        qkv = tuple(p[:, index].transpose(0, 1) for p in cache)  # [n, H, W, D/H]
        return self.predict_encoded(h[index], return_diagonal=False, first_qkv=qkv)

    def _check_inputs(self, logmel: Tensor, global_vectors: Tensor | None) -> None:
        cfg = self.cfg
        if logmel.ndim != 4 or tuple(logmel.shape[2:]) != (cfg.n_frames, cfg.n_mels):
            raise ValueError(
                f"logmel has shape {tuple(logmel.shape)}, expected [B, T, {cfg.n_frames}, {cfg.n_mels}]"
            )
        needs = cfg.global_store_name
        if needs is None:
            if global_vectors is not None:
                raise ValueError(
                    f"model.global_context={cfg.global_context!r} takes no global vectors; pass None"
                )
            return
        if global_vectors is None:
            raise ValueError(
                f"model.global_context={cfg.global_context!r} needs the global vectors "
                f"{needs!r} ([B, 1 or T, {cfg.global_input_dim}]); got None"
            )
        b, t = logmel.shape[:2]
        if (
            global_vectors.ndim != 3
            or global_vectors.shape[0] != b
            or global_vectors.shape[1] not in (1, t)
            or global_vectors.shape[2] != cfg.global_input_dim
        ):
            raise ValueError(
                f"global vectors have shape {tuple(global_vectors.shape)}, "
                f"expected [{b}, 1 or {t}, {cfg.global_input_dim}]"
            )
