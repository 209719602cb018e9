"""How much of a listener's deviation from a model an output map can capture: cross-song calibration against
its ceilings, per rater, on the test pairs of a store.

    python experiments/personalization/ceiling.py --ckpt <dmer.ckpt> --store data/stores/synthetic_demo.h5 \
        --corpus data/synthetic/demo
    python experiments/personalization/ceiling.py --ckpt <seed0.ckpt> <seed1.ckpt> <seed2.ckpt> \
        --seed 0 1 2 --scan --store data/stores/synthetic_demo.h5 --corpus data/synthetic/demo

For every (test song, rater) pair with `--shots` other test songs of the rater (the cross-song protocol's
pairs and support songs, `DSAMLDataModule.test_pairs`, whole songs), the model's prediction of each song
(`dsaml.meta.SlidingWindows`, every window, stitch=mean) and, per rater, the mean average score of:
- none: the model as it is;
- calibrate: the map fitted on the support songs with the checkpoint's empirical-Bayes prior (what
  `adaptation=calibrate` does), with lag 0 and with lags up to `--lag`; with `--scan` also the prior's
  tau^2 scaled by 0.25 .. 4 (offset and gain apart), printing the scaling that did best with hindsight;
- listener ceiling: one least-squares map per listener fitted with hindsight, without prior, on every test
  song of theirs pooled, the scored one included (lag 0 and up to `--lag`): what a per-listener output map
  (gain, offset, delay) could reach if it knew the listener exactly;
- song ceiling: the least-squares map fitted on the scored song itself (lag 0 and up to `--lag`): no output
  map can do better on that song.
- with a dsaml-synth `--corpus`, two oracles from its truth (no model): "oracle: own cues", the listener's
  noiseless curve (its perceived curve: for a lens listener its own cue weights applied to the song's true
  cue curves, docs/listeners.md; through its true gain, offset and lag), and "oracle: mean listener", the
  mean listener's true curve through the same transform (what a perfect model of the mean listener plus the
  listener's exact output map would reach).
Untouched sliders (a curve that never moves) are not scored and not fitted on, as the adaptation methods leave
them out (`adaptation.skip_flat`). Printed: per-rater gains over none (mean ± 95% interval, std, raters
improved, raters not worse by more than 0.01, worst, typical raters when the corpus is a dsaml-synth one);
with several checkpoints (one per seed, `--seed` giving each one's support draw) a rater's gain is the mean
over seeds, as in the benchmark.
What separates the listener ceiling from the song ceiling is specific to each song (the model's error on it
and the listener's noise), which no per-listener map recovers; what separates calibrate from the listener
ceiling is what k support songs cannot tell about the listener.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np
import torch
from torch import Tensor

from dsaml.data.datamodule import DSAMLDataModule
from dsaml.data.synth import load_truth
from dsaml.data.synth.raters import Rater, Transform
from dsaml.meta import Calibration, CalibrationPrior, SlidingWindows, fit_calibration, moving
from dsaml.metrics import scores_of
from dsaml.models.checkpoint import load_network
from dsaml.reporting import gain_rows, markdown, rater_kinds, summarize_gains

SCAN_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # --scan: multiples of the estimated tau^2 (offset, gain)


def oracle_curves(truth: dict, song_id: str, rater: str, n: int, own: bool) -> tuple[Tensor, Tensor]:
    """The rater's noiseless curves (arousal [n], valence [n]) from a dsaml-synth truth: its perceived curve
    (`own`: its own cue mix; else the mean listener's) through its true gain, offset and lag, clipped."""
    song, info = truth["songs"][song_id], truth["raters"][rater]
    perceived = Rater(**{k: info[k] for k in ("rater_id", "kind", "activity", "flat_probability")},
                      arousal=Transform(**info["arousal"]), valence=Transform(**info["valence"]),
                      cue_weights=info.get("cue_weights") if own else None)  # fmt: skip
    curves = perceived.perceive(song["arousal"], song["valence"], song.get("cues"))
    out = []
    for dim, curve in zip(("arousal", "valence"), curves, strict=True):
        t = info[dim]
        idx = truth["label_start_index"] + np.arange(n) - t["lag"]
        out.append(torch.as_tensor(np.clip(t["gain"] * curve[idx] + t["offset"], -1, 1), dtype=torch.float32))
    return out[0], out[1]


def rater_scores(
    ckpt: str, store: str, shots: int, lag: int, seed: int, scan: bool, truth: dict | None = None
) -> dict[str, dict[str, float]]:
    """{map name: {rater: mean average score over their test pairs}} of one checkpoint, with the support
    songs dsaml-eval draws for `seed`; with `scan`, also calibrate under the prior's tau^2 scaled by every
    (offset, gain) pair of SCAN_FACTORS (names "scan <offset factor> <gain factor>"); with a dsaml-synth
    `truth`, the two oracles ("oracle: own cues", "oracle: mean listener", `oracle_curves`)."""
    net, _, hparams = load_network(ckpt)
    net.eval()
    prior = CalibrationPrior.from_dict(hparams["calibration_prior"])
    window = int(hparams.get("task", {}).get("support_segments", 60))
    data = DSAMLDataModule(store, task="pdmer", shots=shots, cross_support="song", seed=seed)
    predict, predicted = SlidingWindows(window), {}

    def moves(fit: tuple[tuple, tuple]) -> bool:
        """Whether the rater's curves of a song both move (`dsaml.meta.moving`)."""
        return bool(moving([dict(zip(("arousal", "valence"), fit[1], strict=True))]))

    def song(song_id: str, rater: str) -> tuple[tuple, tuple]:
        """(prediction, the rater's curves) of one song, each (arousal [T], valence [T])."""
        item = data.reader.item(song_id, rater)
        if song_id not in predicted:
            predicted[song_id] = predict(net, item)
        return predicted[song_id], (torch.as_tensor(item["arousal"]), torch.as_tensor(item["valence"]))

    # name -> (fitted on: "support" | "listener" (all their test songs) | "scored", prior, largest lag);
    # prior None: pooled least squares
    maps = {
        "calibrate": ("support", prior, 0),
        "calibrate, lag": ("support", prior, lag),
        "listener ceiling": ("listener", None, 0),
        "listener ceiling, lag": ("listener", None, lag),
        "song ceiling": ("scored", None, 0),
        "song ceiling, lag": ("scored", None, lag),
    }
    if scan:
        for offset_factor, gain_factor in itertools.product(SCAN_FACTORS, SCAN_FACTORS):
            scaled = dataclasses.replace(
                prior,
                offset_tau2=tuple(offset_factor * t for t in prior.offset_tau2),
                gain_tau2=tuple(gain_factor * t for t in prior.gain_tau2),
            )
            maps[f"scan {offset_factor:g} {gain_factor:g}"] = ("support", scaled, 0)
    oracles = {"oracle: own cues": True, "oracle: mean listener": False} if truth else {}
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in ["none", *maps, *oracles]}
    pairs, supports = data.test_pairs()
    for (song_id, rater), support_ids in zip(pairs, supports, strict=True):
        if not support_ids:
            continue
        scored = song(song_id, rater)
        if not moves(scored):  # an untouched slider: nothing to score a curve against
            continue
        listener = sorted(data.reader.store.songs_of_rater(rater, "test"))
        fit_sets = {  # untouched sliders left out, as the adaptation methods do (skip_flat)
            "support": [fit for fit in (song(s, rater) for s in support_ids) if moves(fit)],
            "listener": [fit for fit in (song(s, rater) for s in listener) if moves(fit)],
            "scored": [scored],
        }
        for name, own in oracles.items():
            curves = oracle_curves(truth, str(song_id), rater, len(scored[1][0]), own)
            scores[name].setdefault(rater, []).append(scores_of(*curves, *scored[1])["average"])
        for name in ("none", *maps):
            calibration = Calibration()  # none (or nothing to fit on): identity
            if name in maps and fit_sets[maps[name][0]]:
                fit_name, strength, max_lag = maps[name]
                fit_on = fit_sets[fit_name]
                calibration = fit_calibration(
                    [p for p, _ in fit_on], [c for _, c in fit_on], strength, max_lag
                )
            arousal, valence = calibration.apply(*scored[0])
            scores[name].setdefault(rater, []).append(scores_of(arousal, valence, *scored[1])["average"])
    return {name: {rater: float(np.mean(v)) for rater, v in per.items()} for name, per in scores.items()}


