"""dsaml-synth: generate a synthetic DEAM-format corpus.

dsaml-synth                                   # demo preset -> ${paths.data_dir}/synthetic/demo
dsaml-synth synth=tiny out=/tmp/deam seed=0   # tiny preset (tests), seconds
dsaml-synth synth=demo layout=flat workers=2
"""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from dsaml.cli.entry import hydra_command
from dsaml.config import ConfigError
from dsaml.data.synth import SynthConfig, generate_corpus
from dsaml.data.synth.config import SynthRun


def run(cfg: DictConfig, console: Console) -> None:
    """Validate the composed config, generate the corpus and print its summary."""
    SynthRun.check_top_level(cfg, "dsaml-synth")
    synth = SynthConfig.from_mapping(cfg.synth)
    summary = generate_corpus(
        cfg.out, synth, cfg.seed, layout=cfg.layout, workers=cfg.workers, console=console
    )
    table = Table(title="dsaml-synth corpus", show_header=False)
    for label, value in summary.lines():
        table.add_row(label, value)
    Console().print(table)


def command(cfg: DictConfig) -> int:
    """dsaml-synth's exit code: 0, or 2 for a bad configuration or an output folder it must not touch."""
    console = Console(stderr=True)
    try:
        run(cfg, console)
    except (ConfigError, FileExistsError) as err:
        console.print(f"[bold red]dsaml-synth:[/] {err}")
        return 2
    return 0


main = hydra_command("synth", command)


if __name__ == "__main__":
    main()
