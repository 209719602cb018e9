"""How much of a listener's deviation from a model an output map can capture: cross-song calibration against
its ceiling, per rater, on the test pairs of a store.

    python experiments/personalization/ceiling.py --ckpt <dmer.ckpt> --store data/stores/synthetic_demo.h5 \
        --corpus data/synthetic/demo

For every (test song, rater) pair with `--shots` other test songs of the rater (the cross-song protocol's
pairs and support songs, `DSAMLDataModule.test_pairs`, whole songs), the model's prediction of each song
(`dsaml.meta.Predict`, every window, stitch=mean) and, per rater, the mean average score of:
- none: the model as it is;
- calibrate: the map fitted on the support songs with the checkpoint's empirical-Bayes prior (what
  `adaptation=calibrate` does), with lag 0 and with lags up to `--lag`;
- ceiling: the least-squares map fitted on the scored song itself (no prior; lag 0 and up to `--lag`): no
  method that changes only the output's gain, offset and delay per listener can do better on that song.
Printed: per-rater gains over none (mean, std, raters improved, typical raters when the corpus is a
dsaml-synth one). If the ceiling sits far above calibrate, what separates them is song-specific (the
model's error on each song and the listener's noise), which no per-listener fit from other songs recovers.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dsaml.data.datamodule import DSAMLDataModule
from dsaml.meta import Calibration, CalibrationPrior, Predict, fit_calibration
from dsaml.metrics import scores_of
from dsaml.models.checkpoint import load_network
from dsaml.reporting import rater_kinds, summarize_gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a dsaml checkpoint with a calibration prior")
    parser.add_argument("--store", required=True, help="the feature store with per-rater test curves")
    parser.add_argument("--corpus", default=None, help="a dsaml-synth corpus: gains per rater kind")
    parser.add_argument("--shots", type=int, default=1, help="support songs per pair (cross-song k)")
    parser.add_argument("--lag", type=int, default=4, help="largest delay tried, segments")
    parser.add_argument(
        "--seed", type=int, default=0, help="which other songs are the support (as dsaml-eval)"
    )
    args = parser.parse_args()

    net, _, hparams = load_network(args.ckpt)
    net.eval()
    prior = CalibrationPrior.from_dict(hparams["calibration_prior"])
    window = int(hparams.get("task", {}).get("support_segments", 60))
    data = DSAMLDataModule(args.store, task="pdmer", shots=args.shots, cross_support="song", seed=args.seed)
    predict, predicted = Predict(window), {}

    def song(song_id: str, rater: str) -> tuple[tuple, tuple]:
        """(prediction, the rater's curves) of one song, each (arousal [T], valence [T])."""
        item = data.reader.item(song_id, rater)
        if song_id not in predicted:
            predicted[song_id] = predict(net, item)
        return predicted[song_id], (torch.as_tensor(item["arousal"]), torch.as_tensor(item["valence"]))

    exact = CalibrationPrior.uniform(0)  # no pull toward identity: least squares
    maps = {  # name -> (fitted on the support songs (else on the scored song), prior, largest lag)
        "calibrate": (True, prior, 0),
        f"calibrate, lag <= {args.lag}": (True, prior, args.lag),
        "ceiling": (False, exact, 0),
        f"ceiling, lag <= {args.lag}": (False, exact, args.lag),
    }
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in ["none", *maps]}
    pairs, supports = data.test_pairs()
    for (song_id, rater), support_ids in zip(pairs, supports, strict=True):
        if not support_ids:
            continue
        scored = song(song_id, rater)
        support = [song(s, rater) for s in support_ids]
        for name in scores:
            calibration = Calibration()  # none: identity
            if name in maps:
                on_support, strength, lag = maps[name]
                fit_on = support if on_support else [scored]
                calibration = fit_calibration([p for p, _ in fit_on], [c for _, c in fit_on], strength, lag)
            arousal, valence = calibration.apply(*scored[0])
            value = scores_of(arousal, valence, *scored[1])["average"]
            scores[name].setdefault(rater, []).append(value)
    kinds = rater_kinds(args.corpus) if args.corpus else {}
    base = {rater: float(np.mean(v)) for rater, v in scores["none"].items()}
    print(f"{sum(len(v) for v in scores['none'].values())} pairs, {len(base)} raters, k = {args.shots}")
    for name in maps:
        gains = {rater: float(np.mean(v)) - base[rater] for rater, v in scores[name].items()}
        summary = summarize_gains(gains, kinds)
        typical = summary["by_kind"].get("typical", {}).get("mean")
        print(
            f"{name:22s} gain {summary['mean']:+.3f} ± {summary['ci']:.3f} (95% CI), "
            f"std {summary['std']:.3f}, improve {summary['improved']}/{summary['n']}, "
            f"worst {summary['worst']:+.3f}" + ("" if typical is None else f", typical {typical:+.3f}")
        )


if __name__ == "__main__":
    main()
