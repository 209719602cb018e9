"""Cross-song personalisation of one checkpoint on a lens corpus, in one process with every song encoded once:
each method's per-rater gain over the model, split into output-map listeners and lens listeners near/far
from the mean listener (lens.py's groups), with the oracles.

    python experiments/personalization/lens_eval.py --ckpt <dmer.ckpt> --store data/stores/synthetic_lens.h5 \
        --corpus data/synthetic/lens --shots 1 2 3 --seed 0

The pairs and support songs are the cross-song protocol's (`DSAMLDataModule.test_pairs`, whole songs, the
draw of `--seed`), untouched sliders left out as `adaptation.skip_flat` does. Why not dsaml-eval: each of its
runs encodes every support song again for every pair and method (about 7 minutes a run on the busy 2-core
machine); here each test song goes through the body once (`readout_features`-style: its windows of
`support_segments`, `windows_batch`, eval mode) and every method works on those features:
- none: the head's output; calibrate: `fit_calibration` with the checkpoint's prior on the support songs'
  outputs; listener_prior: `adapt_listener_prior` under the training raters' prior without the test rater;
  listener_prior_calibrate: listener_prior, then `fit_calibration` on its outputs; ridge: `refit_readout`
  on the support songs' read-out features; ridge_calibrate: both;
- body_ridge: a read-out from the body's output beside the head: the model's prediction f(x) plus, per
  dimension, a ridge fit of the residual y - f(x) on the body's output B(x) [T, D] (`refit_readout` shrunk
  toward w = 0, b = 0: the bias unpenalised, the strength chosen leave-one-song-out); body_ridge_calibrate:
  `fit_calibration` on body_ridge's outputs (as ridge_calibrate); calibrate_body_ridge: calibrate first, then
  the body ridge fitted to the calibrated prediction's residual;
- head: the head-only inner loop (`adapt` over the head on the cached body features, the checkpoint's
  `--head` steps and learning rate, as `adapt_head`); maml: the whole network's inner loop with the same
  steps and learning rate (first order, the paper's), the held-out song encoded by the adapted network;
- auto: `select`'s choice replayed on the cached features (dsaml's `select` re-encodes every song for every
  fold and candidate: far too slow here): none and `--auto-methods` (calibrate, listener_prior) scored
  leave-one-song-out on the support songs (k >= 2), none and `--auto-single` on `select`'s contiguous
  blocks of the song with k = 1 (fitted on the rest of the song), chosen by dsaml's `choose` (`--auto-rule`,
  margin 0); the row is the chosen method's;
- the oracles of ceiling.py (the listener's noiseless curve from its own cues, and from the mean listener).
With `--baseline <dmer.ckpt>` (a meta-trained `--ckpt`, e.g. PDMER with task.inner_loop=readout) every gain is
paired against the DMER model's own predictions (the rows: DMER + each `--baseline-methods`, then
`--label` + none and + each `--methods`, each model with its own calibration prior); `--methods` narrows the
methods run (body_ridge, head and auto cost most).
Every song is predicted from non-overlapping windows (the last one ending at the song's end), the same way
for every method, not with dsaml-eval's strided, stitched windows: absolute scores differ slightly from
dsaml-eval's, gains are paired on the same predictions.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from ceiling import oracle_curves  # this folder's ceiling.py
from lens import GROUPS, groups_of  # this folder's lens.py

from dsaml.data.batch import windows_batch
from dsaml.data.datamodule import DSAMLDataModule
from dsaml.data.synth import load_truth
from dsaml.inference import window_starts
from dsaml.losses import dsaml_loss
from dsaml.meta import (
    AdaptationConfig,
    CalibrationPrior,
    adapt,
    fit_calibration,
    moving,
)
from dsaml.meta.listener_prior import (
    LAGS,
    SMOOTH,
    adapt_listener_prior,
    design,
    fit_listener_readout,
)
from dsaml.meta.readout import readout_input, refit_readout
from dsaml.meta.selection import block_edges, choose, tabulate
from dsaml.metrics import scores_of
from dsaml.models.checkpoint import load_network
from dsaml.reporting import NOT_WORSE_MARGIN, markdown
from dsaml.training.evaluation import training_rater_readouts

METHODS = (
    "calibrate",
    "listener_prior",
    "listener_prior_calibrate",
    "ridge",
    "ridge_calibrate",
    "body_ridge",
    "body_ridge_calibrate",
    "calibrate_body_ridge",
    "head",
    "maml",
    "auto",
)

REPLAYED = ("calibrate", "listener_prior")  # the candidates auto's replay can score (`Model.auto_choice`)


class Song:
    """One test song encoded once: per segment the body's output `encoded` [T, D] and the read-out input z
    [T, d], from its non-overlapping windows."""

    def __init__(self, net, item: dict, window: int) -> None:
        batch = windows_batch(item, window)
        n = len(item["arousal"])
        with torch.no_grad():
            encoded = net.body(batch["logmel"], batch.get("global"), return_diagonal=False)["encoded"]
        starts = window_starts(n, window, window) if n > window else [0]  # as windows_batch
        index = torch.zeros(n, 2, dtype=torch.long)  # segment -> (window, position)
        for w, start in enumerate(starts):
            size = min(n, window)
            index[start : start + size, 0] = w
            index[start : start + size, 1] = torch.arange(size)
        self.encoded_windows = encoded
        self.index = index

    def per_segment(self, windows: torch.Tensor) -> torch.Tensor:
        """[n_windows, W, ...] -> [T, ...] (a segment in two windows takes the later one)."""
        return windows[self.index[:, 0], self.index[:, 1]]

    def body_features(self) -> torch.Tensor:
        """The body's output per segment [T, D], float64."""
        return self.per_segment(self.encoded_windows).double()


