"""`dsaml-preprocess`: build the HDF5 feature store of a dataset.

dsaml-preprocess data=deam data.root=/path/DEAM paths.store=/path/deam.h5
dsaml-preprocess data=pmemo data.root=/path/PMEmo
dsaml-preprocess                      # data=synthetic: the dsaml-synth demo corpus
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from dsaml.cli.entry import hydra_command
from dsaml.data.catalogue import DataError
from dsaml.data.preprocess import PreprocessConfig, format_summary, preprocess
from dsaml.data.readers import DataConfig
from dsaml.data.validation import ConfigError, from_mapping

TOP_LEVEL = ("data", "paths")


class RateColumn(ProgressColumn):
    """songs/s and the real-time factor (decoded audio seconds per wall second)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if not elapsed or not task.completed:
            return Text("-- songs/s --x real-time", style="progress.data.speed")
        rate = task.completed / elapsed
        return Text(
            f"{rate:.1f} songs/s {task.fields.get('audio', 0.0) / elapsed:.0f}x real-time",
            style="progress.data.speed",
        )


def configs(cfg: DictConfig) -> tuple[DataConfig, PreprocessConfig, Path]:
    """Validate the composed config (before any work): data group, run options, output path."""
    data = DataConfig.from_mapping(OmegaConf.to_container(cfg.data, resolve=True))
    options = {key: cfg[key] for key in cfg if key not in TOP_LEVEL}  # scalars, resolved one by one
    return data, from_mapping(PreprocessConfig, options, "dsaml-preprocess"), Path(cfg.paths.store)


def run(cfg: DictConfig, console: Console | None = None) -> int:
    """Run the preprocessing described by `cfg`; returns the process exit code."""
    console = console or Console(stderr=True, soft_wrap=True)
    try:
        data, options, store = configs(cfg)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        return 2
    console.print(f"dsaml-preprocess: {data.name} from {data.root} -> {store}")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not options.progress) as progress:

        def on_progress(event: str, info: dict[str, Any]) -> None:
            if event == "start":  # the catalogue is read: show the bar from here on
                resumed = f" (+{info['resumed']} resumed)" if info["resumed"] else ""
                progress.add_task(f"songs{resumed}", total=info["todo"], audio=0.0)
            else:
                task = progress.tasks[0]
                progress.update(task.id, advance=1, audio=task.fields["audio"] + info.get("duration_s", 0.0))

        try:
            summary = preprocess(data, options, store, on_progress=on_progress)
        except (ConfigError, DataError) as exc:
            console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            if data.name == "synthetic" and not Path(data.root).exists():
                console.print(f"make the synthetic corpus first: dsaml-synth out={data.root}")
            return 2
    for line in format_summary(summary):
        console.print(line, markup=False, highlight=False)
    if summary.failures and options.strict:
        console.print(f"[red]{len(summary.failures)} song(s) failed and strict=true[/red]")
        return 1
    return 0


# Input issues are listed, grouped, in the end-of-run summary rather than one log line each.
main = hydra_command("preprocess", run, quiet=["dsaml.data.catalogue"])


if __name__ == "__main__":
    main()
