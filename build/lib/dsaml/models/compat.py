"""Conversion between the original DSAML implementation's weights / options and `DSAMLNet`.

The original's state_dict holds the ONE shared encoder under three prefixes (`multi_scale_attention.encoder.
encoder`, `...multi_scale_attention.local_attention.encoder` and `...global_attention.encoder`); they are the
same tensors and load into our single `encoder`. The original always fed ImageBind vectors, so a converted
network uses `global_context="precomputed:imagebind"` unless told otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from dsaml.models.config import DSAMLConfig
from dsaml.models.network import DSAMLNet

# original constructor option -> DSAMLConfig field
ORIGINAL_OPTIONS = {
    "origin_feature_dim": "hidden_size",
    "num_attention_heads": "num_heads",
    "num_hidden_layers": "num_layers",
    "dropout_rate": "dropout",
    "hidden_act": "activation",
    "max_position_embeddings": "max_positions",
    "position_embedding_type": "position",
    "local_context_length": "local_radius",
    "global_context_length": "global_radius",
}
IGNORED_ORIGINAL_OPTIONS = ("intermediate_size",)  # the original ignored it too (the FFN is always 2048 wide)
DEFAULT_GLOBAL_CONTEXT = "precomputed:imagebind"

_ENCODER_PREFIXES = (
    "multi_scale_attention.encoder.encoder.layer.",
    "multi_scale_attention.multi_scale_attention.local_attention.encoder.layer.",
    "multi_scale_attention.multi_scale_attention.global_attention.encoder.layer.",
)
_LAYER_PARTS = {  # original (after "layer.N.") -> ours (after "encoder.layers.N.")
    "attention.attention.query": "attention.query",
    "attention.attention.key": "attention.key",
    "attention.attention.value": "attention.value",
    "attention.attention.distance_embedding": "attention.distance_embedding",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention.output_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_norm",
}
_OTHER_PARTS = {
    "spectrogram_feature_extractor.feature_extractor.": "spectrogram.blocks.",
    "spectrogram_feature_extractor.conv1x1.": "spectrogram.conv1x1.",
    "fusion_model.spectrogram_feature_project.": "fusion.spectrogram_project.",
    "fusion_model.fusion_project.": "fusion.fusion_project.",
    "sequence_predict_model.bilstm.": "head.bilstm.",
    "sequence_predict_model.layers.0.": "head.hidden.",
    "sequence_predict_model.layers.2.": "head.out.",
}
_LAYER_RE = re.compile(r"(\d+)\.(.+)\.(weight|bias)$")


def config_from_original(options: dict[str, Any]) -> DSAMLConfig:
    """Original constructor options (plus any DSAMLConfig field names as overrides) -> DSAMLConfig."""
    # native CNN kernels: the original's float32 rounding (its CNN gradients are rounding-sensitive)
    values: dict[str, Any] = {"global_context": DEFAULT_GLOBAL_CONTEXT, "cnn_kernel": "native"}
    for key, value in options.items():
        if key in IGNORED_ORIGINAL_OPTIONS:
            continue
        if key in ORIGINAL_OPTIONS:
            values[ORIGINAL_OPTIONS[key]] = value
        else:
            values[key] = value
    return DSAMLConfig.from_dict(values)


def original_key_to_ours(key: str) -> str | None:
    """Map one original state_dict key to ours (None for keys with no counterpart)."""
    for prefix in _ENCODER_PREFIXES:
        if key.startswith(prefix):
            match = _LAYER_RE.match(key[len(prefix) :])
            if match and match.group(2) in _LAYER_PARTS:
                return f"encoder.layers.{match.group(1)}.{_LAYER_PARTS[match.group(2)]}.{match.group(3)}"
            return None
    for old, new in _OTHER_PARTS.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def state_dict_from_original(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original state_dict to ours, checking that the encoder's three copies are identical."""
    ours: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        new = original_key_to_ours(key)
        if new is None:
            unknown.append(key)
        elif new in ours and not torch.equal(ours[new], value):
            raise ValueError(
                f"original state_dict: {key} differs from another copy of the shared encoder "
                f"({new}); the original's encoder copies must be identical"
            )
        else:
            ours[new] = value
    if unknown:
        raise ValueError(
            f"original state_dict has keys with no DSAML counterpart: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}"
        )
    return ours


def model_from_original(state_dict: dict[str, Tensor], config: dict[str, Any] | DSAMLConfig) -> DSAMLNet:
    """Build a `DSAMLNet` holding the original's weights. `config`: the original's options (as in the
    reference vector's "config"; DSAMLConfig field names are accepted as overrides) or a DSAMLConfig."""
    cfg = config if isinstance(config, DSAMLConfig) else config_from_original(config)
    if cfg.global_context == "learned":
        raise ValueError(
            "model.global_context='learned' has no counterpart in the original's weights (it used "
            f"ImageBind vectors); use e.g. {DEFAULT_GLOBAL_CONTEXT!r}"
        )
    net = DSAMLNet(cfg)
    ours = state_dict_from_original(state_dict)
    missing, unexpected = net.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"original weights do not fit the configuration {cfg}: missing {missing}, unexpected {unexpected}"
        )
    return net


def original_prefixes(cfg: DSAMLConfig) -> tuple[str, ...]:
    """The encoder prefixes an original network with this attention mode holds."""
    extra = {
        "dual": _ENCODER_PREFIXES[1:],
        "local": _ENCODER_PREFIXES[1:2],
        "global": _ENCODER_PREFIXES[2:],
        "full": (),
    }[cfg.attention]
    return (_ENCODER_PREFIXES[0], *extra)


def state_dict_to_original(net: DSAMLNet) -> dict[str, Tensor]:
    """Our network's state_dict with the original's key names (the shared encoder under every prefix)."""
    reverse_layer = {v: k for k, v in _LAYER_PARTS.items()}
    reverse_other = {v: k for k, v in _OTHER_PARTS.items()}
    result: dict[str, Tensor] = {}
    for key, value in net.state_dict().items():
        if key.startswith("encoder.layers."):
            match = _LAYER_RE.match(key[len("encoder.layers.") :])
            for prefix in original_prefixes(net.cfg):
                result[f"{prefix}{match.group(1)}.{reverse_layer[match.group(2)]}.{match.group(3)}"] = value
            continue
        for new, old in reverse_other.items():
            if key.startswith(new):
                result[old + key[len(new) :]] = value
                break
        else:
            raise ValueError(
                f"parameter {key} has no counterpart in the original network "
                f"(global_context={net.cfg.global_context!r}, fusion={net.cfg.fusion})"
            )
    return result


def config_to_original(cfg: DSAMLConfig) -> dict[str, Any]:
    """The original's constructor options for this configuration."""
    return {old: getattr(cfg, new) for old, new in ORIGINAL_OPTIONS.items()}
