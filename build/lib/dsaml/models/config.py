"""`DSAMLConfig`: every option of the DSAML network (spec section 2), validated on construction.

The field names are the keys of `conf/model/*.yaml`. Defaults are the paper's (D = 1024, H = 16, L = 3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ATTENTION_MODES = ("dual", "local", "global", "full")
POSITION_TYPES = ("relative_key", "relative_key_query", "none")
POSITION_ALIASES = {"absolute": "none"}  # the original's "absolute" adds no position information at all
IMPLS = ("fast", "eager")
CNN_KERNELS = ("fused", "native")
ACTIVATIONS = ("gelu", "relu")
GLOBAL_CONTEXT_KINDS = ("learned", "clap", "none")  # plus "precomputed:<name>"


@dataclass
class DSAMLConfig:
    """Hyper-parameters of `DSAMLNet`.

    hidden_size: D, the transformer width; also the global-vector width D_g unless `global_dim` is set.
    num_heads / num_layers: H and L of the shared encoder. ffn_size: feed-forward width (2048 in the
    original, whatever its CLI said). dropout: p for attention probabilities, residual branches and head.
    max_positions: P; the relative-distance table has 2P - 1 rows. position: relative_key |
    relative_key_query | none ("absolute" is accepted and means none, as in the original).
    local_radius / global_radius: band half-widths in segments. attention: dual | local | global | full.
    fusion: True = h = Linear(sigmoid(s + g)) (the original); False = h = s + g (ablation).
    global_context: learned | precomputed:<name> | clap | none. global_dim: width of supplied global vectors
    (None = hidden_size; otherwise a Linear(global_dim -> D) is learned). global_window: segments in the
    learned context's window (60 = the original's 30 s). n_frames / n_mels: the log-mel segment image.
    impl: how the same function is computed: fast (stacked passes, scaled_dot_product_attention) | eager (the
    original's computation step by step: parity oracle and benchmark baseline).
    cnn_kernel: how the fast path computes the spectrogram CNN: fused (dsaml.models.spectrogram: BatchNorm
    folded into the convolutions, full-resolution activations never written) | native (PyTorch's conv /
    BatchNorm / pool modules, as the original: the same float32 rounding, which the BatchNorm-conditioned CNN
    gradients are sensitive to at ~5e-4; networks converted from the original use it).
    Eager always uses native.
    """

    hidden_size: int = 1024
    num_heads: int = 16
    num_layers: int = 3
    ffn_size: int = 2048
    dropout: float = 0.1
    activation: str = "gelu"
    max_positions: int = 512
    position: str = "relative_key"
    local_radius: int = 5
    global_radius: int = 30
    attention: str = "dual"
    fusion: bool = True
    global_context: str = "learned"
    global_dim: int | None = None
    global_window: int = 60
    n_frames: int = 51
    n_mels: int = 128
    impl: str = "fast"
    cnn_kernel: str = "fused"

    def __post_init__(self) -> None:
        self.position = POSITION_ALIASES.get(self.position, self.position)
        _choice("position", self.position, POSITION_TYPES + tuple(POSITION_ALIASES))
        _choice("attention", self.attention, ATTENTION_MODES)
        _choice("impl", self.impl, IMPLS)
        _choice("cnn_kernel", self.cnn_kernel, CNN_KERNELS)
        _choice("activation", self.activation, ACTIVATIONS)
        if not (self.global_context in GLOBAL_CONTEXT_KINDS or self._precomputed_name()):
            raise ValueError(
                f"model.global_context={self.global_context!r} is not one of "
                f"{', '.join(GLOBAL_CONTEXT_KINDS)} or 'precomputed:<name>'"
            )
        for name in (
            "hidden_size",
            "num_heads",
            "num_layers",
            "ffn_size",
            "max_positions",
            "global_window",
            "n_frames",
            "n_mels",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}={value!r}: expected a positive integer")
        for name in ("local_radius", "global_radius"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"model.{name}={value!r}: expected a non-negative integer")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ValueError(f"model.hidden_size={self.hidden_size} must be divisible by 4 (BiLSTM head D/4)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"model.dropout={self.dropout!r}: expected a probability in [0, 1)")
        if self.global_dim is not None and (not isinstance(self.global_dim, int) or self.global_dim < 1):
            raise ValueError(f"model.global_dim={self.global_dim!r}: expected null or a positive integer")
        if not isinstance(self.fusion, bool):
            raise ValueError(f"model.fusion={self.fusion!r}: expected true or false")

    def _precomputed_name(self) -> str | None:
        prefix = "precomputed:"
        if self.global_context.startswith(prefix) and len(self.global_context) > len(prefix):
            return self.global_context[len(prefix) :]
        return None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def passes(self) -> int:
        """How many times the shared encoder runs (2 for dual attention)."""
        return 2 if self.attention == "dual" else 1

    @property
    def global_store_name(self) -> str | None:
        """Name of the feature-store vectors the caller must pass (None when the network needs none)."""
        if self.global_context == "clap":
            return "clap"
        return self._precomputed_name()

    @property
    def global_input_dim(self) -> int:
        return self.global_dim or self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DSAMLConfig:
        """Build from a plain mapping (e.g. `conf.model`), rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; allowed keys: {sorted(known)}")
        return cls(**dict(values))


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{key}={value!r} is not one of {', '.join(allowed)}")
