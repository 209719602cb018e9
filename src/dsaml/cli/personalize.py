"""`dsaml-personalize`: a listener's annotated songs + a dsaml checkpoint -> their personalised checkpoint.

dsaml-personalize ckpt=pdmer.ckpt audio=[my_songs/] annotations=[my_curves/] holdout=[song7]
dsaml-personalize ckpt=pdmer.ckpt audio=[MEMD_audio/] annotations=[<DEAM per-rater dir>] rater=<WorkerId>
dsaml-personalize ckpt=pdmer.ckpt ... method=head_calibrate steps=8 baseline=dmer.ckpt

Adapts with the configured method (conf/adaptation/; method=auto by default chooses on the listener's own
songs and keeps the unadapted model unless something validates better), writes the personalised model
(adapted weights and/or the output map) as a dsaml checkpoint (`out`, read by dsaml-predict); with held-out
songs also the scores of `baseline` and of the personalised model, `personalize_report.json` and plots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue
from rich.console import Console
from rich.table import Table

from dsaml.cli.entry import hydra_command
from dsaml.cli.predict import plain_options
from dsaml.config import Config, ConfigError, existing_file, flag, from_mapping
from dsaml.data.audio import AudioDecodeError
from dsaml.data.features import resolve_device
from dsaml.meta import AUTO, AdaptationConfig, Personalized, Predict, calibration_prior
from dsaml.metrics import REPORTED
from dsaml.models.checkpoint import save_network
from dsaml.personalize import AnnotationError, holdout_scores, load_listener, personalize_listener
from dsaml.plots import plot_curves
from dsaml.predictor import CheckpointError, Predictor

ADAPTATION_KEYS = tuple(f.name for f in fields(AdaptationConfig))
REPORT = "personalize_report.json"


@dataclass(frozen=True)
class PersonalizeConfig(Config):
    """conf/personalize.yaml without `paths` and the adaptation keys (see there for each key)."""

    ckpt: str = existing_file()
    audio: list[str]
    annotations: list[str]
    out: str
    rater: str | None = None
    holdout: list[str] = field(default_factory=list)
    baseline: str | None = existing_file(None, optional=True)
    device: str = "auto"
    plot: bool = flag(True)
    trust_checkpoint: bool = flag(False)

    def __post_init__(self) -> None:
        for key in ("audio", "annotations", "holdout"):  # one path or id may be given without a list
            value = getattr(self, key)
            object.__setattr__(
                self, key, [str(v) for v in ([value] if isinstance(value, str | int) else value)]
            )
        if self.rater is not None:
            object.__setattr__(self, "rater", str(self.rater))
        super().__post_init__()
        resolve_device(self.device)


def scores_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Table:
    table = Table(title=title)
    table.add_column("song / model")
    for key in REPORTED:
        table.add_column(key.replace("_", " "), justify="right")
    for label, scores in rows:
        table.add_row(label, *(f"{scores[k]:.3f}" for k in REPORTED))
    return table


def candidates_table(outcome) -> Table:
    table = Table(title=f"method=auto: validation ({outcome.validation}), average score")
    for column in ("method", "steps", "score", "per fold"):
        table.add_column(column, justify="right")
    for c in sorted(outcome.candidates, key=lambda c: -c["score"]):
        mark = (
            " *" if (c["method"], c["steps"]) == (outcome.chosen["method"], outcome.chosen["steps"]) else ""
        )
        table.add_row(
            c["method"] + mark, str(c["steps"]), f"{c['score']:.4f}", " ".join(f"{v:.3f}" for v in c["folds"])
        )
    return table


def _fail(console: Console, message: str) -> int:
    console.print(f"[red]dsaml-personalize:[/red] {message}", highlight=False)
    return 2


def run(cfg: DictConfig, console: Console | None = None) -> int:
    """Validate, load, personalise, save, report; returns the exit code (0 ok, 2 bad configuration/input)."""
    console = console or Console(stderr=True, soft_wrap=True)
    try:
        options = plain_options(cfg)
        adaptation = AdaptationConfig.from_dict({k: options.pop(k) for k in ADAPTATION_KEYS if k in options})
        config = from_mapping(PersonalizeConfig, options, "dsaml-personalize")
        trust = config.trust_checkpoint
        predictor = Predictor.load(config.ckpt, config.device, trust=trust)
        baseline = predictor
        if config.baseline:
            baseline = Predictor.load(config.baseline, config.device, trust=trust)
        adaptation = adaptation.resolve(predictor.hparams.get("task"))
        stored = predictor.hparams.get("calibration_prior")
        if adaptation.method == AUTO and adaptation.prior == "auto" and not stored:
            kept = {
                key: [m for m in getattr(adaptation, key) if not m.endswith("calibrate")]
                for key in ("auto_methods", "auto_single")
            }
            console.print(
                f"note: {config.ckpt} holds no calibration prior: method=auto leaves out the calibrate "
                "methods (set prior=<songs>, e.g. prior=1, to include them)",
                highlight=False,
            )
            adaptation = AdaptationConfig.from_dict({**adaptation.to_dict(), **kept})
        prior = calibration_prior(adaptation, stored)
        songs = load_listener(predictor, config.audio, config.annotations, config.rater)
    except MissingMandatoryValue as error:
        return _fail(
            console,
            f"{error.full_key} is required, e.g. dsaml-personalize ckpt=pdmer.ckpt "
            "audio=[songs/] annotations=[curves/]",
        )
    except (ConfigError, CheckpointError, AnnotationError, AudioDecodeError, ValueError) as error:
        return _fail(console, str(error))
    if baseline.features != predictor.features:
        return _fail(
            console, f"baseline={config.baseline}: its feature settings differ from ckpt={config.ckpt}'s"
        )
    unknown = sorted(set(config.holdout) - {s.song for s in songs})
    if unknown:
        return _fail(console, f"holdout={unknown}: not among the annotated songs {[s.song for s in songs]}")
    support = [s for s in songs if s.song not in config.holdout]
    heldout = [s for s in songs if s.song in config.holdout]
    if not support:
        return _fail(console, "every annotated song is held out; nothing to adapt on")
    device = predictor.device
    window = Predict(predictor.window)
    console.print(
        f"dsaml-personalize: {config.ckpt}, method={adaptation.method}, on {len(support)} song(s) "
        f"({sum(len(s.arousal) for s in support)} segments), steps {adaptation.steps}, lr {adaptation.lr:g}, "
        f"on {device}",
        highlight=False,
    )
    with console.status("personalising ...") as status:
        outcome = personalize_listener(
            predictor.net, support, adaptation, window, prior, device, lambda text: status.update(text)
        )
    if outcome.candidates:
        console.print(candidates_table(outcome))
    model = outcome.model
    console.print(
        f"chosen: method={outcome.chosen['method']}, steps={outcome.chosen['steps']}"
        + (f", map {model.calibration.to_dict()}" if model.calibration else ""),
        highlight=False,
    )
    out = Path(config.out)
    save_network(
        out,
        model.net,
        features=predictor.features.to_dict(),
        task=predictor.hparams.get("task"),
        calibration_prior=predictor.hparams.get("calibration_prior"),
        personalized={
            "source": str(config.ckpt),
            "rater": config.rater,
            "songs": [s.song for s in support],
            **outcome.chosen,
            "lr": adaptation.lr,
            "first_order": adaptation.first_order,
            "calibration": model.calibration.to_dict() if model.calibration else None,
            "validation": outcome.validation,
            "candidates": outcome.candidates,
        },
    )
    console.print(f"personalised checkpoint: {out}  (dsaml-predict ckpt={out} inputs=[...])", highlight=False)
    if heldout:
        report_holdout(config, baseline, model, window, heldout, outcome, out, console)
    return 0


def report_holdout(config, baseline, model, window, heldout, outcome, out: Path, console: Console) -> None:
    """Scores of the baseline and the personalised model on the held-out songs: table, report, plots."""
    models = {"baseline": Personalized(baseline.net, baseline.calibration), "personalized": model}
    means, per_song = holdout_scores(models, window, heldout, baseline.device)
    rows = [(f"{song}: {name}", scores) for name in models for song, scores, _ in per_song[name]]
    rows += [(f"mean: {name}", means[name]) for name in models] if len(heldout) > 1 else []
    console.print(
        scores_table(
            f"held-out songs: baseline ({config.baseline or 'ckpt, unadapted'}) vs personalised", rows
        )
    )
    report = {"holdout": means, "chosen": outcome.chosen, "candidates": outcome.candidates}
    (out.parent / REPORT).write_text(json.dumps(report, indent=2))
    console.print(f"report: {out.parent / REPORT}", highlight=False)
    if config.plot:
        for index, song in enumerate(heldout):
            plot_curves(
                out.parent / f"{out.stem}_{song.song}.png",
                (song.arousal, song.valence),
                {name: per_song[name][index][2] for name in models},
                f"held-out song {song.song}: listener vs model",
                song.start_s(baseline.features),
                baseline.features.segment_s,
            )


main = hydra_command("personalize", run)


if __name__ == "__main__":
    main()
