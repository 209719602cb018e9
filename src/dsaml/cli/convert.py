"""dsaml-convert IN.pt OUT.ckpt [key=value ...]: original DSAML weights -> a dsaml checkpoint.

IN.pt is a state_dict saved by the original implementation (or a dict holding one under "state_dict",
optionally with the original's constructor options under "config"). key=value pairs set the original's
options (origin_feature_dim, num_attention_heads, num_hidden_layers, dropout_rate, hidden_act,
max_position_embeddings, position_embedding_type, local_context_length, global_context_length) or any
DSAMLConfig field (e.g. global_context=precomputed:imagebind, impl=fast). Values are parsed as YAML scalars.
IN.pt is read without unpickling (weights only); --trust-checkpoint unpickles it, for files you trust.
An existing OUT.ckpt is replaced only when it is an earlier dsaml-convert output, or with --overwrite; never
when it is IN.pt.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from dsaml.cli.entry import plain_command
from dsaml.cli.errors import report
from dsaml.models.checkpoint import read_torch_file, save_network
from dsaml.models.compat import IGNORED_ORIGINAL_OPTIONS, ORIGINAL_OPTIONS, model_from_original
from dsaml.models.config import DSAMLConfig
from dsaml.outputs import check_output


def parse_options(pairs: list[str]) -> dict:
    """["key=value", ...] -> {key: YAML-parsed value}; unknown keys fail with the allowed ones."""
    allowed = set(ORIGINAL_OPTIONS) | {f.name for f in fields(DSAMLConfig)}
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"option {pair!r}: expected key=value")
        if (
            key in IGNORED_ORIGINAL_OPTIONS
        ):  # accepted in IN.pt's stored options, where the original ignores it
            raise ValueError(
                f"option {key!r} would be ignored (the original's feed-forward is always 2048 wide): set "
                "ffn_size=<width> for weights of another feed-forward width"
            )
        if key not in allowed:
            raise ValueError(f"unknown option {key!r}; allowed: {', '.join(sorted(allowed))}")
        options[key] = yaml.safe_load(value) if value else None
    return options


def read_original(path: Path, trust: bool = False) -> tuple[dict, dict]:
    """-> (state_dict, options stored with it)."""
    obj = read_torch_file(path, "cpu", trust)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"], dict(obj.get("config") or {})
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(
        f"{path} holds neither an original DSAML state_dict nor a dict with 'state_dict' "
        f"(got {type(obj).__name__}{' with keys ' + str(sorted(obj)[:6]) if isinstance(obj, dict) else ''})"
    )


def fit_original(state_dict: dict, options: dict):
    """`model_from_original`, with a weight of the wrong shape reported as a ValueError naming it."""
    try:
        return model_from_original(state_dict, options)
    except RuntimeError as error:  # load_state_dict: "size mismatch for <key>: copying a param with shape..."
        mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        if not mismatches:
            raise
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise ValueError(
            f"the weights do not fit the options {options or '(none given)'}: {mismatches[0]}{more}; "
            "pass the original's options (e.g. num_attention_heads=..., origin_feature_dim=...)"
        ) from None


def convert(argv: list[str] | None = None) -> int:
    """dsaml-convert's body -> exit code (2: bad input, reported in one line)."""
    parser = argparse.ArgumentParser(
        prog="dsaml-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", type=Path, help="original weights (.pt)")
    parser.add_argument("output", type=Path, help="dsaml checkpoint to write (.ckpt)")
    parser.add_argument("options", nargs="*", help="key=value model options")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.ckpt if it exists")
    parser.add_argument(
        "--trust-checkpoint", action="store_true", help="unpickle IN.pt (can run code: trusted files only)"
    )
    args = parser.parse_intermixed_args(argv)  # options and flags in any order
    try:
        check_output(
            "OUT.ckpt", args.output, "converted", {"IN.pt": args.input}, args.overwrite, "--overwrite"
        )
        overrides = parse_options(args.options)
        state_dict, stored = read_original(args.input, args.trust_checkpoint)
        net = fit_original(state_dict, {**stored, **overrides})
        save_network(args.output, net, source=str(args.input), converted_from="original DSAML implementation")
    except (ValueError, OSError) as error:
        return report("dsaml-convert", error)
    n_params = sum(p.numel() for p in net.parameters())
    print(
        f"wrote {args.output}: DSAML D={net.cfg.hidden_size} H={net.cfg.num_heads} L={net.cfg.num_layers}, "
        f"{n_params / 1e6:.2f} M parameters, global_context={net.cfg.global_context}"
    )
    return 0


main = plain_command("dsaml-convert", convert)


if __name__ == "__main__":
    raise SystemExit(main())
