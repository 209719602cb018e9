"""`dsaml-predict`: audio files or folders + a dsaml checkpoint -> per song a CSV/JSON of curves and a plot.

dsaml-predict ckpt=model.ckpt inputs=[song.mp3,music/] out=curves/
dsaml-predict ckpt=model.ckpt inputs=[song.flac] format=json device=cuda

Per song: <name>.csv with columns time_s, arousal, valence (one row every 0.5 s from 15 s, as DEAM's labels;
time_s is the start of the segment), or <name>.json ({"song", "audio", "checkpoint", "time_s", "arousal",
"valence"}), and <name>.png. A song that cannot be read is reported and skipped; the others are written;
the exit code is 1 if any failed. A bad checkpoint or configuration fails before any audio is read.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dsaml.cli.entry import check_output_folder, hydra_command
from dsaml.config import Config, ConfigError, choice, existing_file, flag, from_mapping, integer
from dsaml.data.audio import AudioDecodeError
from dsaml.data.features import resolve_device
from dsaml.inference import STITCH_RULES
from dsaml.plots import plot_prediction
from dsaml.predictor import DEFAULT_STITCH, DEFAULT_STRIDE, CheckpointError, Curves, Predictor, collect_audio

FORMATS = ("csv", "json")


@dataclass(frozen=True)
class PredictConfig(Config):
    """conf/predict.yaml without `paths` (see there for each key)."""

    ckpt: str = existing_file()
    inputs: list[str]
    out: str
    format: str = choice("csv", FORMATS)
    plot: bool = flag(True)
    device: str = "auto"
    stride: int = integer(DEFAULT_STRIDE, low=0, low_open=True)
    stitch: str = choice(DEFAULT_STITCH, STITCH_RULES)
    batch_size: int = integer(32, low=0, low_open=True)
    recursive: bool = flag(False)
    trust_checkpoint: bool = flag(False)
    input_files: list[Path] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stitch == "original" and self.stride != 1:
            raise ConfigError("stitch=original reproduces the original's stride-1 rule; set stride=1")
        resolve_device(self.device)
        object.__setattr__(self, "input_files", collect_audio(self.inputs, self.recursive))
        check_output_folder("out", self.out)
        check_output_folder("out", self.out)


def output_names(files: list[Path]) -> dict[Path, str]:
    """A distinct output name per file: its stem, or stem_<ext> / stem_<n> when stems collide."""
    names: dict[Path, str] = {}
    used: set[str] = set()
    for path in files:
        name = path.stem
        if name in used:
            name = f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        count = 2
        while name in used:
            name, count = f"{path.stem}_{count}", count + 1
        used.add(name)
        names[path] = name
    return names


def write_curves(curves: Curves, path: Path, fmt: str, meta: dict[str, str]) -> Path:
    """Write curves as <path>.csv (time_s, arousal, valence) or <path>.json (meta + the three lists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        target = path.with_suffix(".csv")
        with target.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["time_s", "arousal", "valence"])
            writer.writerows((f"{t:.1f}", f"{a:.6f}", f"{v:.6f}") for t, a, v in curves.rows())
        return target
    target = path.with_suffix(".json")
    payload = {
        **meta,
        "time_s": curves.time_s.round(3).tolist(),
        "arousal": curves.arousal.tolist(),
        "valence": curves.valence.tolist(),
    }
    target.write_text(json.dumps(payload, indent=1))
    return target


def predict_files(
    predictor: Predictor, config: PredictConfig, console: Console
) -> tuple[list[Path], list[str]]:
    """Predict every input file -> (written files, one error line per failed song). Two bars: songs, and the
    current song's windows (advanced per batch of windows)."""
    out = Path(config.out)
    names = output_names(config.input_files)
    written, failures = [], []
    extractor = predictor.extractor()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("songs", total=len(names), rate="")
        windows = progress.add_task("  windows", total=None, rate="", visible=False)

        def on_batch(done: int, total: int) -> None:
            elapsed = progress.tasks[windows].elapsed or 0.0
            rate = f"{done / elapsed:.0f} windows/s" if elapsed else ""
            progress.update(windows, completed=done, total=total, rate=rate)

        for path, name in names.items():
            progress.update(task, description=f"{name[:30]:30s}")
            progress.reset(windows, total=None, visible=True, rate="")
            try:
                logmel = predictor.logmel(path, extractor)
            except (AudioDecodeError, ValueError) as error:
                failures.append(str(error))
                progress.console.print(f"[red]skipped[/red] {error}")
                progress.advance(task)
                continue
            curves = predictor.predict(
                logmel,
                stride=config.stride,
                stitch=config.stitch,
                batch_size=config.batch_size,
                progress=on_batch,
            )
            meta = {"song": name, "audio": str(path), "checkpoint": str(predictor.path)}
            written.append(write_curves(curves, out / name, config.format, meta))
            if config.plot:
                written.append(
                    plot_prediction(
                        out / f"{name}.png",
                        curves.time_s,
                        curves.arousal,
                        curves.valence,
                        f"{path.name}  ({len(curves.time_s)} x 0.5 s)",
                    )
                )
            progress.advance(task)
            elapsed = progress.tasks[0].elapsed or 0.0
            done = progress.tasks[0].completed
            progress.update(task, rate=f"{done / elapsed:.2f} songs/s" if elapsed else "")
    return written, failures


def plain_options(cfg: DictConfig) -> dict[str, Any]:
    """The top-level options of a composed CLI config as plain values (the `paths` group left out: its
    interpolations need groups these CLIs do not have)."""
    return {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key in cfg
        if key != "paths"
        for value in [cfg[key]]
    }


def run(cfg: DictConfig, console: Console | None = None) -> int:
    """Validate, load the checkpoint, predict every song; returns the exit code (0 ok, 1 some songs
    failed, 2 configuration/checkpoint error before any work)."""
    console = console or Console(stderr=True, soft_wrap=True)
    try:
        config = from_mapping(PredictConfig, plain_options(cfg), "dsaml-predict")
        predictor = Predictor.load(config.ckpt, config.device, trust=config.trust_checkpoint)
    except MissingMandatoryValue as error:
        console.print(
            f"[red]dsaml-predict:[/red] {error.full_key} is required, e.g. dsaml-predict "
            "ckpt=model.ckpt inputs=[song.mp3,music/]",
            highlight=False,
        )
        return 2
    except (ConfigError, CheckpointError) as error:
        console.print(f"[red]dsaml-predict:[/red] {error}", highlight=False)
        return 2
    console.print(
        f"dsaml-predict: {len(config.input_files)} song(s) with {config.ckpt} on {predictor.device}"
        f" -> {config.out}",
        highlight=False,
    )
    written, failures = predict_files(predictor, config, console)
    console.print(f"wrote {len(written)} file(s) to {config.out}", highlight=False)
    if failures:
        console.print(f"[red]{len(failures)} song(s) failed:[/red]")
        for line in failures:
            console.print(f"  {line}", markup=False, highlight=False)
        return 1
    return 0


main = hydra_command("predict", run)


if __name__ == "__main__":
    main()
