"""dsaml checkpoints (docs/checkpoints.md): Lightning-style dicts holding the network under "net." keys.

{"state_dict": {"net.<param>": tensor, ...}, "hyper_parameters": {"model": {...}, "features": {...}, ...},
 "dsaml": {"format": 1, "version": ...}}. Training checkpoints (LightningModule with `self.net` and
`save_hyperparameters`) and `dsaml-convert` output are both of this form.

Every checkpoint dsaml reads goes through `read_torch_file`, which loads with `weights_only=True` (tensors,
plain containers and numbers only: no code can run). A file that needs unpickling of other objects is refused
with `UnsafeCheckpointError`; only `trust=True` (the commands' `trust_checkpoint=true`, for files from a
source you trust) unpickles it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from dsaml.models.config import DSAMLConfig
from dsaml.models.network import DSAMLNet
from dsaml.outputs import atomic_output

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
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


TRUST_HINT = "trust_checkpoint=true"


class UnsafeCheckpointError(ValueError):
    """The file holds pickled objects beyond tensors and plain containers; loading it could run code."""


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False) -> Any:
    """`torch.load` a user-given file safely (`weights_only=True`, never a fallback) -> its object.

    FileNotFoundError when missing; UnsafeCheckpointError when it needs arbitrary unpickling (allowed only
    with `trust=True`); ValueError when it is not a torch file at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as error:
        blocked = _blocked_global(str(error))
        if trust or blocked is None:  # a damaged or foreign file, not a pickled object
            raise ValueError(
                f"{path} is not a dsaml checkpoint: torch.load failed ({_reason(error)})"
            ) from None
        raise UnsafeCheckpointError(
            f"{path} refused: loading it would unpickle arbitrary Python objects ({blocked}), which can run "
            f"code; dsaml checkpoints never need that. Only if you trust its source, pass {TRUST_HINT}"
        ) from None
    except Exception as error:  # not a torch file at all (zip/format errors, truncated files, ...)
        raise ValueError(f"{path} is not a dsaml checkpoint: torch.load failed ({_reason(error)})") from None


def _blocked_global(message: str) -> str | None:
    """The object the weights-only unpickler refused ("GLOBAL posix.system"), or None for other errors."""
    for line in message.splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.split(":", 1)[-1].strip().rstrip(".")
    return None


def _reason(error: BaseException) -> str:
    """The informative line of a torch.load error (torch prefixes weights-only errors with advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = [line for line in lines if line.startswith("WeightsUnpickler error")]
    return (detail or lines or [type(error).__name__])[0]


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
    path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> tuple[DSAMLNet, DSAMLConfig, dict]:
    """Load a dsaml checkpoint -> (network in eval mode, its DSAMLConfig, the hyper_parameters dict).

    Raises ValueError naming what the file is when it is not a dsaml checkpoint (UnsafeCheckpointError
    when it needs unpickling and `trust` is false; see `read_torch_file`).
    """
    path = Path(path)
    obj = read_torch_file(path, map_location, trust)
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
