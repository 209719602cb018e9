"""`dsaml-preprocess`: build the HDF5 feature store of a dataset.

dsaml-preprocess data=deam data.root=/path/DEAM paths.store=/path/deam.h5
dsaml-preprocess data=pmemo data.root=/path/PMEmo
dsaml-preprocess                      # data=synthetic: the dsaml-synth demo corpus
dsaml-preprocess data=deam data.root=/path/DEAM global_vectors=clap global_vectors.path=/models/clap
                                      # then add global-context vectors (conf/global_vectors/)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
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
from dsaml.config import ConfigError
from dsaml.data.catalogue import DataError
from dsaml.data.global_vectors import GlobalVectorsConfig, add_global_vectors, format_global_summary
from dsaml.data.preprocess import PreprocessConfig, format_summary, preprocess
from dsaml.data.readers import DataConfig
from dsaml.data.store import StoreError

TOP_LEVEL = ("data", "paths", "global_vectors")


class RateColumn(ProgressColumn):
    """songs/s and the real-time factor (decoded audio seconds per wall second)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if not elapsed or not task.completed:
            return Text("-- songs/s --x real-time", style="progress.data.speed")
        rate = task.completed / elapsed
        audio = task.fields.get("audio", 0.0)
        realtime = f" {audio / elapsed:.0f}x real-time" if audio else ""
        return Text(f"{rate:.1f} songs/s{realtime}", style="progress.data.speed")


def progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def progress_callback(progress: Progress, label: str) -> Callable[[str, dict[str, Any]], None]:
    """`on_progress` for preprocess / add_global_vectors: a bar from ("start", {"todo", "resumed"}) on,
    advanced by each ("song", {"duration_s", ...})."""
    task_id = None

    def on_progress(event: str, info: dict[str, Any]) -> None:
        nonlocal task_id
        if event == "start":  # the catalogue is read: show the bar from here on
            resumed = f" (+{info['resumed']} resumed)" if info["resumed"] else ""
            task_id = progress.add_task(f"{label}{resumed}", total=info["todo"], audio=0.0)
        else:
            audio = progress.tasks[task_id].fields["audio"] + info.get("duration_s", 0.0)
            progress.update(task_id, advance=1, audio=audio)

    return on_progress


def configs(cfg: DictConfig) -> tuple[DataConfig, PreprocessConfig, Path]:
    """Validate the composed config (before any work): data group, run options, output path."""
    data = DataConfig.from_mapping(OmegaConf.to_container(cfg.data, resolve=True))
    options = {key: cfg[key] for key in cfg if key not in TOP_LEVEL}  # scalars, resolved one by one
    return data, PreprocessConfig.from_mapping(options, "dsaml-preprocess"), Path(cfg.paths.store)


def global_vectors_config(cfg: DictConfig) -> GlobalVectorsConfig:
    """Validate the global_vectors group (before any work); required keys left at ??? are named."""
    group = cfg.get("global_vectors")
    if group is None:
        return GlobalVectorsConfig()
    missing = sorted(key.rsplit(".", 1)[-1] for key in OmegaConf.missing_keys(group))
    if missing:
        raise ConfigError(
            f"global_vectors={group.get('source')} needs "
            + ", ".join(f"global_vectors.{key}=..." for key in missing)
        )
    return GlobalVectorsConfig.from_mapping(OmegaConf.to_container(group, resolve=True))


def run(cfg: DictConfig, console: Console | None = None) -> int:
    """Run the preprocessing described by `cfg`; returns the process exit code."""
    console = console or Console(stderr=True, soft_wrap=True)
    try:
        data, options, store = configs(cfg)
        vectors = global_vectors_config(cfg)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        return 2
    console.print(f"dsaml-preprocess: {data.name} from {data.root} -> {store}")
    with progress_bar(console, options.progress) as progress:
        try:
            summary = preprocess(data, options, store, on_progress=progress_callback(progress, "songs"))
        except (ConfigError, DataError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            if data.name == "synthetic" and not Path(data.root).exists():
                console.print(f"make the synthetic corpus first: dsaml-synth out={data.root}")
            return 2
    code = report(console, format_summary(summary), summary.failures, options.strict)
    if code or vectors.source == "none":
        return code
    return run_global_vectors(store, vectors, options, console)


def report(console: Console, lines: list[str], failures: list, strict: bool) -> int:
    """Print a run's summary; exit code 1 when songs failed and strict=true, else 0."""
    for line in lines:
        console.print(line, markup=False, highlight=False)
    if failures and strict:
        console.print(f"[red]{len(failures)} song(s) failed and strict=true[/red]")
        return 1
    return 0


def run_global_vectors(
    store: Path, vectors: GlobalVectorsConfig, options: PreprocessConfig, console: Console
) -> int:
    """Add global-context vectors to the (built or up-to-date) store; returns the exit code."""
    with progress_bar(console, options.progress) as progress:
        try:
            summary = add_global_vectors(
                store, vectors, on_progress=progress_callback(progress, f"global vectors {vectors.name}")
            )
        except (ConfigError, DataError, StoreError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            return 2
    return report(console, format_global_summary(summary), summary.failures, options.strict)


# Input issues are listed, grouped, in the end-of-run summary rather than one log line each.
main = hydra_command("preprocess", run, quiet=["dsaml.data.catalogue"])


if __name__ == "__main__":
    main()
