"""The shared BERT-style encoder with relative-position self-attention under band masks (docs/method.md).

Two implementations of the same computation, fixed when the modules are built (`fast`, from `impl`):

- "eager": the original's computation step by step (scores, relative term through a [T, T, D/H] table of
  distance embeddings, /sqrt(D/H), + mask, softmax, dropout, probs @ v), one encoder run per pass. It is the
  parity oracle and the benchmark baseline.
- "fast": all passes stacked along the batch and run together; the relative-position term is one matmul
  against the 2T - 1 distance embeddings in use, re-indexed to [T, T] and folded with the band mask into the
  additive bias of `scaled_dot_product_attention`. Explicit probabilities are computed only for layers whose
  maps something consumes (the regulariser's two layers; every layer when maps are requested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QKV = tuple[Tensor, Tensor, Tensor]  # query, key, value [N, H, T, D/H]
MASK_BIAS = -10000.0  # the original's additive bias for masked-out positions


def band_bias(length: int, radius: int | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[T, T] additive bias: 0 where |i - j| <= radius, -10000 elsewhere (all zeros when radius is None)."""
    if radius is None:
        return torch.zeros(length, length, device=device, dtype=dtype)
    pos = torch.arange(length, device=device)
    allowed = (pos[:, None] - pos[None, :]).abs() <= radius
    return (1.0 - allowed.to(dtype)) * MASK_BIAS


