"""Adaptation methods (the `adaptation:` config group, conf/adaptation/) and safe automatic selection.

A *sequence* (`dsaml.data.batch.SongSequence`) is one song (or clip) of a listener: ``logmel``
[T, 51, 128], ``global`` [1 or T, D_g] or None, ``arousal`` / ``valence`` [T]. Methods (`METHODS`):

- none: the network as it is;
- maml: the inner loop over the whole network (`adapt`; the paper's);
- ridge: the head's final read-out refitted in closed form on body features (ridge regression shrunk toward
  the trained read-out, strength chosen leave-one-song-out; `dsaml.meta.readout`, docs/listeners.md);
- listener_prior: a read-out of the network's (lagged) prediction and body features, fitted in closed form
  under the prior over listeners learned from the training raters (`dsaml.meta.listener_prior`; the prior
  is stored in the checkpoint as ``net.listener_prior``);
- head: the inner loop over the head only, on body features computed once (`adapt_head`, ANIL);
- calibrate: a per-dimension affine map (gain, offset, optional lag) of the network's output, fitted in
  closed form on the support songs and shrunk toward identity (`dsaml.meta.calibration`);
- ridge_calibrate / head_calibrate / maml_calibrate: the read-out or inner loop, then the map fitted on the
  adapted network's outputs;
- auto: choose among the above (and among step counts) on the listener's own songs: with >= 2 songs
  among `auto_methods`, by leave-one-song-out; with one song among `auto_single`, by blocked k-fold
  inside the song (contiguous blocks, each held out in turn); default for both: calibrate and
  listener_prior (the latter only when the network holds a listener prior); `auto_start` (listener_prior,
  else the unadapted network) unless a candidate validates better on average by more than `margin` and on
  most folds (`select`). Why the inner loops are not default candidates, least of all with one song: a
  listener's deviation from the model that is specific to one song is shared by all of its blocks, so no
  split of one song measures what transfers to their other songs, and the candidates that fit the song best
  (the inner loops) are picked and transfer worse (docs/method.md, "Choosing a method"); calibrate and
  listener_prior fit nothing free on the listener's songs: their shrinkage is estimated from the training
  raters, the between-song evidence there is.

`personalize_net` runs one method on support sequences and returns a `Personalized` (network + map), used
identically by the test protocols (`dsaml.training.evaluation`) and by `dsaml-personalize`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from dsaml.config import (
    Config,
    ConfigError,
    choice,
    choice_list,
    flag,
    from_mapping,
    integer,
    integer_list,
    number,
)
from dsaml.data.batch import SongSequence, windows_batch
from dsaml.inference import predict_song
from dsaml.meta.adaptation import adapt, adapt_head
from dsaml.meta.calibration import DIMENSIONS, FLAT, Calibration, CalibrationPrior, fit_calibration
from dsaml.meta.listener_prior import ListenerPrior, adapt_listener_prior
from dsaml.meta.readout import adapt_readout

METHODS = (
    "none",
    "calibrate",
    "ridge",
    "ridge_calibrate",
    "listener_prior",
    "head",
    "head_calibrate",
    "maml",
    "maml_calibrate",
)
ITERATIVE = ("maml", "head")  # learners with an inner loop of `steps` SGD steps (ridge is closed-form)
CLOSED_FORM = ("ridge", "listener_prior")  # learners fitted in closed form
AUTO = "auto"
SELECTION_RULES = ("best", "simplest")  # how `auto` chooses among validated candidates (`choose`)
# the paper's inner loop: PDMER's task.inner_steps / inner_lr / first_order defaults, and what adapts a model
# whose task has no inner loop (a DMER checkpoint)
INNER_LOOP_DEFAULTS: dict[str, Any] = {"steps": 16, "lr": 5e-3, "first_order": True}

Sequence_ = SongSequence


@dataclass(frozen=True)
class AdaptationConfig(Config):
    """The `adaptation:` group (see conf/adaptation/*.yaml for each key), validated on construction.

    Args:
        method (str): one of METHODS, or "auto".
        steps (int or None): inner SGD steps of maml and head (>= 0). None: the checkpoint's task
            (eval_inner_steps or inner_steps; a DMER task has no inner loop: INNER_LOOP_DEFAULTS), see
            `resolve`.
        lr (float or None): inner learning rate (> 0); None: the task's inner_lr.
        first_order (bool or None): first-order inner loop; None: the task's first_order.
        lag (int): calibrate: the largest shift in segments tried (0: none).
        prior (str or float): calibrate: the prior strength toward identity in songs, "auto" (estimated from
            the training raters, see `estimate_prior`; stored in checkpoints) or a number >= 0 (0: plain
            least squares).
        auto_methods (tuple[str, ...]): what `auto` tries besides none when the listener gives two or more
            songs.
        auto_single (tuple[str, ...]): the same with one song.
        auto_steps (tuple[int, ...] or None): step counts `auto` tries for head/maml (None: steps // 2,
            steps, 2 * steps; see `grid`).
        auto_rule (str): how `auto` chooses among the validated candidates ("best" | "simplest", `choose`).
        auto_start (str): the method `auto` keeps unless a candidate validates better than it (`choose`);
            none when it was not scored (listener_prior with a checkpoint that holds no listener prior).
        margin (float): how much better (average score) a candidate must validate than the one it
            replaces (first: `auto_start`) to be chosen.
        skip_flat (bool): leave out support songs whose arousal or valence never moves (see `moving`);
            False: adapt on them, as the original does.

    Raises:
        ConfigError: a value out of range or of the wrong kind, naming the key.
    """

    SECTION = "adaptation"

    method: str = choice("maml", METHODS + (AUTO,))
    steps: int | None = integer(None, low=0, optional=True)
    lr: float | None = number(None, low=0, low_open=True, optional=True)
    first_order: bool | None = flag(None, optional=True)
    lag: int = integer(0, low=0)
    prior: Any = "auto"  # auto or a number >= 0: checked in __post_init__ (two kinds of value)
    auto_methods: tuple[str, ...] = choice_list(("calibrate", "listener_prior"), METHODS[1:])
    auto_single: tuple[str, ...] = choice_list(("calibrate", "listener_prior"), METHODS[1:])
    auto_steps: tuple[int, ...] | None = integer_list(None, low=1, optional=True, min_items=1)
    auto_rule: str = choice("simplest", SELECTION_RULES)
    auto_start: str = choice("listener_prior", METHODS)
    margin: float = number(0.0)
    skip_flat: bool = flag(True)

    def __post_init__(self) -> None:
        super().__post_init__()
        number_ok = (
            isinstance(self.prior, int | float) and not isinstance(self.prior, bool) and self.prior >= 0
        )
        if self.prior != "auto" and not number_ok:
            raise ConfigError(
                f"adaptation.prior={self.prior!r}: expected auto (from the training raters) or a number >= 0 "
                "(prior strength in songs)"
            )
        object.__setattr__(self, "auto_methods", tuple(self.auto_methods))
        object.__setattr__(self, "auto_single", tuple(self.auto_single))
        if self.auto_steps is not None:
            object.__setattr__(self, "auto_steps", tuple(self.auto_steps))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AdaptationConfig:
        return from_mapping(cls, values, "adaptation")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["auto_methods"] = list(self.auto_methods)
        out["auto_single"] = list(self.auto_single)
        out["auto_steps"] = None if self.auto_steps is None else list(self.auto_steps)
        return out

    @property
    def learner(self) -> str | None:
        """What the method adapts before any map: "maml", "head" (inner loops), "ridge", "listener_prior"
        (closed form) or None."""
        return next((name for name in ITERATIVE + CLOSED_FORM if self.method.startswith(name)), None)

    @property
    def calibrates(self) -> bool:
        return self.method.endswith("calibrate")

    def resolve(self, task: Mapping[str, Any] | None) -> AdaptationConfig:
        """steps / lr / first_order filled in from a task config (a checkpoint's ``hyper_parameters["task"]``
        or `TaskConfig.to_dict()`; INNER_LOOP_DEFAULTS for a task without an inner loop); ConfigError when
        one is needed and neither has it."""
        task = dict(task or {})
        defaults = {
            "steps": task.get("eval_inner_steps")
            if task.get("eval_inner_steps") is not None
            else task.get("inner_steps"),
            "lr": task.get("inner_lr"),
            "first_order": task.get("first_order", True if task else None),
        }
        if task.get("name") == "dmer" and "inner_steps" not in task:  # no inner loop: the paper's
            defaults = dict(INNER_LOOP_DEFAULTS)
        values = {k: getattr(self, k) if getattr(self, k) is not None else defaults[k] for k in defaults}
        needs = self.method == AUTO or self.learner in ITERATIVE
        missing = [k for k, v in values.items() if v is None]
        if needs and missing:
            raise ConfigError(
                f"adaptation.{missing[0]}: the checkpoint has no task config to take it from; "
                f"set adaptation.{missing[0]}=..."
            )
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def grid(self) -> tuple[int, ...]:
        """Step counts `auto` tries for the inner loops."""
        if self.auto_steps is not None:
            return tuple(sorted(set(self.auto_steps)))
        steps = int(self.steps or 1)
        return tuple(sorted({max(1, steps // 2), max(1, steps), 2 * max(1, steps)}))


def calibration_prior(config: AdaptationConfig, stored: Mapping[str, Any] | None) -> CalibrationPrior | None:
    """The calibration prior the config asks for.

    Args:
        config (AdaptationConfig): the adaptation settings (its method, auto candidates and prior).
        stored (Mapping or None): the prior stored with the checkpoint (`CalibrationPrior.to_dict`, or the
            older form of strengths in songs), or None.

    Returns:
        CalibrationPrior or None: `CalibrationPrior.uniform` of the configured number, or (prior=auto) the
        stored one; None when no method the config can run calibrates.

    Raises:
        ConfigError: prior=auto and nothing is stored.
    """
    uses = config.calibrates or (
        config.method == AUTO
        and any(m.endswith("calibrate") for m in config.auto_methods + config.auto_single)
    )
    if not uses:
        return None
    if config.prior != "auto":
        return CalibrationPrior.uniform(float(config.prior))
    if not stored:
        raise ConfigError(
            "adaptation.prior=auto: this checkpoint holds no calibration prior (estimated from the training "
            "raters by dsaml-train/dsaml-eval on a store with per-rater curves); "
            "set adaptation.prior=<songs>, "
            "e.g. 1"
        )
    return CalibrationPrior.from_dict(dict(stored))


def needed_listener_prior(net: nn.Module) -> ListenerPrior:
    """``net.listener_prior`` (set from the checkpoint), or ConfigError saying where it comes from (`auto`
    leaves listener_prior out of its candidates on such a network instead: `candidate_scores`)."""
    prior = getattr(net, "listener_prior", None)
    if prior is None:
        raise ConfigError(
            "adaptation.method=listener_prior: this model holds no listener prior (dsaml-train estimates it "
            "after each validation epoch from the training raters of a store with per-rater curves); "
            "choose another adaptation method"
        )
    return prior


# ------------------------------------------------------------------ prediction
@dataclass(frozen=True)
class SlidingWindows:
    """How whole sequences are predicted (`dsaml.inference.predict_song` with its settings bound).

    Args:
        window: segments per window (the model's training clip length, a task's support_segments).
        stitch: one of `dsaml.inference.STITCH_RULES`.
        batch_size: windows per forward.
        stride: segments between window starts.
    """

    window: int
    stitch: str = "mean"
    batch_size: int = 32
    stride: int = 1

    def __call__(self, net: nn.Module, seq: Sequence_) -> tuple[Tensor, Tensor]:
        """Eval-mode prediction of one sequence with `dsaml.inference.predict_song` (one plain forward when
        the sequence is no longer than `window`).

        Args:
            net: a `DSAMLNet` (or an adapted copy).
            seq: a `SongSequence`: ``logmel`` [T, 51, 128], ``global`` [1 or T, D_g] or None, ``arousal`` /
                ``valence`` [T] (their device is the output's).

        Returns:
            (arousal [T], valence [T]) on the labels' device.
        """
        with torch.no_grad():
            arousal, valence = predict_song(
                net,
                seq["logmel"],
                seq.get("global"),
                stride=self.stride,
                stitch=self.stitch,
                batch_size=self.batch_size,
                window=self.window,
            )
        device = torch.as_tensor(seq["arousal"]).device
        return arousal.to(device), valence.to(device)


@dataclass
class Personalized:
    """A personalised model: the (adapted) network and the output map.

    Args:
        net (nn.Module): the (adapted) network, called like a `DSAMLNet`.
        calibration (Calibration or None): the output map (None: identity).
        method (str): the method that made it (one of METHODS).
        steps (int): the inner steps it ran (0 for methods without an inner loop).
    """

    net: nn.Module
    calibration: Calibration | None = None
    method: str = "none"
    steps: int = 0

    def predict(self, predictor: SlidingWindows, seq: Sequence_) -> tuple[Tensor, Tensor]:
        """The personalised prediction of one sequence: the network's (`predictor`), then the map.

        Args:
            predictor: the sliding-window settings.
            seq: a `SongSequence` (see `SlidingWindows.__call__`).

        Returns:
            (arousal [T], valence [T]) on the labels' device.
        """
        arousal, valence = predictor(self.net, seq)
        return (arousal, valence) if self.calibration is None else self.calibration.apply(arousal, valence)


# ------------------------------------------------------------------ one method
def moving(support: Sequence[Sequence_]) -> list[Sequence_]:
    """The support sequences whose arousal and valence curves both move.

    A curve that never moves is an untouched slider: it says nothing about how the listener hears the music,
    and fitting to it flattens the output (a calibration gain of 0, a head that predicts a constant).

    Args:
        support (Sequence[SongSequence]): the listener's sequences (``arousal`` / ``valence`` [T]).

    Returns:
        list[SongSequence]: those whose arousal and valence both have (population) variance above FLAT
        (1e-4, in squared label units), in their order.
    """
    return [
        seq
        for seq in support
        if all(
            float(torch.as_tensor(seq[key], dtype=torch.float64).var(unbiased=False)) > FLAT
            for key in DIMENSIONS
        )
    ]


def _learn(
    net: nn.Module,
    learner: str | None,
    batches: Sequence[Mapping[str, Any]],
    config: AdaptationConfig,
    steps: int,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Run the inner loop `learner` ("maml" | "head" | None) for `steps` steps, or fit a read-out in closed
    form ("ridge" | "listener_prior", on the songs in `batches`) -> the adapted network."""
    if learner == "ridge":
        return adapt_readout(net, batches)
    if learner == "listener_prior":
        return adapt_listener_prior(net, batches, needed_listener_prior(net))
    if learner is None or steps == 0:
        return net
    run = adapt if learner == "maml" else adapt_head
    adaptation = run(net, batches, steps, lr=config.lr, first_order=config.first_order, on_step=on_step)
    return adaptation.net.eval()


def _fit_map(
    net: nn.Module,
    support: Sequence[Sequence_],
    predictor: SlidingWindows,
    prior: CalibrationPrior | None,
    lag: int,
) -> Calibration:
    if prior is None:
        raise ValueError("calibration needs a prior (see `calibration_prior`)")
    predictions = [predictor(net, seq) for seq in support]
    targets = [(torch.as_tensor(s["arousal"]), torch.as_tensor(s["valence"])) for s in support]
    return fit_calibration(predictions, targets, prior, lag)


# (support sequences, inner-loop batches, steps): what `personalize_net` adapts on (`plan`)
Plan = tuple[list[Sequence_], list[Mapping[str, Any]], int]


def plan(
    support: Sequence[Sequence_],
    config: AdaptationConfig,
    predictor: SlidingWindows,
    batches: Sequence[Mapping[str, Any]] | None = None,
    steps: int | None = None,
) -> Plan | None:
    """The support sequences, inner-loop batches and steps `config.method` (not auto) adapts on, or None when
    every support song is flat and skipped (the network stays as it is). Arguments as `personalize_net`."""
    if config.method == AUTO:
        raise ValueError("personalize_net: method=auto is chosen by `select`")
    if not support:
        raise ValueError("personalize_net: no support sequences")
    if config.skip_flat and len(kept := moving(support)) < len(support):
        if not kept:
            return None
        support, batches = kept, None
    steps = int(config.steps if steps is None else steps) if config.learner in ITERATIVE else 0
    batches = list(batches) if batches is not None else [windows_batch(s, predictor.window) for s in support]
    return list(support), batches, steps


def personalized(
    adapted: nn.Module,
    planned: Plan,
    config: AdaptationConfig,
    predictor: SlidingWindows,
    prior: CalibrationPrior | None,
) -> Personalized:
    """The adapted network of a `plan`, with the output map fitted on its support when the method
    calibrates."""
    support, _, steps = planned
    calibration = _fit_map(adapted, support, predictor, prior, config.lag) if config.calibrates else None
    return Personalized(adapted, calibration, config.method, steps)


def personalize_net(
    net: nn.Module,
    support: Sequence[Sequence_],
    config: AdaptationConfig,
    predictor: SlidingWindows,
    prior: CalibrationPrior | None = None,
    batches: Sequence[Mapping[str, Any]] | None = None,
    steps: int | None = None,
) -> Personalized:
    """Apply `config.method` (not auto: see `select`) on the support sequences. The network is never modified.

    With ``config.skip_flat``, flat support songs (see `moving`) are left out; when all are flat the network
    is returned as it is (method "none").

    Args:
        net (nn.Module): a `DSAMLNet`.
        support (Sequence[SongSequence]): the listener's sequences (``logmel`` [T, 51, 128], ``global``
            [1 or T, D_g] or None, ``arousal`` / ``valence`` [T]).
        config (AdaptationConfig): resolved (steps, lr, first_order set: `AdaptationConfig.resolve`).
        predictor (SlidingWindows): how whole sequences are predicted (for the map's fit).
        prior (CalibrationPrior or None): the calibration prior; required when the method calibrates.
        batches (Sequence[ClipBatch] or None): the inner loop's support batches (default: each sequence cut
            into windows of ``predictor.window`` segments, one batch per sequence).
        steps (int or None): overrides ``config.steps``.

    Returns:
        Personalized: the adapted network, the fitted map (when the method calibrates), method and steps.

    Raises:
        ValueError: method=auto, no support sequences, or a calibrating method without a prior.
    """
    planned = plan(support, config, predictor, batches, steps)
    if planned is None:
        return Personalized(net)
    adapted = _learn(net, config.learner, planned[1], config, planned[2])
    return personalized(adapted, planned, config, predictor, prior)
