"""`dsaml-personalize`: a listener's annotated songs + a meta-trained checkpoint -> their adapted checkpoint.

dsaml-personalize ckpt=pdmer.ckpt audio=[my_songs/] annotations=[my_curves/] holdout=[song7]
dsaml-personalize ckpt=pdmer.ckpt audio=[MEMD_audio/] annotations=[<DEAM per-rater dir>] rater=<WorkerId>

Adapts with `dsaml.meta.adapt` (inner steps / lr from the config or the checkpoint's task), writes the
adapted network as a dsaml checkpoint (`out`, readable by dsaml-predict) and prints the support loss
before/after; for held-out songs also CCC/PCC/RMSE before and after adaptation (and plots them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue
from rich.console import Console
from rich.table import Table

from dsaml.cli.entry import hydra_command
from dsaml.cli.predict import plain_options
from dsaml.data.audio import AudioDecodeError
from dsaml.data.features import resolve_device
from dsaml.data.validation import ConfigError, from_mapping
from dsaml.models.checkpoint import save_network
from dsaml.personalize import (
    AnnotationError,
    load_listener,
    personalize,
    resolve_adaptation,
    song_scores,
    support_loss,
)
from dsaml.plots import plot_curves
from dsaml.predictor import CheckpointError, Predictor
from dsaml.training.evaluation import METRIC_KEYS

SHOWN = METRIC_KEYS + ("average",)


@dataclass(frozen=True)
class PersonalizeConfig:
    """conf/personalize.yaml without `paths` (see there for each key)."""

    ckpt: str
    audio: list[str]
    annotations: list[str]
    out: str
    rater: str | None = None
    holdout: list[str] = field(default_factory=list)
    steps: int | None = None
    lr: float | None = None
    first_order: bool | None = None
    device: str = "auto"
    plot: bool = True

    def __post_init__(self) -> None:
        for key in ("audio", "annotations", "holdout"):
            value = getattr(self, key)
            object.__setattr__(
                self, key, [str(v) for v in ([value] if isinstance(value, str | int) else value)]
            )
        if self.rater is not None:
            object.__setattr__(self, "rater", str(self.rater))
        if not Path(self.ckpt).is_file():
            raise ConfigError(f"ckpt={self.ckpt!r}: no such file")
        if self.first_order is not None and not isinstance(self.first_order, bool):
            raise ConfigError(f"first_order={self.first_order!r}: expected null, true or false")
        if not isinstance(self.plot, bool):
            raise ConfigError(f"plot={self.plot!r}: expected true or false")
        resolve_device(self.device)


def scores_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Table:
    table = Table(title=title)
    table.add_column("song / model")
    for key in SHOWN:
        table.add_column(key.replace("_", " "), justify="right")
    for label, scores in rows:
        table.add_row(label, *(f"{scores[k]:.3f}" for k in SHOWN))
    return table


def run(cfg: DictConfig, console: Console | None = None) -> int:
    """Validate, load, adapt, save, report; returns the exit code (0 ok, 2 bad configuration or input)."""
    console = console or Console(stderr=True, soft_wrap=True)
    try:
        config = from_mapping(PersonalizeConfig, plain_options(cfg), "dsaml-personalize")
        predictor = Predictor.load(config.ckpt, config.device)
        options = resolve_adaptation(predictor.hparams, config.steps, config.lr, config.first_order)
        songs = load_listener(predictor, config.audio, config.annotations, config.rater)
    except MissingMandatoryValue as error:
        console.print(
            f"[red]dsaml-personalize:[/red] {error.full_key} is required, e.g. dsaml-personalize "
            "ckpt=pdmer.ckpt audio=[songs/] annotations=[curves/]",
            highlight=False,
        )
        return 2
    except (ConfigError, CheckpointError, AnnotationError, AudioDecodeError, ValueError) as error:
        console.print(f"[red]dsaml-personalize:[/red] {error}", highlight=False)
        return 2
    unknown = sorted(set(config.holdout) - {s.song for s in songs})
    if unknown:
        console.print(
            f"[red]dsaml-personalize:[/red] holdout={unknown}: not among the annotated songs "
            f"{[s.song for s in songs]}",
            highlight=False,
        )
        return 2
    support = [s for s in songs if s.song not in config.holdout]
    heldout = [s for s in songs if s.song in config.holdout]
    if not support:
        console.print("[red]dsaml-personalize:[/red] every annotated song is held out; nothing to adapt on")
        return 2
    console.print(
        f"dsaml-personalize: adapting {config.ckpt} on {len(support)} song(s) "
        f"({sum(len(s.arousal) for s in support)} segments), {options['steps']} steps, lr {options['lr']:g}, "
        f"{'first' if options['first_order'] else 'second'} order, on {predictor.device}",
        highlight=False,
    )
    with console.status("adapting ..."):
        adaptation = personalize(predictor, support, **options)
    adapted = adaptation.net.eval()
    before, after = (
        support_loss(predictor.net, support, predictor.device),
        support_loss(adapted, support, predictor.device),
    )
    console.print(f"support loss (eval mode): {before:.4f} before -> {after:.4f} after adaptation")
    out = Path(config.out)
    save_network(
        out,
        adapted,
        features=predictor.features.to_dict(),
        task=predictor.hparams.get("task"),
        personalized={
            "source": str(config.ckpt),
            "rater": config.rater,
            "songs": [s.song for s in support],
            **options,
        },
    )
    console.print(f"adapted checkpoint: {out}  (dsaml-predict ckpt={out} inputs=[...])", highlight=False)
    rows = []
    for song in heldout:
        base, base_curves = song_scores(predictor, predictor.net, song)
        mine, my_curves = song_scores(predictor, adapted, song)
        rows += [(f"{song.song}: before", base), (f"{song.song}: after", mine)]
        if config.plot:
            plot_curves(
                out.parent / f"{out.stem}_{song.song}.png",
                (song.arousal, song.valence),
                {
                    "before adaptation": (base_curves.arousal, base_curves.valence),
                    "after adaptation": (my_curves.arousal, my_curves.valence),
                },
                f"held-out song {song.song}: listener vs model",
                song.start_s(predictor.features),
                predictor.features.segment_s,
            )
    if len(heldout) > 1:
        for index, label in enumerate(("before", "after")):
            mine = [scores for _, scores in rows[index::2]]
            rows.append((f"mean: {label}", {k: sum(m[k] for m in mine) / len(mine) for k in SHOWN}))
    if rows:
        console.print(scores_table("held-out songs: before vs after adaptation", rows))
    return 0


main = hydra_command("personalize", run)


if __name__ == "__main__":
    main()
