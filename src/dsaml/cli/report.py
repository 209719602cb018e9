"""`dsaml-report`: aggregate the results.json of several runs into tables and a plot.

dsaml-report runs=[outputs/multirun/2026-12-01/10-00-00]      # scores: mean ± 95% interval over seeds
dsaml-report runs=[sweep/] 'baseline="experiment=dmer_synthetic"' corpus=data/synthetic/demo   # + gains

Writes <out>/report.md, <out>/report.json and, with a baseline, <out>/gains.png (an existing file there that
dsaml-report did not write needs overwrite=true). A results.json that cannot be used (empty, truncated,
values of the wrong type) is skipped with a warning naming it; errors and warnings go to stderr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue
from rich.console import Console

from dsaml import reporting
from dsaml.cli.entry import hydra_command
from dsaml.cli.predict import plain_options
from dsaml.config import Config, ConfigError, existing_folder, flag, folder_list, from_mapping, text
from dsaml.outputs import check_output, record_output, write_text_atomic

OUTPUTS = ("report.md", "report.json", "gains.png")


@dataclass(frozen=True)
class ReportConfig(Config):
    """conf/report.yaml without `paths`: runs (folders of results.json, at least one), out, baseline (a
    run label), corpus (a dsaml-synth corpus folder: per-rater kinds), overwrite."""

    runs: list[str] = folder_list(min_items=1)
    out: str = text()
    baseline: str | None = text(None, optional=True)
    corpus: str | None = existing_folder(None, optional=True)
    overwrite: bool = flag(False)


def run(cfg: DictConfig, console: Console, errors: Console | None = None) -> int:
    """Read the runs, print the tables on `console` and write them; errors and warnings (a results.json
    that cannot be used is skipped, named) go to `errors` (default: `console`). Returns the exit code
    (2: bad input, named)."""
    errors = errors or console
    skipped: list[str] = []
    try:
        config = from_mapping(ReportConfig, plain_options(cfg), "dsaml-report")
        out = Path(config.out)
        for name in OUTPUTS:
            check_output("out", out / name, "report", overwrite=config.overwrite)
        runs = reporting.find_runs(config.runs, skipped)
        kinds = reporting.rater_kinds(config.corpus)
        gains = reporting.paired_gains(runs, config.baseline, kinds) if config.baseline else ([], {})
    except MissingMandatoryValue as error:
        errors.print(f"[red]dsaml-report:[/red] {error.full_key} is required, e.g. runs=[outputs/multirun/X]")
        return 2
    except (ConfigError, ValueError, FileNotFoundError) as error:
        _skipped(errors, skipped)
        errors.print(f"[red]dsaml-report:[/red] {error}", highlight=False)
        return 2
    _skipped(errors, skipped)
    scores = reporting.score_table(runs)
    sections = [("Scores: mean ± 95% interval over seeds", reporting.score_rows(scores))]
    printed = list(sections)  # the terminal's tables: the gains split in two, each within 100 columns
    if config.baseline:
        title = f"Per-rater gain in the average score vs {config.baseline} (same protocol, pairs and seed)"
        sections.append((title, reporting.gain_rows(gains[0])))
        not_worse = f"not worse: gain > -{reporting.NOT_WORSE_MARGIN:g}"
        printed.append((f"{title}; {not_worse}", reporting.gain_rows(gains[0], narrow=True)))
        title = "The same gains: paired tests over raters, and per rater kind"
        printed.append((title, reporting.test_rows(gains[0])))
    for title, (header, rows) in printed:
        console.print(reporting.rich_table(title, header, rows))
    text = [f"# dsaml-report of {', '.join(config.runs)}", f"{len(runs)} runs."]
    for title, (header, rows) in sections:
        text += ["", f"## {title}", "", reporting.markdown(header, rows)]
    write_output(out / "report.md", "\n".join(text) + "\n")
    report = {"runs": [str(r.path) for r in runs], "scores": scores, "baseline": config.baseline}
    if config.baseline:
        from dsaml.plots import plot_gain_intervals

        report |= {"gains": gains[0], "per_rater_gains": gains[1], "rater_kinds": kinds}
        plot_gain_intervals(
            out / "gains.png", gains[0], f"Per-rater gain vs {config.baseline} (95% interval)"
        )
        record_output(out / "gains.png", "report")
    write_output(out / "report.json", json.dumps(reporting.finite(report), indent=2))
    console.print(f"report -> {out / 'report.md'}", highlight=False)
    return 0


def write_output(path: Path, text: str) -> None:
    record_output(write_text_atomic(path, text), "report")


def _skipped(errors: Console, skipped: list[str]) -> None:
    for reason in skipped:
        errors.print(f"[yellow]dsaml-report: skipped[/yellow] {reason}", highlight=False, markup=True)


main = hydra_command("report", lambda cfg: run(cfg, Console(), Console(stderr=True)))


if __name__ == "__main__":
    main()
