"""dsaml-convert IN.pt OUT.ckpt [key=value ...]: original DSAML weights -> a dsaml checkpoint.

IN.pt is a state_dict saved by the original implementation (or a dict holding one under "state_dict",
optionally with the original's constructor options under "config"). key=value pairs set the original's
options (origin_feature_dim, num_attention_heads, num_hidden_layers, dropout_rate, hidden_act,
max_position_embeddings, position_embedding_type, local_context_length, global_context_length) or any
DSAMLConfig field (e.g. global_context=precomputed:imagebind, impl=fast). Values are parsed as YAML scalars.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from dsaml.models.checkpoint import save_network
from dsaml.models.compat import IGNORED_ORIGINAL_OPTIONS, ORIGINAL_OPTIONS, model_from_original
from dsaml.models.config import DSAMLConfig


def parse_options(pairs: list[str]) -> dict:
    """["key=value", ...] -> {key: YAML-parsed value}; unknown keys fail with the allowed ones."""
    allowed = set(ORIGINAL_OPTIONS) | set(IGNORED_ORIGINAL_OPTIONS) | {f.name for f in fields(DSAMLConfig)}
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"option {pair!r}: expected key=value")
        if key not in allowed:
            raise ValueError(f"unknown option {key!r}; allowed: {', '.join(sorted(allowed))}")
        options[key] = yaml.safe_load(value) if value else None
    return options


def read_original(path: Path) -> tuple[dict, dict]:
    """-> (state_dict, options stored with it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"], dict(obj.get("config") or {})
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(
        f"{path} holds neither an original DSAML state_dict nor a dict with 'state_dict' "
        f"(got {type(obj).__name__}{' with keys ' + str(sorted(obj)[:6]) if isinstance(obj, dict) else ''})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dsaml-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", type=Path, help="original weights (.pt)")
    parser.add_argument("output", type=Path, help="dsaml checkpoint to write (.ckpt)")
    parser.add_argument("options", nargs="*", help="key=value model options")
    args = parser.parse_args(argv)
    try:
        overrides = parse_options(args.options)
        state_dict, stored = read_original(args.input)
        net = model_from_original(state_dict, {**stored, **overrides})
    except (ValueError, FileNotFoundError) as error:
        print(f"dsaml-convert: error: {error}", file=sys.stderr)
        return 2
    save_network(args.output, net, source=str(args.input), converted_from="original DSAML implementation")
    n_params = sum(p.numel() for p in net.parameters())
    print(
        f"wrote {args.output}: DSAML D={net.cfg.hidden_size} H={net.cfg.num_heads} L={net.cfg.num_layers}, "
        f"{n_params / 1e6:.2f} M parameters, global_context={net.cfg.global_context}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
