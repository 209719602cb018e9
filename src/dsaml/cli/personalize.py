"""`dsaml-personalize`: a listener's annotated songs + a dsaml checkpoint -> their personalised checkpoint.

dsaml-personalize ckpt=pdmer.ckpt audio=[my_songs/] annotations=[my_curves/] holdout=[song7]
dsaml-personalize ckpt=pdmer.ckpt audio=[MEMD_audio/] annotations=[<DEAM per-rater dir>] rater=<WorkerId>
dsaml-personalize ckpt=pdmer.ckpt ... method=head_calibrate steps=8 baseline=dmer.ckpt

Adapts with the configured method (conf/adaptation/; method=auto by default chooses on the listener's own
songs: the listener prior's read-out, or without one in the checkpoint the unadapted model, unless
something validates better), writes the personalised model
(adapted weights and/or the output map) as a dsaml checkpoint (`out`, read by dsaml-predict); with held-out
songs also the scores of `baseline` and of the personalised model, `personalize_report.json` and plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue
from rich.console import Console

from dsaml.cli.entry import hydra_command
from dsaml.cli.predict import plain_options
from dsaml.config import Config, ConfigError, existing_file, flag, from_mapping
from dsaml.data.audio import AudioDecodeError
from dsaml.data.features import resolve_device
from dsaml.meta import AUTO, AdaptationConfig, SlidingWindows
from dsaml.meta.methods import ITERATIVE
from dsaml.outputs import check_output
from dsaml.personalize import (
    REPORT,
    AnnotationError,
    adaptation_for,
    holdout_plot,
    load_baseline,
    load_listener,
    personalize_listener,
    report_holdout,
    save_personalized,
    split_holdout,
)
from dsaml.predictor import CheckpointError, Predictor
from dsaml.reporting import rich_table

ADAPTATION_KEYS = tuple(f.name for f in fields(AdaptationConfig))


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
    overwrite: bool = flag(False)

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
        self.check_outputs()

    def check_outputs(self) -> None:
        """Before any work: `out` (and the report and plots beside it) may be written, and none of them is
        an input (ckpt, baseline, a named audio or annotation file)."""
        inputs = {"ckpt": self.ckpt, "baseline": self.baseline}
        for key in ("audio", "annotations"):
            inputs.update({f"{key} ({path})": path for path in getattr(self, key) if Path(path).is_file()})
        out = check_output("out", self.out, "personalized", inputs, self.overwrite)
        if self.holdout:
            extra = [out.parent / REPORT, *(holdout_plot(out, song) for song in self.holdout if self.plot)]
            for path in extra:
                check_output("out", path, "personalize", inputs, self.overwrite)


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
        baseline = load_baseline(config.baseline, predictor, config.device, trust)
        adaptation, prior, narrowed = adaptation_for(predictor, adaptation)
        if narrowed:
            console.print(
                f"note: {config.ckpt} holds no calibration prior: method=auto leaves out the calibrate "
                "methods (set prior=<songs>, e.g. prior=1, to include them)",
                highlight=False,
            )
        songs = load_listener(predictor, config.audio, config.annotations, config.rater)
        support, heldout = split_holdout(songs, config.holdout)
    except MissingMandatoryValue as error:
        return _fail(
            console,
            f"{error.full_key} is required, e.g. dsaml-personalize ckpt=pdmer.ckpt "
            "audio=[songs/] annotations=[curves/]",
        )
    except (ConfigError, CheckpointError, AnnotationError, AudioDecodeError, ValueError) as error:
        return _fail(console, str(error))
    device = predictor.device
    window = SlidingWindows(predictor.window)
    inner = (
        f", steps {adaptation.steps}, lr {adaptation.lr:g}"
        if adaptation.method == AUTO or adaptation.learner in ITERATIVE
        else ""
    )
    console.print(
        f"dsaml-personalize: {config.ckpt}, method={adaptation.method}, on {len(support)} song(s) "
        f"({sum(len(s.arousal) for s in support)} segments){inner}, on {device}",
        highlight=False,
    )
    with console.status("personalising ...") as shown:
        outcome = personalize_listener(
            predictor.net, support, adaptation, window, prior, device, shown.update
        )
    if outcome.candidates:
        title = f"method=auto: validation ({outcome.validation}), average score"
        console.print(rich_table(title, *outcome.candidate_rows()))
    console.print(f"chosen: {outcome.describe()}", highlight=False)
    out = save_personalized(config.out, predictor, outcome, adaptation, config.rater, support)
    console.print(f"personalised checkpoint: {out}  (dsaml-predict ckpt={out} inputs=[...])", highlight=False)
    if heldout:
        table, report = report_holdout(baseline, outcome, window, heldout, out, config.plot)
        title = f"held-out songs: baseline ({config.baseline or 'ckpt, unadapted'}) vs personalised"
        console.print(rich_table(title, *table))
        console.print(f"report: {report}", highlight=False)
    return 0


main = hydra_command("personalize", run)


if __name__ == "__main__":
    main()
