"""dsaml checkpoints (CONTRACT.md): Lightning-style dicts holding the network under "net." keys.

{"state_dict": {"net.<param>": tensor, ...}, "hyper_parameters": {"model": {...}, "features": {...}, ...},
 "dsaml": {"format": 1, "version": ...}}. Training checkpoints (LightningModule with `self.net` and
`save_hyperparameters`) and `dsaml-convert` output are both of this form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dsaml.models.config import DSAMLConfig
from dsaml.models.network import DSAMLNet

FORMAT = 1
NET_PREFIX = "net."


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dsaml")
    except PackageNotFoundError:
        return "unknown"


def save_network(
    path: str | Path, net: DSAMLNet, features: dict[str, Any] | None = None, **hyper_parameters: Any
) -> Path:
    """Write `net` as a dsaml checkpoint; `features` (the feature config) and any further hyper-parameters
    (e.g. task=..., source=...) go under "hyper_parameters"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": {NET_PREFIX + k: v.detach().cpu() for k, v in net.state_dict().items()},
        "hyper_parameters": {
            "model": net.cfg.to_dict(),
            "features": dict(features or {}),
            **hyper_parameters,
        },
        "dsaml": {"format": FORMAT, "version": _version()},
    }
    torch.save(checkpoint, path)
    return path


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))[:8]
        if keys and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return (
                f"a bare state_dict ({len(obj)} tensors, e.g. {keys[:3]}); "
                "convert original weights with dsaml-convert"
            )
        return f"a dict with keys {keys}"
    return f"a {type(obj).__name__}"


def load_network(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[DSAMLNet, DSAMLConfig, dict]:
    """Load a dsaml checkpoint -> (network in eval mode, its DSAMLConfig, the hyper_parameters dict).

    Raises ValueError naming what the file is when it is not a dsaml checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # Lightning checkpoints may pickle config objects (e.g. OmegaConf) in hyper_parameters
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as error:  # not a torch file at all
            raise ValueError(f"{path} is not a dsaml checkpoint: torch.load failed ({error})") from error
    if not (
        isinstance(obj, dict)
        and isinstance(obj.get("state_dict"), dict)
        and isinstance(obj.get("hyper_parameters"), dict)
        and "model" in obj["hyper_parameters"]
    ):
        raise ValueError(
            f"{path} is not a dsaml checkpoint (expected 'state_dict' and "
            f"'hyper_parameters.model'); it is {_describe(obj)}"
        )
    fmt = obj.get("dsaml", {}).get("format", FORMAT)
    if fmt > FORMAT:
        raise ValueError(f"{path}: dsaml checkpoint format {fmt} is newer than this dsaml (reads {FORMAT})")
    hparams = obj["hyper_parameters"]
    model = hparams["model"]
    cfg = model if isinstance(model, DSAMLConfig) else DSAMLConfig.from_dict(dict(model))
    state = {k[len(NET_PREFIX) :]: v for k, v in obj["state_dict"].items() if k.startswith(NET_PREFIX)}
    if not state:
        raise ValueError(
            f"{path}: no 'net.*' weights in its state_dict (keys: {sorted(obj['state_dict'])[:5]})"
        )
    net = DSAMLNet(cfg)
    net.load_state_dict(state)
    net.to(map_location).eval()
    return net, cfg, hparams
