"""Lens listeners: per-rater gains of every method over the DMER model, split by how far a listener's cue
weights are from the mean listener's, with the oracles and output-map ceilings (ceiling.py) as rows.

    python experiments/personalization/lens.py --bench outputs/personalization_lens --shots 1 2 3 \
        --corpus data/synthetic/lens --store data/stores/synthetic_lens.h5

Reads `<bench>/report/k<k>/report.json` (dsaml-report's per-rater gains of the cross-song protocol, written by
run.py) and the corpus truth (docs/listeners.md). A rater's distance from the mean listener is
sqrt(sum over cues of (w - w_mean)^2) over both dimensions (w_mean = 1/3 per arousal cue, 1/2 per valence
cue; 0 for the output-map raters, who hear the mean listener); the lens raters are split at their median
distance into "near" and "far". The ceiling rows come from `ceiling.rater_scores` on the DMER checkpoints
(one per seed, the same support draws; every window, stitch=mean, so their baseline differs slightly from
dsaml-eval's strided one). Prints one markdown table per k and writes <bench>/lens.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ceiling import rater_scores  # this folder's ceiling.py

from dsaml.data.synth import load_truth
from dsaml.reporting import NOT_WORSE_MARGIN, markdown
from dsaml.training.runs import best_checkpoint

CROSS = "pdmer_cross_song"
GROUPS = ("all", "output-map", "lens near", "lens far")


def distances(truth: dict) -> dict[str, float]:
    """{rater: distance of its cue weights from the mean listener's} (0 for raters without cue weights)."""
    out = {}
    for rater, info in truth["raters"].items():
        weights = info.get("cue_weights")
        if weights is None:
            out[rater] = 0.0
            continue
        squares = [(w - 1 / len(ws)) ** 2 for ws in weights.values() for w in ws.values()]
        out[rater] = float(np.sqrt(sum(squares)))
    return out


def groups_of(truth: dict) -> dict[str, str]:
    """{rater: "output-map" | "lens near" | "lens far"} (lens raters split at their median distance)."""
    dist = distances(truth)
    lens = [d for r, d in dist.items() if truth["raters"][r]["kind"] == "lens"]
    median = float(np.median(lens)) if lens else 0.0
    return {
        r: "output-map"
        if truth["raters"][r]["kind"] != "lens"
        else ("lens near" if d <= median else "lens far")
        for r, d in dist.items()
    }


def row(name: str, gains: dict[str, float], groups: dict[str, str]) -> list[str]:
    """Mean gain per group (n), share of raters not worse by more than NOT_WORSE_MARGIN, worst."""
    cells = [name]
    for group in GROUPS:
        values = [g for r, g in gains.items() if group == "all" or groups.get(r) == group]
        cells.append(f"{np.mean(values):+.3f} ({len(values)})" if values else "-")
    values = list(gains.values())
    cells.append(f"{np.mean([v > -NOT_WORSE_MARGIN for v in values]):.0%}")
    cells.append(f"{min(values):+.3f}")
    return cells


def lens_tables(bench: Path, shots: list[int], corpus: str, store: str, seeds: list[int]) -> str:
    """The markdown tables (one per k) of every cross-song condition and the ceiling rows."""
    truth = load_truth(corpus)
    groups = groups_of(truth)
    checkpoints = [str(best_checkpoint(bench / "train" / f"seed_{s}" / "dmer")) for s in seeds]
    parts = []
    for k in shots:
        report = json.loads((bench / "report" / f"k{k}" / "report.json").read_text())
        rows = []
        for summary in report["gains"]:
            if summary["protocol"] == CROSS:
                rows.append(
                    row(summary["condition"], report["per_rater_gains"][summary["condition"]], groups)
                )
        runs = [
            rater_scores(c, store, k, 4, s, False, truth) for c, s in zip(checkpoints, seeds, strict=True)
        ]
        for name in ("calibrate", "listener ceiling", "oracle: mean listener", "oracle: own cues"):
            gains = {
                r: float(np.mean([run[name][r] - run["none"][r] for run in runs])) for r in runs[0]["none"]
            }
            rows.append(row(f"[ceiling.py] {name}", gains, groups))
        header = ["condition (gain over DMER)", *GROUPS, "not worse", "worst"]
        parts.append(
            f"### k = {k} (cross-song, seeds {', '.join(map(str, seeds))})\n\n{markdown(header, rows)}\n"
        )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", required=True, help="run.py's --out folder")
    parser.add_argument("--corpus", required=True, help="the lens corpus (dsaml-synth synth=lens)")
    parser.add_argument("--store", required=True, help="its feature store")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    text = lens_tables(Path(args.bench), args.shots, args.corpus, args.store, args.seeds)
    (Path(args.bench) / "lens.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