def ceiling_table(
    checkpoints: list[str],
    seeds: list[int],
    store: str,
    corpus: str | None,
    shots: int,
    lag: int = 4,
    scan: bool = False,
) -> str:
    """The markdown table of every map's per-rater gain over the unadapted model (`dsaml.reporting`'s gain
    columns; a rater's gain is its mean over the checkpoints, one per seed, each with its seed's support)."""
    truth = load_truth(corpus) if corpus else None
    runs = [
        rater_scores(c, store, shots, lag, s, scan, truth) for c, s in zip(checkpoints, seeds, strict=True)
    ]
    kinds = rater_kinds(corpus) if corpus else {}
    base = runs[0]["none"]
    gains = {
        name: {r: float(np.mean([run[name][r] - run["none"][r] for run in runs])) for r in base}
        for name in runs[0]
        if name != "none"
    }
    scanned = [name for name in gains if name.startswith("scan ")]
    if scanned:
        best = max(scanned, key=lambda name: np.mean(list(gains[name].values())))
        factors = best.split()[1:]
        gains[f"calibrate, prior tau^2 x{factors[0]} / x{factors[1]} (best with hindsight)"] = gains[best]
    summaries = [
        {"condition": name, **summarize_gains(per_rater, kinds)}
        for name, per_rater in gains.items()
        if name not in scanned
    ]
    title = (
        f"{len(base)} raters, k = {shots}, {len(runs)} checkpoint(s) (seeds {', '.join(map(str, seeds))}); "
        f"lag: delays up to {lag} segments"
    )
    return title + "\n\n" + markdown(*gain_rows(summaries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="dsaml checkpoints with a calibration prior")
    parser.add_argument("--store", required=True, help="the feature store with per-rater test curves")
    parser.add_argument(
        "--corpus", default=None, help="a dsaml-synth corpus: gains per rater kind, and the oracles"
    )
    parser.add_argument("--shots", type=int, default=1, help="support songs per pair (cross-song k)")
    parser.add_argument("--lag", type=int, default=4, help="largest delay tried, segments")
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="per checkpoint: which other songs are the support"
    )
    parser.add_argument(
        "--scan",
        action="store_true",
        help="also calibrate with the prior's tau^2 scaled (x0.25 .. x4, offset and gain apart) and print "
        "the scaling that did best with hindsight: how far the estimated prior is from the best shrinkage",
    )
    args = parser.parse_args()
    if len(args.seed) != len(args.ckpt):
        parser.error(f"--seed: give one per --ckpt ({len(args.ckpt)}), got {len(args.seed)}")
    print(ceiling_table(args.ckpt, args.seed, args.store, args.corpus, args.shots, args.lag, args.scan))


if __name__ == "__main__":
    main()
