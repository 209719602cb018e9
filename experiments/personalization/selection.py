"""How well `adaptation=auto` chooses: every candidate's validation scores on a listener's support songs next
to its score on the song it is then used on, and what each selection rule would have given.

    python experiments/personalization/selection.py --ckpt <dmer.ckpt> --store <store.h5> --shots 2 \
        --split val --out selection_val_k2.json     # design: validation songs the model never trained on
    python experiments/personalization/selection.py --ckpt <dmer.ckpt> --store <store.h5> --shots 2 \
        --split test --methods calibrate head head_calibrate --out selection_test_k2.json  # test pairs

Pairs: with `--split test` the cross-song protocol's (song, rater) pairs and support songs
(`DSAMLDataModule.test_pairs`, whole songs, `--seed`'s draw); with `--split val` the same construction
over the DMER model's validation songs (held out from its training, `val_fraction` of the training songs)
and the training raters who rated k + 1 of them: songs the model never fitted, raters the benchmark never
scores, so a rule can be chosen here and checked on the test pairs. Untouched sliders are left out of the
support (`adaptation.skip_flat`) and not scored.

Per pair, the project's own `candidate_scores` (`dsaml.meta.selection`) on each validation fold of the support
(`folds`: leave-one-song-out) and once more fitted on every support song and scored on the
held-out song. Printed per candidate set (all of `--methods`, those without the maml inner loop, calibrate
alone) and rule (`dsaml.meta.SELECTION_RULES`; the oracle that picks the best held-out score with
hindsight; calibrate without the check against none): the mean per-rater gain in held-out score over the
unadapted model, raters not worse by more than 0.01, the worst rater, and which methods were chosen. Raw
scores go to `--out` (JSON; given an existing file, only its table is printed).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from run import pdmer_task  # this folder's run.py

from dsaml.config import CONFIG_DIR
from dsaml.data.datamodule import DSAMLDataModule
from dsaml.data.episodes import cross_song_pairs
from dsaml.meta import METHODS, SELECTION_RULES, AdaptationConfig, CalibrationPrior, SlidingWindows, moving
from dsaml.meta.selection import candidate_scores, choose, folds, tabulate
from dsaml.models.checkpoint import load_network
from dsaml.progress import progress_bar
from dsaml.reporting import NOT_WORSE_MARGIN
from dsaml.training.runs import to_overrides


def val_pairs(data: DSAMLDataModule, shots: int, seed: int) -> tuple[list, list]:
    """(song, rater) pairs and their support songs over the DMER validation songs, drawn as `test_pairs`
    draws them over the test songs (`cross_song_pairs`; support () when the rater has too few songs)."""
    data.setup("fit")
    held_out = set(data.val_songs)
    by_rater: dict[str, list[str]] = collections.defaultdict(list)
    for rater, song in data.reader.store.rater_songs("train"):
        if song in held_out:
            by_rater[rater].append(song)
    return cross_song_pairs(dict(sorted(by_rater.items())), shots, seed, "val")


def audit(
    ckpt: str,
    store: str,
    shots: int,
    split: str,
    seed: int,
    methods: list[str],
    stride: int = 10,
) -> list[dict]:
    """Per pair: {"rater", "song", "folds": [{"<method> <steps>": score} per fold], "held_out": {...}}."""
    net, _, hparams = load_network(ckpt)
    net.eval()
    prior = CalibrationPrior.from_dict(hparams["calibration_prior"])
    task = pdmer_task(to_overrides(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "demo.yaml"))["pdmer"]))
    predictor = SlidingWindows(
        int(task["support_segments"]), "weighted", int(task["eval_batch_size"]), stride
    )
    config = AdaptationConfig(method="auto").resolve(task)  # the inner loops' steps and lr, the step grid
    data = DSAMLDataModule(store, task="pdmer" if split == "test" else "dmer", shots=shots,
                           cross_support="song", seed=seed)  # fmt: skip
    pairs, supports = data.test_pairs() if split == "test" else val_pairs(data, shots, seed)
    rows = []
    with progress_bar(Console(stderr=True)) as progress:
        bar = progress.add_task(f"{split} pairs, k = {shots}", total=len(pairs), digits=2)
        for index, ((song, rater), support_ids) in enumerate(zip(pairs, supports, strict=True)):
            progress.advance(bar)
            torch.manual_seed(index)  # the inner loops' dropout: each pair's own draws, whatever ran before
            scored = data.reader.item(song, rater)
            support = moving([data.reader.item(s, rater) for s in support_ids or ()])
            if not support or not moving([scored]):  # nothing to adapt on, or an untouched slider to score
                continue
            splits = folds(support)[1]
            per_fold = [
                candidate_scores(net, fit, val, config, predictor, prior, methods) for fit, val in splits
            ]
            held_out = candidate_scores(net, support, [scored], config, predictor, prior, methods)
            rows.append({
                "rater": rater, "song": song,
                "folds": [{f"{m} {s}": v for (m, s), v in f.items()} for f in per_fold],
                "held_out": {f"{m} {s}": v for (m, s), v in held_out.items()},
            })  # fmt: skip
    return rows


def rule_table(rows: list[dict], margin: float = 0.0) -> str:
    """Per candidate set x rule (`SELECTION_RULES`, calibrate always, the oracle that picks the best held-out
    score with hindsight): mean per-rater held-out gain over none, raters not worse by > NOT_WORSE_MARGIN, and
    how often each method was chosen."""
    present = {key.split()[0] for key in rows[0]["held_out"]} - {"none"}
    sets = {
        "all": present,
        "without maml": {m for m in present if not m.startswith("maml")},
        "calibrate": {"calibrate"} & present,
    }
    lines = ["| candidates | rule | gain | not worse by > 0.01 | worst | chosen |", "|---" * 6 + "|"]
    done = set()
    for set_name, methods in sets.items():
        if not methods or frozenset(methods) in done:
            continue
        done.add(frozenset(methods))
        always = ("calibrate always",) if methods == {"calibrate"} else ()
        for rule in (*SELECTION_RULES, *always, "oracle (hindsight)"):
            per_rater: dict[str, list[float]] = collections.defaultdict(list)
            chosen: collections.Counter = collections.Counter()
            for row in rows:
                keep = [k for k in row["held_out"] if k.split()[0] in methods | {"none"}]
                if rule == "oracle (hindsight)":
                    pick = max(keep, key=row["held_out"].get)
                elif rule == "calibrate always":
                    pick = "calibrate 0"
                else:
                    per_fold = [{tuple_key(k): f[k] for k in keep} for f in row["folds"]]
                    choice = choose(tabulate(per_fold), margin, rule)
                    pick = f"{choice['method']} {choice['steps']}"
                chosen[pick.split()[0]] += 1
                per_rater[row["rater"]].append(row["held_out"][pick] - row["held_out"]["none 0"])
            gains = np.array([np.mean(v) for v in per_rater.values()])
            not_worse = int((gains >= -NOT_WORSE_MARGIN).sum())
            picks = ", ".join(f"{m} {n}" for m, n in chosen.most_common())
            row = [set_name, rule, f"{gains.mean():+.4f}", f"{not_worse}/{len(gains)}", f"{gains.min():+.3f}"]
            lines.append("| " + " | ".join([*row, picks]) + " |")
    return "\n".join(lines)


def tuple_key(key: str) -> tuple[str, int]:
    method, steps = key.split()
    return method, int(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a dsaml checkpoint with a calibration prior")
    parser.add_argument("--store", required=True)
    parser.add_argument("--shots", type=int, default=2, help="support songs per pair (>= 2: leave-one-out)")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS[1:],
        default=list(METHODS[1:]),
        help="the candidates besides none (default: every method; the maml ones take ~90%% of the time)",
    )
    parser.add_argument("--out", required=True, help="raw scores (JSON); an existing file is only tabulated")
    args = parser.parse_args()
    out = Path(args.out)
    if not out.parent.is_dir():
        parser.error(f"--out {args.out}: the folder {out.parent} does not exist")
    if out.is_file():
        rows = json.loads(out.read_text())
    else:
        rows = audit(args.ckpt, args.store, args.shots, args.split, args.seed, args.methods)
        out.write_text(json.dumps(rows))
    print(f"{len(rows)} pairs of {len({r['rater'] for r in rows})} raters, k = {args.shots}, {args.split}")
    print(rule_table(rows))


if __name__ == "__main__":
    main()
