"""`dsaml-preprocess`: build the HDF5 feature store of a dataset.

dsaml-preprocess data=deam data.root=/path/DEAM paths.store=/path/deam.h5
dsaml-preprocess data=pmemo data.root=/path/PMEmo
dsaml-preprocess                      # data=synthetic: the dsaml-synth demo corpus
dsaml-preprocess data=deam data.root=/path/DEAM global_vectors=clap global_vectors.path=/models/clap
                                      # then add global-context vectors (conf/global_vectors/)
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape

from dsaml.cli.entry import hydra_command
from dsaml.config import ConfigError
from dsaml.data.catalogue import DataError
from dsaml.data.global_vectors import GlobalVectorsConfig, add_global_vectors, format_global_summary
from dsaml.data.preprocess import PreprocessConfig, format_summary, preprocess
from dsaml.data.readers import DataConfig
from dsaml.data.store import StoreError, store_lock
from dsaml.outputs import check_output
from dsaml.progress import progress_bar, song_events

TOP_LEVEL = ("data", "paths", "global_vectors")


def configs(cfg: DictConfig) -> tuple[DataConfig, PreprocessConfig, Path]:
    """Validate the composed config (before any work): data group, run options, output path."""
    data = DataConfig.from_mapping(OmegaConf.to_container(cfg.data, resolve=True))
    options = {key: cfg[key] for key in cfg if key not in TOP_LEVEL}  # scalars, resolved one by one
    config = PreprocessConfig.from_mapping(options, "dsaml-preprocess")
    store = check_output("paths.store", cfg.paths.store, "store", {"data.root": data.root}, config.overwrite)
    return data, config, store


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
            summary = preprocess(data, options, store, on_progress=song_events(progress, "songs"))
        except (ConfigError, DataError, StoreError) as exc:
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
            with store_lock(store, "dsaml-preprocess global vectors"):
                summary = add_global_vectors(
                    store, vectors, on_progress=song_events(progress, f"global vectors {vectors.name}")
                )
        except (ConfigError, DataError, StoreError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            return 2
    return report(console, format_global_summary(summary), summary.failures, options.strict)


# Input issues are listed, grouped, in the end-of-run summary rather than one log line each.
main = hydra_command("preprocess", run, quiet=["dsaml.data.catalogue"])


if __name__ == "__main__":
    main()
