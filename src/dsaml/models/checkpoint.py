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

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dsaml.models.config import DSAMLConfig
from dsaml.models.listener_prior import ListenerPrior
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
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"  # a pickle stream (protocol 2+): the legacy torch format


class CheckpointError(ValueError):
    """A file given as a dsaml checkpoint cannot be used: not a dsaml checkpoint (the message says what it
    is), truncated or damaged, or weights of another architecture or sizes. Every command reports it in one
    or two lines, exit 2."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled objects beyond tensors and plain containers; loading it could run code."""


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False) -> Any:
    """`torch.load` a user-given file safely (`weights_only=True`, never a fallback) -> its object.

    FileNotFoundError when missing; UnsafeCheckpointError naming the Python object it would unpickle (allowed
    only with `trust=True`); CheckpointError when it is truncated or damaged, or not a torch file at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError, ...
        blocked = None if trust else blocked_global(str(error))
        if blocked is not None:
            raise UnsafeCheckpointError(
                f"{path} refused: loading it would unpickle the Python object {blocked}, which can run code; "
                f"dsaml checkpoints never need that. Only if you trust its source, pass {TRUST_HINT}"
            ) from None
        raise CheckpointError(f"{path} {_unreadable(path, error)}") from None


def blocked_global(message: str) -> str | None:
    """The object torch's weights-only unpickler refused in `message` ("posix.system" from "...unsupported
    GLOBAL posix.system whose module posix is blocked" or "Unsupported global: GLOBAL exec was not an
    allowed global ..."), or None for other errors."""
    found = re.search(r"\bGLOBAL ([\w.]+)", message)
    return found.group(1).rstrip(".") if found else None


def _unreadable(path: Path, error: BaseException) -> str:
    """Why a file that torch.load could not read is no checkpoint: truncated/damaged, or what it is."""
    with path.open("rb") as handle:
        head = handle.read(64)
    if not head:
        return "is empty (0 bytes); expected a dsaml checkpoint"
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC):
        return (
            f"is truncated or damaged ({path.stat().st_size} bytes; torch.load: {_reason(error)}); "
            "copy or write it again"
        )
    if head.startswith(b"\x89HDF"):
        what = "an HDF5 file (a feature store? pass it as paths.store)"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        what = f"a text file starting {head.decode('ascii').splitlines()[0][:30]!r}"
    else:
        what = "neither a torch zip file nor a pickle"
    return f"is not a dsaml checkpoint: it is {what}"


def _reason(error: BaseException) -> str:
    """The informative line of a torch.load error, without torch's advice on weights_only."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    advice = ("weights_only", "Weights only", "trusted source", "documentation of torch.load")
    detail = [line for line in lines if line.startswith("WeightsUnpickler error")]
    plain = [line for line in lines if not any(a in line for a in advice)]
    return (detail or plain or [type(error).__name__])[0].split(". This is an internal")[0]


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


# network options that do not change the weights' shapes or meaning
RUNTIME_MODEL_KEYS = ("impl", "cnn_kernel", "dropout")


def differing_model_fields(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """The model config fields (besides RUNTIME_MODEL_KEYS) in which two model configs differ, as
    "model.<key>: run <ours> vs checkpoint <theirs>"."""
    return [
        f"model.{k}: run {ours[k]!r} vs checkpoint {theirs.get(k)!r}"
        for k in sorted(ours)
        if k not in RUNTIME_MODEL_KEYS and ours[k] != theirs.get(k)
    ]


def check_weights(
    target: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    ours: Mapping[str, Any] | None = None,
    theirs: Mapping[str, Any] | None = None,
) -> None:
    """CheckpointError unless `state` (from checkpoint `path`) has exactly `target`'s keys and shapes; the
    message names the first differing keys and, given both model configs, the fields that explain them."""
    own = target.state_dict()
    sizes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not (sizes or missing or unexpected):
        return
    parts = [f"{k} is {list(state[k].shape)} there, {list(own[k].shape)} here" for k in sizes[:2]]
    parts += [f"lacks {missing[:2]}"] if missing else []
    parts += [f"has extra {unexpected[:2]}"] if unexpected else []
    fields = differing_model_fields(ours, theirs) if ours is not None and theirs is not None else []
    why = f"; the model configs differ in {', '.join(fields)}" if fields else ""
    raise CheckpointError(f"{path} holds weights of another architecture or sizes ({'; '.join(parts)}){why}")


def load_network(
    path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> tuple[DSAMLNet, DSAMLConfig, dict]:
    """Load a dsaml checkpoint -> (network in eval mode, its DSAMLConfig, the hyper_parameters dict).

    Raises CheckpointError naming what the file is when it is not a dsaml checkpoint, is damaged, or its
    weights do not fit its recorded model (UnsafeCheckpointError when it needs unpickling and `trust` is
    false; see `read_torch_file`).
    """
    path = Path(path)
    obj = read_torch_file(path, map_location, trust)
    if not (
        isinstance(obj, dict)
        and isinstance(obj.get("state_dict"), dict)
        and isinstance(obj.get("hyper_parameters"), dict)
        and "model" in obj["hyper_parameters"]
    ):
        raise CheckpointError(
            f"{path} is not a dsaml checkpoint (expected 'state_dict' and "
            f"'hyper_parameters.model'); it is {_describe(obj)}"
        )
    fmt = obj.get("dsaml", {}).get("format", FORMAT)
    if fmt > FORMAT:
        raise CheckpointError(
            f"{path}: dsaml checkpoint format {fmt} is newer than this dsaml (reads {FORMAT})"
        )
    hparams = obj["hyper_parameters"]
    model = hparams["model"]
    try:
        cfg = model if isinstance(model, DSAMLConfig) else DSAMLConfig.from_dict(dict(model))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} records an invalid model config: {error}") from None
    state = {k[len(NET_PREFIX) :]: v for k, v in obj["state_dict"].items() if k.startswith(NET_PREFIX)}
    if not state:
        raise CheckpointError(
            f"{path}: no 'net.*' weights in its state_dict (keys: {sorted(obj['state_dict'])[:5]})"
        )
    net = DSAMLNet(cfg)
    check_weights(net, state, path)
    net.load_state_dict(state)
    net.to(map_location).eval()
    if hparams.get("listener_prior") is not None:
        try:
            net.listener_prior = ListenerPrior.from_dict(hparams["listener_prior"], cfg.hidden_size)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: hyper_parameters.listener_prior is malformed: {error}") from None
    return net, cfg, hparams