def _relative_index(length: int, device: torch.device) -> Tensor:
    """[T, T] long: i - j + T - 1, the column of distance i - j among the 2T - 1 distances in use."""
    pos = torch.arange(length, device=device)
    return pos[:, None] - pos[None, :] + length - 1


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with BERT's relative_key / relative_key_query position scores, then the
    residual LayerNorm.

    hidden_size: D; num_heads: H (head size D/H); position: relative_key | relative_key_query | none;
    max_positions: P (2P - 1 distance embeddings); dropout: on the probabilities and the output; fast: the
    stacked scaled_dot_product_attention path (module docstring), False = the original's step by step.
    """

    def __init__(
        self,
        hidden_size: int = 1024,
        num_heads: int = 16,
        position: str = "relative_key",
        max_positions: int = 512,
        dropout: float = 0.1,
        fast: bool = True,
    ) -> None:
        super().__init__()
        d = hidden_size
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.position, self.max_positions, self.p, self.fast = position, max_positions, dropout, fast
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        if self.position != "none":
            self.distance_embedding = nn.Embedding(2 * max_positions - 1, self.head_dim)
        self.output = nn.Linear(d, d)
        self.output_dropout = nn.Dropout(dropout)
        self.output_norm = nn.LayerNorm(d, eps=1e-12)

    def _heads(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)

    def _check_length(self, length: int) -> None:
        if self.position != "none" and length > self.max_positions:
            raise ValueError(
                f"sequence of {length} segments exceeds model.max_positions={self.max_positions}; "
                "predict long songs with dsaml.inference.predict_song (sliding windows)"
            )

    def project(self, x: Tensor) -> QKV:
        """x [N, T, D] -> q, k, v [N, H, T, D/H] (per token: a song's can be computed once and sliced)."""
        return self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))

    def forward(
        self, x: Tensor, mask: Tensor, want_probs: bool, qkv: QKV | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x [N, T, D], mask [N or 1, 1, T, T] additive, qkv = project(x) if already computed
        -> (LayerNorm(x + attn), probs [N, H, T, T]; None on the fast path unless `want_probs`)."""
        self._check_length(x.shape[1])
        q, k, v = qkv if qkv is not None else self.project(x)
        if self.fast:
            context, probs = self._fast(q, k, v, mask, want_probs)
        else:
            context, probs = self._eager(q, k, v, mask)
        n, _, t, _ = context.shape
        context = context.transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim)
        return self.output_norm(x + self.output_dropout(self.output(context))), probs

    def _eager(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The original's computation, kept literal (parity oracle, benchmark baseline)."""
        scores = torch.matmul(q, k.transpose(-1, -2))
        if self.position != "none":
            t = q.shape[2]
            pos = torch.arange(t, device=q.device)
            distance = pos.view(-1, 1) - pos.view(1, -1)
            table = self.distance_embedding(distance + self.max_positions - 1).to(q.dtype)  # [T, T, D/H]
            scores = scores + torch.einsum("bhld,lrd->bhlr", q, table)
            if self.position == "relative_key_query":
                scores = scores + torch.einsum("bhrd,lrd->bhlr", k, table)
        scores = scores / math.sqrt(self.head_dim) + mask
        probs = F.dropout(scores.softmax(dim=-1), self.p, self.training)
        return torch.matmul(probs, v), probs

    def _fast(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, want_probs: bool
    ) -> tuple[Tensor, Tensor | None]:
        scale = 1.0 / math.sqrt(self.head_dim)
        bias = mask
        if self.position != "none":
            t = q.shape[2]
            rows = self.distance_embedding.weight[
                self.max_positions - t : self.max_positions + t - 1
            ]  # d=-(T-1)..T-1
            index = _relative_index(t, q.device)
            # rel[l, r] = q_l . E[l - r]: one matmul against the 2T - 1 distances, then re-indexed to [T, T]
            rel = torch.gather(torch.matmul(q, rows.t().to(q.dtype)), -1, index.expand(*q.shape[:2], t, t))
            if self.position == "relative_key_query":  # + k_r . E[l - r], gathered as [r, l] then transposed
                by_key = torch.matmul(k, rows.t().to(q.dtype))
                rel = rel + torch.gather(by_key, -1, index.t().expand(*q.shape[:2], t, t)).transpose(-1, -2)
            bias = rel * scale + mask
        if not want_probs:
            p = self.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=scale), None
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale + bias
        probs = F.dropout(scores.softmax(dim=-1), self.p, self.training)
        return torch.matmul(probs, v), probs


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer layer: its attention block, then the feed-forward block (eps 1e-12).

    attention: the layer's `RelativeSelfAttention` (of width D); ffn_size: the feed-forward width;
    activation: gelu | relu; dropout: after the feed-forward block.
    """

    def __init__(
        self,
        attention: RelativeSelfAttention,
        ffn_size: int = 2048,
        activation: str = "gelu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        hidden_size = attention.output.out_features
        self.attention = attention
        self.intermediate = nn.Linear(hidden_size, ffn_size)
        self.activation = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.output = nn.Linear(ffn_size, hidden_size)
        self.output_dropout = nn.Dropout(dropout)
        self.output_norm = nn.LayerNorm(hidden_size, eps=1e-12)

    def forward(
        self, x: Tensor, mask: Tensor, want_probs: bool, qkv: QKV | None = None
    ) -> tuple[Tensor, Tensor | None]:
        x, probs = self.attention(x, mask, want_probs, qkv)
        ffn = self.output_dropout(self.output(self.activation(self.intermediate(x))))
        return self.output_norm(x + ffn), probs


class DualScaleEncoder(nn.Module):
    """ONE encoder (shared weights) run once per attention pass: local band, global band, or unmasked.

    attention: dual (local then global band) | local | global | full (one unmasked pass); local_radius /
    global_radius: band half-widths in segments; num_layers: L; fast: stack the passes in one batch and use
    `scaled_dot_product_attention` (False = the original's computation, pass by pass); the other arguments:
    `RelativeSelfAttention`'s and `EncoderLayer`'s.

    forward(h [B, T, D]) -> dict with
      "encoded" [B, T, D]: sigmoid(local + global) for dual attention, the single pass's output otherwise;
      "attention_maps" [B, passes * L, H, T, T] (when requested; local layers first, then global);
      "attention_diagonal" [B, 2, T] (when requested): head-averaged diagonal of the attention
      probabilities of layer L - 1 (last layer of the first pass) and of the last layer of the last pass.
    """

    def __init__(
        self,
        hidden_size: int = 1024,
        num_heads: int = 16,
        num_layers: int = 3,
        ffn_size: int = 2048,
        activation: str = "gelu",
        position: str = "relative_key",
        max_positions: int = 512,
        dropout: float = 0.1,
        attention: str = "dual",
        local_radius: int = 5,
        global_radius: int = 30,
        fast: bool = True,
    ) -> None:
        super().__init__()
        self.fast = fast
        self.layers = nn.ModuleList(
            EncoderLayer(
                RelativeSelfAttention(hidden_size, num_heads, position, max_positions, dropout, fast),
                ffn_size,
                activation,
                dropout,
            )
            for _ in range(num_layers)
        )
        radii = {
            "dual": (local_radius, global_radius),
            "local": (local_radius,),
            "global": (global_radius,),
            "full": (None,),
        }
        self.radii: tuple[int | None, ...] = radii[attention]

    def forward(
        self,
        h: Tensor,
        return_attention: bool = False,
        return_diagonal: bool = True,
        first_qkv: QKV | None = None,
    ) -> dict[str, Tensor]:
        """h [B, T, D]; first_qkv = self.layers[0].attention.project(h) when already computed (e.g. sliced
        from a whole song's): every pass starts from h, so the first layer's projections serve all passes."""
        b, t, _ = h.shape
        masks = [band_bias(t, r, h.device, h.dtype) for r in self.radii]
        if not self.fast:
            runs = [self._run(h, m[None, None], return_attention, return_diagonal, first_qkv) for m in masks]
            outs = [o for o, _ in runs]
            maps = [m for _, ms in runs for m in ms]  # pass-major: pass 0 layers, then pass 1 layers
        else:
            stacked = h.repeat(len(masks), 1, 1)  # [passes * B, T, D]
            mask = torch.stack(masks).repeat_interleave(b, dim=0)[:, None]  # [passes * B, 1, T, T]
            qkv = first_qkv if first_qkv is not None else self.layers[0].attention.project(h)
            qkv = tuple(p.repeat(len(masks), 1, 1, 1) for p in qkv)  # computed once, shared by the passes
            out, layer_maps = self._run(stacked, mask, return_attention, return_diagonal, qkv)
            outs = list(out.split(b))
            maps = [
                m
                for p in range(len(masks))
                for m in (lm.split(b)[p] if lm is not None else None for lm in layer_maps)
            ]
        result = {"encoded": torch.sigmoid(outs[0] + outs[1]) if len(outs) == 2 else outs[0]}
        n_layers = len(self.layers)
        if return_attention:
            result["attention_maps"] = torch.stack(maps, dim=1)
        if return_diagonal:
            chosen = (maps[n_layers - 1], maps[-1])
            result["attention_diagonal"] = torch.stack(
                [m.mean(dim=1).diagonal(dim1=-2, dim2=-1) for m in chosen], dim=1
            )
        return result

    def _run(
        self, x: Tensor, mask: Tensor, all_maps: bool, last_map: bool, first_qkv: QKV | None
    ) -> tuple[Tensor, list]:
        maps = []
        for i, layer in enumerate(self.layers):
            want = all_maps or (last_map and i == len(self.layers) - 1)
            x, probs = layer(x, mask, want, first_qkv if i == 0 else None)
            maps.append(probs if (all_maps or (last_map and i == len(self.layers) - 1)) else None)
        return x, maps
