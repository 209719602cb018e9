"""`DSAMLConfig`: every option of the DSAML network (docs/method.md, "Network"), validated on construction.

The field names are the keys of `conf/model/*.yaml`. Defaults are the paper's (D = 1024, H = 16, L = 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dsaml.config import Config, ConfigError, choice, flag, integer, number

ATTENTION_MODES = ("dual", "local", "global", "full")
POSITION_TYPES = ("relative_key", "relative_key_query", "none")
POSITION_ALIASES = {"absolute": "none"}  # the original's "absolute" adds no position information at all
IMPLS = ("fast", "eager")
CNN_KERNELS = ("fused", "native")
ACTIVATIONS = ("gelu", "relu")
GLOBAL_CONTEXT_KINDS = ("learned", "clap", "none")  # plus "precomputed:<name>"


@dataclass
class DSAMLConfig(Config):
    """Hyper-parameters of `DSAMLNet`, validated on construction (ConfigError naming the key).

    Args:
        hidden_size (int): D, the transformer width; also the global-vector width D_g unless `global_dim`
            is set. Divisible by num_heads and by 4 (the BiLSTM head's D/4).
        num_heads (int): H, attention heads of the shared encoder.
        num_layers (int): L, layers of the shared encoder.
        ffn_size (int): feed-forward width (2048 in the original, whatever its CLI said).
        dropout (float): p in [0, 1) for attention probabilities, residual branches and head.
        activation (str): the feed-forward activation, gelu | relu.
        max_positions (int): P; the relative-distance table has 2P - 1 rows.
        position (str): relative_key | relative_key_query | none ("absolute" is accepted and means none, as
            in the original).
        local_radius (int): band half-width of local attention, in segments.
        global_radius (int): band half-width of global attention, in segments.
        attention (str): dual | local | global | full.
        fusion (bool): True = h = Linear(sigmoid(s + g)) (the original); False = h = s + g (ablation).
        global_context (str): learned | precomputed:<name> | clap | none.
        global_dim (int or None): width of supplied global vectors (None = hidden_size; otherwise a
            Linear(global_dim -> D) is learned).
        global_window (int): segments in the learned context's window (60 = the original's 30 s).
        n_frames (int): F, frames per log-mel segment image (51).
        n_mels (int): M, mel bands per segment image (128).
        impl (str): how the same function is computed: fast (stacked passes, scaled_dot_product_attention) |
            eager (the original's computation step by step: parity oracle and benchmark baseline).
        cnn_kernel (str): how the fast path computes the spectrogram CNN: fused (dsaml.models.spectrogram:
            BatchNorm folded into the convolutions, full-resolution activations never written) | native
            (PyTorch's conv / BatchNorm / pool modules, as the original: the same float32 rounding, which the
            BatchNorm-conditioned CNN gradients are sensitive to at ~5e-4; networks converted from the
            original use it). Eager always uses native.
    """

    SECTION = "model"

    hidden_size: int = integer(1024, low=1)
    num_heads: int = integer(16, low=1)
    num_layers: int = integer(3, low=1)
    ffn_size: int = integer(2048, low=1)
    dropout: float = number(0.1, low=0.0, high=1.0, high_open=True)
    activation: str = choice("gelu", ACTIVATIONS)
    max_positions: int = integer(512, low=1)
    position: str = choice("relative_key", POSITION_TYPES + tuple(POSITION_ALIASES))
    local_radius: int = integer(5, low=0)
    global_radius: int = integer(30, low=0)
    attention: str = choice("dual", ATTENTION_MODES)
    fusion: bool = flag(True)
    global_context: str = "learned"
    global_dim: int | None = integer(None, low=1, optional=True)
    global_window: int = integer(60, low=1)
    n_frames: int = integer(51, low=1)
    n_mels: int = integer(128, low=1)
    impl: str = choice("fast", IMPLS)
    cnn_kernel: str = choice("fused", CNN_KERNELS)

    def __post_init__(self) -> None:
        self.position = POSITION_ALIASES.get(self.position, self.position)
        super().__post_init__()
        if not (self.global_context in GLOBAL_CONTEXT_KINDS or self._precomputed_name()):
            raise ConfigError(
                f"model.global_context={self.global_context!r} is not one of "
                f"{', '.join(GLOBAL_CONTEXT_KINDS)} or 'precomputed:<name>'"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} must be divisible by 4 (BiLSTM head D/4)"
            )

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

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DSAMLConfig:
        """Build from a plain mapping (e.g. `conf.model`, a checkpoint's hyper_parameters["model"])."""
        return cls.from_mapping(values)