def body_residual_readout(
    fit_on: list[str], score_on: str, base: dict[str, tuple], songs: dict[str, Song], curves
) -> tuple[dict[str, tuple], tuple[float, float]]:
    """({song: (arousal [T], valence [T])}, the strengths chosen): the prediction `base[song]` plus the ridge
    read-out of the body's output fitted to the residual curves(s) - base[s] on the songs `fit_on` (shrunk
    toward 0)."""
    stacked = {s: torch.stack(base[s], 1).double() for s in (*fit_on, score_on)}
    groups = [(songs[s].body_features(), torch.stack(curves(s), 1).double() - stacked[s]) for s in fit_on]
    dim = groups[0][0].shape[1]
    readout = refit_readout(
        groups, torch.zeros(2, dim, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    )
    predicted = {
        s: tuple((stacked[s] + songs[s].body_features() @ readout.weight.T + readout.bias).float().T)
        for s in (*fit_on, score_on)
    }
    return predicted, readout.strengths


def head_outputs(net, head, song: Song) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = net.emotions(song.encoded_windows, head=head)
    return song.per_segment(out["arousal"]), song.per_segment(out["valence"])


def readout_inputs(net, song: Song) -> torch.Tensor:
    with torch.no_grad():
        z = readout_input(net.head, song.encoded_windows)
    return song.per_segment(z).double()


class Model:
    """One checkpoint: its network (eval mode), calibration prior, window and every song encoded once."""

    def __init__(self, path: str) -> None:
        self.net, _, hparams = load_network(path)
        self.net.eval()
        self.task = hparams["task"]
        self.window = int(self.task.get("support_segments", 60))
        self.prior = CalibrationPrior.from_dict(hparams["calibration_prior"])
        self.songs: dict[str, Song] = {}
        self._priors: dict[str, object] = {}
        self._readouts = None
        self.auto_rule = AdaptationConfig().auto_rule
        self.auto_start = AdaptationConfig().auto_start
        self._rows: dict[tuple[str, int], torch.Tensor] = {}

    def encode(self, items: dict[str, dict]) -> None:
        for s, item in items.items():
            if s not in self.songs:
                self.songs[s] = Song(self.net, item, self.window)

    def predictions(
        self, fit_on: list[str], score_on: str, curves, methods: tuple[str, ...]
    ) -> tuple[dict[str, tuple], tuple]:
        """none and the closed-form `methods` (of METHODS but head / auto) fitted on `fit_on`, predicting
        `score_on`; body_ridge's strengths (None when not run)."""
        net, songs, prior = self.net, self.songs, self.prior
        plain = {s: head_outputs(net, None, songs[s]) for s in (*fit_on, score_on)}
        out = {"none": plain[score_on]}
        targets = [curves(s) for s in fit_on]
        if "calibrate" in methods:
            out["calibrate"] = fit_calibration([plain[s] for s in fit_on], targets, prior, 0).apply(
                *plain[score_on]
            )
        if {"ridge", "ridge_calibrate"} & set(methods):
            head = net.head
            readout = refit_readout(
                [(readout_inputs(net, songs[s]), torch.stack(curves(s), 1).double()) for s in fit_on],
                head.out.weight.detach(),
                head.out.bias.detach(),
            )
            ridge_pred = {
                s: tuple((readout_inputs(net, songs[s]) @ readout.weight.T + readout.bias).float().T)
                for s in (*fit_on, score_on)
            }
            out["ridge"] = ridge_pred[score_on]
            cal = fit_calibration([ridge_pred[s] for s in fit_on], targets, prior, 0)
            out["ridge_calibrate"] = cal.apply(*ridge_pred[score_on])
        strengths = None
        if {"body_ridge", "body_ridge_calibrate"} & set(methods):
            body_pred, strengths = body_residual_readout(fit_on, score_on, plain, songs, curves)
            out["body_ridge"] = body_pred[score_on]
            cal = fit_calibration([body_pred[s] for s in fit_on], targets, prior, 0)
            out["body_ridge_calibrate"] = cal.apply(*body_pred[score_on])
        if "calibrate_body_ridge" in methods:
            cal = fit_calibration([plain[s] for s in fit_on], targets, prior, 0)
            calibrated = {s: cal.apply(*plain[s]) for s in (*fit_on, score_on)}
            out["calibrate_body_ridge"] = body_residual_readout(fit_on, score_on, calibrated, songs, curves)[
                0
            ][score_on]
        return out, strengths

    def listener_prior_without(self, rater: str, reader) -> object:
        """The listener prior of the store's training raters but `rater` (for whom it is a new listener),
        pooled from every training rater's read-out fitted once; also set as the network's own
        (``net.listener_prior``)."""
        if self._readouts is None:
            self._readouts = training_rater_readouts(self.net, reader, self.window)
        if rater not in self._priors:
            self._priors[rater] = self._readouts.prior(without={rater})
        self.net.listener_prior = self._priors[rater]
        return self._priors[rater]

    def listener_adapted(
        self, support: list[str], items: dict, score_on: str, reader, rater: str, calibrated: bool = False
    ) -> tuple:
        """listener_prior: the read-out fitted on the support songs under `listener_prior_without(rater)`
        -> the prediction of `score_on`; `calibrated`: then `fit_calibration` (the checkpoint's prior) of
        the read-out's predictions of the support songs to their curves, applied
        (listener_prior_calibrate)."""
        prior = self.listener_prior_without(rater, reader)
        batches = [windows_batch(items[s], self.window) for s in support]
        adapted = adapt_listener_prior(self.net, batches, prior)
        predicted = head_outputs(self.net, adapted.head, self.songs[score_on])
        if not calibrated:
            return predicted
        fitted = [head_outputs(self.net, adapted.head, self.songs[s]) for s in support]
        targets = [
            (torch.as_tensor(items[s]["arousal"]), torch.as_tensor(items[s]["valence"])) for s in support
        ]
        return fit_calibration(fitted, targets, self.prior, 0).apply(*predicted)

    def rows(self, song: str, dim: int) -> torch.Tensor:
        """listener_prior's design rows of one song and dimension [T, P] (`design` on its windows, per
        segment), float64, cached."""
        key = (song, dim)
        if key not in self._rows:
            windows = self.songs[song].encoded_windows
            with torch.no_grad():
                prediction = self.net.head(windows)[..., dim].double()
            x = design(prediction, windows.double(), LAGS, SMOOTH)
            self._rows[key] = self.songs[song].per_segment(x)
        return self._rows[key]

    def auto_choice(self, support: list[str], curves, candidates: tuple[str, ...], reader, rater: str) -> str:
        """auto's choice among none and `candidates`, replayed on the cached features (module docstring)."""
        plain = {s: head_outputs(self.net, None, self.songs[s]) for s in support}
        if len(support) >= 2:
            splits = [([(s, None) for s in support if s != held], (held, None)) for held in support]
        else:
            song = support[0]
            n = len(plain[song][0])
            edges = block_edges(n)
            if edges is None:
                return "none"
            k = len(edges) - 1
            splits = [
                (
                    [(song, torch.cat([torch.arange(edges[i]), torch.arange(edges[i + 1], n)]))],
                    (song, torch.arange(edges[i], edges[i + 1])),
                )
                for i in range(k)
            ]

        def cut(x, index):
            return x if index is None else x[index]

        def take(pair, index):
            return tuple(cut(x, index) for x in pair)

        per_fold = []
        for fit_on, (held, where) in splits:
            target = take(curves(held), where)
            predicted = {"none": take(plain[held], where)}
            if "calibrate" in candidates:
                map_ = fit_calibration(
                    [take(plain[s], i) for s, i in fit_on],
                    [take(curves(s), i) for s, i in fit_on],
                    self.prior,
                    0,
                )
                predicted["calibrate"] = map_.apply(*predicted["none"])
            if "listener_prior" in candidates:
                prior = self.listener_prior_without(rater, reader)
                outputs = []
                for d in (0, 1):
                    groups = [(cut(self.rows(s, d), i), cut(curves(s)[d].double(), i)) for s, i in fit_on]
                    w = fit_listener_readout(prior, groups, d)
                    outputs.append((cut(self.rows(held, d), where) @ w).float())
                predicted["listener_prior"] = tuple(outputs)
            per_fold.append({(name, 0): scores_of(*p, *target)["average"] for name, p in predicted.items()})
        return choose(tabulate(per_fold), 0.0, self.auto_rule, self.auto_start)["method"]

    def maml_adapted(self, support: list[str], items: dict, score_on: str, config) -> tuple:
        """maml: the whole network's inner loop (`adapt`, the checkpoint's `--head` steps and learning rate)
        on the support windows -> the adapted network's prediction of `score_on` (encoded anew)."""
        batches = [windows_batch(items[s], self.window) for s in support]
        adapted = adapt(self.net, batches, config.steps, lr=config.lr, first_order=True).net.eval()
        return head_outputs(adapted, None, Song(adapted, items[score_on], self.window))

    def head_adapted(self, support: list[str], items: dict, score_on: str, config) -> tuple:
        """The head-only inner loop on the cached body features of the support windows -> the prediction."""
        net = self.net
        features = [
            {"encoded": self.songs[s].encoded_windows, **windows_batch(items[s], self.window)}
            for s in support
        ]

        def head_loss(learner, batch):
            out = net.emotions(batch["encoded"], head=learner)
            return dsaml_loss(out, batch["arousal"], batch["valence"], regularize=False)

        adapted = adapt(net.head, features, config.steps, lr=config.lr, loss_fn=head_loss).learner.module
        return head_outputs(net, adapted.eval(), self.songs[score_on])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--head",
        type=float,
        nargs=2,
        default=[5, 0.02],
        metavar=("STEPS", "LR"),
        help="head's inner loop (default: conf/demo.yaml's PDMER task, as run.py tests the DMER model with)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    defaults, replayed = AdaptationConfig(), REPLAYED
    for flag, key, songs in (("--auto-methods", "auto_methods", "2+"), ("--auto-single", "auto_single", "1")):
        parser.add_argument(
            flag,
            nargs="+",
            default=list(getattr(defaults, key)),
            choices=replayed,
            help=f"auto's candidates with {songs} song(s) (default: dsaml's)",
        )
    parser.add_argument(
        "--baseline",
        default=None,
        help="the DMER checkpoint: every gain is paired against its predictions, with its own "
        "--baseline-methods as rows (DMER + method) and --ckpt's rows named --label + method",
    )
    parser.add_argument("--baseline-methods", nargs="+", default=["calibrate", "ridge"], choices=METHODS)
    parser.add_argument("--auto-rule", default=defaults.auto_rule, choices=("best", "simplest"))
    parser.add_argument("--auto-start", default=defaults.auto_start, choices=("none", *replayed))
    parser.add_argument(
        "--pairs-per-rater",
        type=int,
        default=None,
        help="score only each rater's first N pairs of the draw (maml re-encodes the held-out song for every "
        "pair: the cheap way to cover every rater)",
    )
    parser.add_argument("--label", default="PDMER", help="--ckpt's name in the rows with --baseline")
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    model = Model(args.ckpt)
    baseline = Model(args.baseline) if args.baseline else None
    for m in (model, baseline):
        if m is not None:
            m.auto_rule = args.auto_rule
            m.auto_start = args.auto_start
    config = AdaptationConfig(method="head", steps=int(args.head[0]), lr=args.head[1]).resolve(model.task)
    truth = load_truth(args.corpus)
    groups = groups_of(truth)
    parts = [f"checkpoint {args.ckpt}, seed {args.seed}, head: {config.steps} steps x lr {config.lr}"]
    if baseline is not None:
        parts[0] += f"; gains over {args.baseline}"
    # (row name, model, method): the row's predictions; "none" of the first is the reference
    reference = (baseline or model, "none")
    rows_of = [("none" if baseline is None else f"{args.label} + none", model, "none")]
    if baseline is not None:
        rows_of += [(f"DMER + {m}", baseline, m) for m in args.baseline_methods]
    rows_of += [(m if baseline is None else f"{args.label} + {m}", model, m) for m in args.methods]
    for k in args.shots:
        data = DSAMLDataModule(args.store, task="pdmer", shots=k, cross_support="song", seed=args.seed)
        pairs, supports = data.test_pairs()
        scores: dict[str, dict[str, list[float]]] = {}
        chosen: dict[str, dict[str, int]] = {}  # listener group ("all" too) -> method -> pairs auto chose it
        strengths: dict[str, int] = {}  # body_ridge's strength per dimension (in songs) -> pairs
        for (song_id, rater), support_ids in zip(pairs, supports, strict=True):
            items = {s: data.reader.item(s, rater) for s in (song_id, *support_ids)}
            if not moving([items[song_id]]):
                continue
            support = [s for s in support_ids if moving([items[s]])]
            if not support or len(scores.get("reference", {}).get(rater, [])) == (args.pairs_per_rater or -1):
                continue
            for m in {model, reference[0]}:
                m.encode(items)
            target = (torch.as_tensor(items[song_id]["arousal"]), torch.as_tensor(items[song_id]["valence"]))

            def curves(s: str, items: dict = items) -> tuple[torch.Tensor, torch.Tensor]:
                return torch.as_tensor(items[s]["arousal"]), torch.as_tensor(items[s]["valence"])

            results = {}
            for m, methods in ((model, tuple(args.methods)), (baseline, tuple(args.baseline_methods))):
                if m is None:
                    continue
                result, body_strengths = m.predictions(support, song_id, curves, methods)
                if body_strengths is not None and m is model:
                    for dimension, strength in zip(("arousal", "valence"), body_strengths, strict=True):
                        key = f"{dimension} {strength:g}"
                        strengths[key] = strengths.get(key, 0) + 1
                if "listener_prior" in methods:
                    result["listener_prior"] = m.listener_adapted(support, items, song_id, data.reader, rater)
                if "listener_prior_calibrate" in methods:
                    result["listener_prior_calibrate"] = m.listener_adapted(
                        support, items, song_id, data.reader, rater, calibrated=True
                    )
                if "head" in methods:
                    result["head"] = m.head_adapted(support, items, song_id, config)
                if "maml" in methods:
                    result["maml"] = m.maml_adapted(support, items, song_id, config)
                if "auto" in methods:
                    candidates = tuple(args.auto_methods if len(support) >= 2 else args.auto_single)
                    pick = m.auto_choice(support, curves, candidates, data.reader, rater)
                    if m is model:
                        for group in ("all", groups.get(rater)):
                            picks = chosen.setdefault(group, {})
                            picks[pick] = picks.get(pick, 0) + 1
                    if pick == "listener_prior" and pick not in result:
                        result[pick] = m.listener_adapted(support, items, song_id, data.reader, rater)
                    if pick not in result:
                        result[pick] = m.predictions(support, song_id, curves, (pick,))[0][pick]
                    result["auto"] = result[pick]
                results[id(m)] = result
            named = {name: results[id(m)][method] for name, m, method in rows_of}
            named["reference"] = results[id(reference[0])]["none"]
            for name, own in (("oracle: own cues", True), ("oracle: mean listener", False)):
                named[name] = oracle_curves(truth, str(song_id), rater, len(target[0]), own)
            for name, (a, v) in named.items():
                scores.setdefault(name, {}).setdefault(rater, []).append(scores_of(a, v, *target)["average"])
        base = {r: float(np.mean(v)) for r, v in scores["reference"].items()}
        rows = []
        for name in (*(name for name, _, _ in rows_of), "oracle: mean listener", "oracle: own cues"):
            if baseline is None and name == "none":
                continue
            gains = {r: float(np.mean(v)) - base[r] for r, v in scores[name].items()}
            cells = [name]
            for group in GROUPS:
                values = [g for r, g in gains.items() if group == "all" or groups.get(r) == group]
                cells.append(f"{np.mean(values):+.3f} ({len(values)})" if values else "-")
            values = list(gains.values())
            cells += [f"{np.mean([v > -NOT_WORSE_MARGIN for v in values]):.0%}", f"{min(values):+.3f}"]
            rows.append(cells)
        mean_none = np.mean(list(base.values()))
        title = (
            f"### k = {k}: {len(base)} raters, {sum(len(v) for v in scores['reference'].values())} pairs; "
            f"the {'DMER model' if baseline else 'model'}'s own score {mean_none:.3f}"
        )
        if chosen:
            title += f"; auto chose {dict(sorted(chosen.pop('all').items()))}"
            by_group = "; ".join(f"{g}: {dict(sorted(chosen[g].items()))}" for g in GROUPS if g in chosen)
            title += f"\n\nauto's choices by listener kind (pairs): {by_group}"
        if strengths:
            title += f"\n\nbody_ridge's strengths (songs): {dict(sorted(strengths.items()))}"
        header = ["gain over the " + ("DMER model" if baseline else "model"), *GROUPS, "not worse", "worst"]
        parts.append(f"{title}\n\n{markdown(header, rows)}\n")
        print(parts[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(parts))


if __name__ == "__main__":
    main()
