"""`dsaml-predict`: audio files or folders + a dsaml checkpoint -> per song a CSV/JSON of curves and a plot.

dsaml-predict ckpt=model.ckpt inputs=[song.mp3,music/] out=curves/
dsaml-predict ckpt=model.ckpt inputs=[song.flac] format=json device=cuda

Per song: <name>.csv (time_s, arousal, valence) or <name>.json, and <name>.png (`dsaml.curve_files`).
An existing file there that an earlier dsaml-predict did not write (e.g. a listener's annotation CSV) is
refused before any work unless overwrite=true; a song predicted earlier has all its outputs replaced.
A song that cannot be read is reported and skipped; the others are written;
the exit code is 1 if any failed. A bad checkpoint or configuration fails before any audio is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from rich.console import Console

from dsaml.cli.entry import hydra_command
from dsaml.config import (
    Config,
    ConfigError,
    check_output_folder,
    choice,
    existing_file,
    flag,
    from_mapping,
    integer,
)
from dsaml.curve_files import FORMATS, earlier_outputs, output_files, output_names, write_prediction
from dsaml.data.audio import AudioDecodeError
from dsaml.data.features import resolve_device
from dsaml.inference import STITCH_RULES
from dsaml.outputs import check_output
from dsaml.predictor import DEFAULT_STITCH, DEFAULT_STRIDE, CheckpointError, Predictor, collect_audio
from dsaml.progress import progress_bar


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
    overwrite: bool = flag(False)
    input_files: list[Path] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stitch == "original" and self.stride != 1:
            raise ConfigError("stitch=original reproduces the original's stride-1 rule; set stride=1")
        resolve_device(self.device)
        object.__setattr__(self, "input_files", collect_audio(self.inputs, self.recursive))
        check_output_folder("out", self.out)
        inputs = {"ckpt": self.ckpt, **{f"inputs ({path.name})": path for path in self.input_files}}
        for name in output_names(self.input_files).values():
            for path in output_files(Path(self.out), name, self.format, self.plot):
                check_output("out", path, "prediction", inputs, self.overwrite)

    def replaced(self) -> list[str]:
        """The songs whose outputs in `out` an earlier run made with another checkpoint (replaced now)."""
        return [
            name
            for name in output_names(self.input_files).values()
            if set(earlier_outputs(Path(self.out), name).values()) - {str(Path(self.ckpt))}
        ]


def predict_files(
    predictor: Predictor, config: PredictConfig, console: Console
) -> tuple[list[Path], list[str]]:
    """Predict every input file -> (written files, one error line per failed song). Two bars: songs, and the
    current song's windows (advanced per batch of windows)."""
    written, failures = [], []
    extractor = predictor.extractor()
    with progress_bar(console) as progress:
        songs = progress.add_task("songs", total=len(config.input_files), digits=2)
        windows = progress.add_task("  windows", total=None, visible=False, unit="windows", digits=0)
        for path, name in output_names(config.input_files).items():
            progress.update(songs, description=f"{name[:30]:30s}")
            progress.reset(windows, total=None, visible=True)
            try:
                logmel = predictor.logmel(path, extractor)
            except (AudioDecodeError, ValueError) as error:
                failures.append(str(error))
                progress.console.print(f"[red]skipped[/red] {error}")
                progress.advance(songs)
                continue
            written += write_prediction(
                predictor,
                logmel,
                path,
                Path(config.out) / name,
                config.format,
                config.plot,
                stride=config.stride,
                stitch=config.stitch,
                batch_size=config.batch_size,
                progress=lambda done, total: progress.update(windows, completed=done, total=total),
            )
            progress.advance(songs)
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
        if config.stride > predictor.window:
            raise ConfigError(
                f"stride={config.stride} is longer than the model's window ({predictor.window} segments): "
                "the segments between windows would get no prediction; use stride <= {predictor.window}"
            )
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
    replaced = config.replaced()
    if replaced:
        console.print(
            f"note: replacing every output of {len(replaced)} song(s) an earlier run predicted into "
            f"{config.out} with another checkpoint: {', '.join(replaced)}",
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
