"""`dsaml-demo` (`make demo`): the whole job on a generated DEAM-format corpus, in minutes on a CPU.

1. corpus: `dsaml-synth` preset (reused when it is already there with the same plan),
2. feature store: `dsaml-preprocess` (reused when up to date),
3. DMER: `dsaml-train experiment=dmer_synthetic` (fit, then test the best checkpoint on the test songs),
4. PDMER: `dsaml-train experiment=pdmer_synthetic init_from=<the DMER checkpoint>` (first-order MAML over
   raters; tests unadapted, within-song and cross-song adaptation),
5. results: `dsaml-eval` of the DMER and the PDMER model unadapted on the same (song, rater) pairs, and of
   the new-listener case (the DMER model personalised by method=auto on another whole song); one table, the
   gain per rater over both baselines with its 95% interval and paired tests (`dsaml.reporting`), plots,
6. the user tools: `dsaml-predict` on a test song, `dsaml-personalize` of the DMER model for one test rater
   (a held-out song scored against it), `dsaml-predict` with the adapted checkpoint.

dsaml-demo                                  # everything under ./data and ./outputs/demo/<time>/
dsaml-demo synth=tiny seed=1                # another corpus preset / seed
dsaml-demo device=gpu dmer.trainer.max_epochs=10   # settings of the dsaml-train runs (conf/demo.yaml)
"""

from __future__ import annotations

import json
import logging
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig
from rich.console import Console

from dsaml import demo, reporting
from dsaml.cli.entry import hydra_command
from dsaml.cli.predict import plain_options
from dsaml.config import ConfigError, from_mapping


def run_tool(name: str, overrides: list[str], console: Console) -> None:
    """One user command (dsaml-predict / dsaml-personalize) as a user would type it: printed, then run."""
    from dsaml.cli import personalize, predict

    console.print(f"$ dsaml-{name} {' '.join(map(shlex.quote, overrides))}", markup=False, highlight=False)
    if {"predict": predict.run, "personalize": personalize.run}[name](compose(name, overrides), console):
        raise RuntimeError(f"dsaml-{name} failed (see the messages above)")


def try_the_tools(dmer: demo.DemoRun, config: demo.DemoConfig, console: Console) -> dict:
    """Stage 6: the user commands of `demo.tool_commands`, run one after the other."""
    info, commands = demo.tool_commands(dmer, config)
    for name, overrides in commands:
        run_tool(name, overrides, console)
    return info


def results(
    dmer: demo.DemoRun, pdmer: demo.DemoRun, config: demo.DemoConfig, console: Console
) -> dict[str, Any]:
    """Stage 5: score the unadapted models on the rater pairs, compare, print the tables, plot."""
    kinds = reporting.rater_kinds(config.corpus)
    protocols = [p for p in demo.ADAPTED if pdmer.row(p) is not None]
    console.print("dsaml-eval of the DMER and the unadapted PDMER model on the raters' test pairs ...")
    dmer_on_raters = demo.evaluate("dmer_on_raters", dmer.checkpoint, pdmer, protocols, config)
    pdmer_before = demo.evaluate("pdmer_before", pdmer.checkpoint, pdmer, protocols, config)
    console.print("dsaml-eval of the new-listener case: the DMER model, personalised by method=auto ...")
    auto = demo.evaluate("new_listener", dmer.checkpoint, pdmer, ["pdmer_cross_song"], config, "auto")
    report = demo.compare(dmer, pdmer, dmer_on_raters, pdmer_before, auto, kinds)
    title = "Test results (mean over songs / song-rater pairs)"
    console.print(reporting.rich_table(title, *demo.results_rows(report)))
    for row in report["rows"]:
        console.print(f"  [bold]{row['model']}[/bold]: {row['meaning']}", highlight=False)
    title = "Adaptation gain per rater (average score: adapted - baseline on the same pairs)"
    console.print(reporting.rich_table(title, *reporting.gain_rows(report["gains"], narrow=True)))
    console.print(f"  not worse: raters whose gain is > -{reporting.NOT_WORSE_MARGIN:g}", highlight=False)
    title = "The same gains: paired tests over raters, and per rater kind"
    console.print(reporting.rich_table(title, *reporting.test_rows(report["gains"])))
    console.print(f"plots -> {Path(config.out) / 'plots'}")
    made = demo.figures(dmer, pdmer, report, kinds, config)
    runs = {"dmer": dmer, "pdmer": pdmer, "dmer_on_raters": dmer_on_raters, "pdmer_before": pdmer_before}
    runs["new_listener"] = auto
    report["runs"] = {k: str(r.directory) for k, r in runs.items()}
    report["checkpoints"] = {"dmer": str(dmer.checkpoint), "pdmer": str(pdmer.checkpoint)}
    return {**report, "plots": [str(p) for p in made]}


def run(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    """The six stages; returns the report written to <out>/demo_results.json."""
    console = console or Console(stderr=True)
    if not console.is_terminal:  # logs: as wide as the tables (each fits in 100 columns)
        console.width = max(console.width, 100)
    config = from_mapping(demo.DemoConfig, plain_options(cfg), "dsaml-demo")
    config.check_runs()
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]dsaml demo[/bold]: corpus {config.corpus} (preset {config.synth.name}, seed {config.seed}), "
        f"store {config.store}, run directory {run_dir}",
        highlight=False,
    )
    started, titles = time.perf_counter(), iter(range(1, 7))

    def stage(title: str) -> None:
        elapsed = f"[dim]({time.perf_counter() - started:.0f} s so far)[/dim]"
        console.rule(f"[bold]{next(titles)}/6 {title}[/bold]  {elapsed}")

    stage(f"synthetic DEAM-format corpus (dsaml-synth preset {config.synth.name})")
    generated = demo.make_corpus(config, console)
    stage("feature store (dsaml-preprocess)")
    demo.make_store(config, console, rebuild=generated)
    stage("DMER: train on rater-averaged curves, test on full songs")
    dmer = demo.train("dmer", config, run_dir)
    start = "from the DMER weights" if config.pdmer_from_dmer else "from scratch"
    stage(f"PDMER: MAML {start}, tested before and after adapting")
    pdmer = demo.train("pdmer", config, run_dir, dmer.checkpoint if config.pdmer_from_dmer else None)
    stage("results")
    report = results(dmer, pdmer, config, console)
    stage("the user tools: dsaml-predict, dsaml-personalize on test songs")
    report["tools"] = try_the_tools(dmer, config, console)
    (run_dir / "demo_results.json").write_text(json.dumps(report, indent=2))
    elapsed = time.perf_counter() - started
    console.print(
        f"demo finished in {elapsed:.0f} s; results: {run_dir / 'demo_results.json'}", highlight=False
    )
    return report


def command(cfg: DictConfig) -> int:
    """dsaml-demo's exit code: 0, or 2 for a configuration error (reported before any work)."""
    import lightning.pytorch  # noqa: F401  (it sets its logger's level when imported; ours comes after)

    from dsaml.data.synth import SynthConfigError
    from dsaml.meta.l2l import learn2learn

    learn2learn()  # imports the standalone pytorch_lightning package, whose logger is set up the same way
    for name in ("lightning.pytorch", "pytorch_lightning"):  # the demo's output: its stages
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message)
    try:
        run(cfg)
    except (ConfigError, SynthConfigError) as error:
        Console(stderr=True).print(f"[red]dsaml-demo:[/red] {error}", highlight=False)
        return 2
    return 0


main = hydra_command("demo", command, quiet=["dsaml.data.catalogue"])


if __name__ == "__main__":
    main()
