"""Comparisons of test results: scores over seeds and per-rater gains against a baseline (no torch).

Input is what `dsaml-train` / `dsaml-eval` write: results.json = {"rows": [{"protocol", <metric keys>,
"average", "n", optionally "method"}], "per_rater": [{... , "rater"}]}. A *run* is one results.json with a
label (what distinguishes its settings, e.g. `experiment=pdmer_synthetic`) and a seed; a *condition* is a
(label, protocol, method) of a run's rows, pooled over seeds.

- `score_table`: per condition and metric, the mean over seeds with a 95% t-interval.
- `paired_gains`: per rater, the candidate's average score minus the baseline's on the same (song, rater)
  pairs (same protocol, same seed, same pair count), averaged over seeds; summarised by `summarize_gains`
  (mean, 95% interval, paired t-test and Wilcoxon signed-rank test over raters; per rater kind).
- `t_interval`, `t_test`, `wilcoxon`: the statistics (scipy.stats).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("arousal_ccc", "arousal_pcc", "arousal_rmse", "valence_ccc", "valence_pcc", "valence_rmse")
SCORES = METRICS + ("average",)
RESULTS_FILE = "results.json"
SEED_FOLDER = re.compile(r"seed[_=-]?(\d+)")  # a run folder named after its seed: seed_0, seed=1
NOT_WORSE_MARGIN = 0.01  # a rater is "not worse" when their gain exceeds -NOT_WORSE_MARGIN


# ------------------------------------------------------------------ statistics (scipy.stats)
def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the `level` Student-t interval of the mean); half-width nan for < 2 values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else math.nan), math.nan
    return float(x.mean()), float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * stats.sem(x))


def t_test(values: Sequence[float]) -> float:
    """Two-sided p of the one-sample (paired) t-test of mean 0; nan for < 2 values or no spread."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2 or x.std() == 0:
        return math.nan
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def wilcoxon(values: Sequence[float]) -> float:
    """Two-sided p of the Wilcoxon signed-rank test of symmetry about 0 (zero differences dropped; scipy's
    exact distribution for small samples); nan without non-zero values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if not np.any(x != 0):
        return math.nan
    return float(stats.wilcoxon(x, zero_method="wilcox").pvalue)


# ------------------------------------------------------------------ runs and conditions
@dataclass(frozen=True)
class Run:
    """One results.json: `label` = the settings that distinguish the run (seed excluded), `seed` = the
    replicate it belongs to (a seed, or another key shared by runs that pair with each other)."""

    label: str
    seed: int | str | None
    results: Mapping[str, Any]
    path: Path | None = None


def condition_of(label: str, row: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(run label, protocol, adaptation method or None) of a results row."""
    return label, str(row["protocol"]), row.get("method")


def condition_name(condition: tuple[str, str, str | None]) -> str:
    return " ".join(part for part in (condition[0], condition[1], condition[2]) if part)


def score_table(runs: Iterable[Run], scores: Sequence[str] = SCORES) -> list[dict[str, Any]]:
    """Per condition (in order of appearance): {"condition", "seeds", "n", <score>: mean over seeds,
    <score>_ci: 95% half-width}; n = the sequences per seed (their mean when seeds differ)."""
    pooled: dict[tuple, list[Mapping[str, Any]]] = {}
    for run in runs:
        for row in run.results["rows"]:
            pooled.setdefault(condition_of(run.label, row), []).append(row)
    table = []
    for condition, rows in pooled.items():
        entry: dict[str, Any] = {"condition": condition_name(condition), "seeds": len(rows)}
        for key in scores:
            entry[key], entry[f"{key}_ci"] = t_interval([r[key] for r in rows])
        entry["n"] = float(np.mean([r["n"] for r in rows]))
        table.append(entry)
    return table


def rater_averages(results: Mapping[str, Any], protocol: str, method: str | None = None) -> dict[str, tuple]:
    """{rater: (mean "average" score over the rater's pairs, pair count)} of one protocol (and method)."""
    return {
        r["rater"]: (float(r["average"]), int(r["n"]))
        for r in results["per_rater"]
        if r["protocol"] == protocol and r.get("method") == method
    }


def gains_between(candidate: Mapping[str, tuple], baseline: Mapping[str, tuple]) -> dict[str, float]:
    """{rater: candidate average - baseline average} for the raters both scored on as many pairs."""
    return {
        rater: score - baseline[rater][0]
        for rater, (score, n) in candidate.items()
        if rater in baseline and baseline[rater][1] == n
    }


def summarize_gains(gains: Mapping[str, float], kinds: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Per-rater gains -> {"n", "mean", "ci" (95% half-width), "std", "improved" (gain > 0), "not_worse"
    (gain > -NOT_WORSE_MARGIN), "worst", "t_p", "wilcoxon_p", "by_kind": {kind: the same without by_kind}}
    (kinds: rater -> kind, when known)."""

    def stats(values: list[float]) -> dict[str, Any]:
        mean, ci = t_interval(values)
        return {
            "n": len(values),
            "mean": mean,
            "ci": ci,
            "std": float(np.std(values)),
            "improved": int(sum(v > 0 for v in values)),
            "not_worse": int(sum(v > -NOT_WORSE_MARGIN for v in values)),
            "worst": float(min(values)),
            "t_p": t_test(values),
            "wilcoxon_p": wilcoxon(values),
        }

    out = stats(list(gains.values()))
    by_kind: dict[str, list[float]] = {}
    for rater, gain in gains.items():
        by_kind.setdefault((kinds or {}).get(rater, "unknown"), []).append(gain)
    out["by_kind"] = {kind: stats(values) for kind, values in sorted(by_kind.items())} if kinds else {}
    return out


def paired_gains(
    runs: Sequence[Run], baseline: str, kinds: Mapping[str, str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Every condition with per-rater rows against the run labelled `baseline` under the same protocol and
    seed, on the seeds both have. Returns (one `summarize_gains` dict per condition, with its "condition",
    "label", "protocol", "method" and "seeds"; {condition: {rater: gain averaged over seeds}})."""
    base_rows: dict[tuple[str, int | None], dict[str, tuple]] = {}
    for run in runs:
        if run.label == baseline:
            for protocol in {r["protocol"] for r in run.results["per_rater"]}:
                methods = {r.get("method") for r in run.results["per_rater"] if r["protocol"] == protocol}
                if len(methods) > 1:
                    names = sorted(map(str, methods))
                    raise ValueError(f"baseline {baseline!r} has several methods for {protocol}: {names}")
                base_rows[(protocol, run.seed)] = rater_averages(run.results, protocol, methods.pop())
    if not base_rows:
        labels = sorted({run.label for run in runs})
        raise ValueError(f"baseline={baseline!r} is not a run label; the runs are: {labels}")
    per_seed: dict[tuple, dict[str, list[float]]] = {}
    seeds: dict[tuple, set] = {}
    for run in runs:
        if run.label == baseline:
            continue
        for protocol, method in dict.fromkeys(
            (r["protocol"], r.get("method")) for r in run.results["per_rater"]
        ):
            reference = base_rows.get((protocol, run.seed))
            if reference is None:
                continue
            condition = (run.label, protocol, method)
            gains = gains_between(rater_averages(run.results, protocol, method), reference)
            for rater, gain in gains.items():
                per_seed.setdefault(condition, {}).setdefault(rater, []).append(gain)
            seeds.setdefault(condition, set()).add(run.seed)
    summaries, per_rater = [], {}
    for condition, by_rater in per_seed.items():
        name = condition_name(condition)
        per_rater[name] = {rater: float(np.mean(values)) for rater, values in sorted(by_rater.items())}
        label, protocol, method = condition
        summaries.append(
            {
                "condition": name,
                "label": label,
                "protocol": protocol,
                "method": method,
                "seeds": len(seeds[condition]),
                **summarize_gains(per_rater[name], kinds),
            }
        )
    return summaries, per_rater


# ------------------------------------------------------------------ reading runs
def rater_kinds(corpus: str | Path | None) -> dict[str, str]:
    """{rater: kind} (typical, biased, valence_inverted, ...) of a dsaml-synth corpus; {} without one."""
    from dsaml.data.synth import load_truth

    return {} if corpus is None else {r: info["kind"] for r, info in load_truth(corpus)["raters"].items()}


def _hydra_settings(directory: Path) -> tuple[list[str], int | None]:
    """The run's command-line overrides (.hydra/overrides.yaml) and seed (.hydra/config.yaml)."""
    from omegaconf import OmegaConf

    overrides_file, config_file = (
        directory / ".hydra" / "overrides.yaml",
        directory / ".hydra" / "config.yaml",
    )
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    seed = OmegaConf.load(config_file).get("seed") if config_file.is_file() else None
    return [str(o) for o in overrides], None if seed is None else int(seed)


def run_label(overrides: Sequence[str]) -> str:
    """The overrides that distinguish a run of a sweep: all but seed, paths and hydra settings."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("seed=", "paths.", "hydra.", "hydra/"))]
    return " ".join(kept)


def results_problem(results: Any) -> str | None:
    """What makes a parsed results.json unusable (None when it is fine): its structure and value types."""
    if not isinstance(results, dict) or "rows" not in results or "per_rater" not in results:
        return "not a dsaml results.json (expected 'rows' and 'per_rater')"
    for key, numbers in (("rows", (*SCORES, "n")), ("per_rater", ("average", "n"))):
        entries = results[key]
        if not isinstance(entries, list):
            return f"'{key}' is a {type(entries).__name__}, expected a list"
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("protocol"), str):
                return f"{key}[{index}] is not an object with a 'protocol' name"
            for name in numbers:
                value = entry.get(name)
                if name in entry and (value is not None and not _is_number(value)):
                    return f"{key}[{index}].{name} = {value!r} is not a number"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_results(path: Path) -> dict[str, Any]:
    """A results.json -> its dict; ValueError naming the file when it is empty, truncated or malformed."""
    try:
        results = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not readable as JSON (empty or truncated? {error})") from None
    problem = results_problem(results)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    return results


def find_runs(folders: Iterable[str | Path], skipped: list[str] | None = None) -> list[Run]:
    """Every results.json under `folders` (a run folder, a multirun sweep folder, or folders of them),
    labelled by its Hydra overrides (seed excluded; else by its folders below the searched one, `seed_<n>`
    folders left out) and seed (from .hydra/config.yaml, else a `seed=` override, else a `seed_<n>` folder,
    else the searched folder: the runs of one dsaml-demo folder pair with each other). A file that cannot be
    used raises ValueError naming it, or with a `skipped` list is left out, its reason appended there."""
    runs = []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist")
        for path in sorted(folder.rglob(RESULTS_FILE)):
            directory = path.parent
            overrides, seed = _hydra_settings(directory)
            if seed is None:
                seed = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("seed=")), None)
            parts = directory.relative_to(folder).parts
            seeds = [int(m.group(1)) for part in parts for m in [SEED_FOLDER.fullmatch(part)] if m]
            if seed is None and seeds:
                seed = seeds[-1]
            named = "/".join(part for part in parts if not SEED_FOLDER.fullmatch(part)) or folder.name
            label = run_label(overrides) if overrides else named
            try:
                results = read_results(path)
            except ValueError as error:
                if skipped is None:
                    raise
                skipped.append(str(error))
                continue
            runs.append(Run(label, str(folder) if seed is None else seed, results, path))
    if not runs:
        usable = f"no usable {RESULTS_FILE}" if skipped else f"no {RESULTS_FILE}"
        raise FileNotFoundError(f"{usable} under {', '.join(map(str, folders))}")
    return runs


# ------------------------------------------------------------------ text tables
def _cell(mean: float, ci: float, signed: bool = False) -> str:
    value = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return value if math.isnan(ci) else f"{value} ± {ci:.3f}"


def _p(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3g}"


def score_rows(table: Sequence[Mapping[str, Any]], scores: Sequence[str] = SCORES) -> tuple[list, list]:
    """(header, rows of strings) of a `score_table`."""
    header = ["condition", *scores, "seeds", "n"]
    rows = [
        [e["condition"], *(_cell(e[k], e[f"{k}_ci"]) for k in scores), str(e["seeds"]), f"{e['n']:g}"]
        for e in table
    ]
    return header, rows


def gain_rows(summaries: Sequence[Mapping[str, Any]], narrow: bool = False) -> tuple[list, list]:
    """(header, rows of strings) of gain summaries: mean ± 95% interval over raters, raters improved, raters
    not worse by more than NOT_WORSE_MARGIN, the worst rater, then the paired tests and the mean ± interval
    per rater kind, one column per kind. `narrow`: the first five columns only (a terminal table within 100
    columns; `test_rows` has the rest)."""
    kinds = sorted({k for s in summaries for k in s.get("by_kind", {})})
    not_worse = "not worse" if narrow else f"not worse by > {NOT_WORSE_MARGIN:g}"
    header = ["comparison", "gain (95% CI)", "improve", not_worse, "worst", "t-test p", "Wilcoxon p", *kinds]
    rows = []
    for s in summaries:
        per_kind = [s["by_kind"].get(k) for k in kinds]
        rows.append(
            [
                s["condition"],
                _cell(s["mean"], s["ci"], signed=True),
                f"{s['improved']}/{s['n']}",
                f"{s['not_worse']}/{s['n']}",
                f"{s['worst']:+.3f}",
                _p(s["t_p"]),
                _p(s["wilcoxon_p"]),
                *(f"{_cell(k['mean'], k['ci'], signed=True)} ({k['n']})" if k else "" for k in per_kind),
            ]
        )
    return (header[:5], [row[:5] for row in rows]) if narrow else (header, rows)


def test_rows(summaries: Sequence[Mapping[str, Any]]) -> tuple[list, list]:
    """(header, rows of strings), the rest of `gain_rows(narrow=True)` as rows: per comparison its raters,
    mean gain ± 95% interval and the paired tests over raters, then one row per rater kind (its raters and
    gain; the corpus's rater behaviours, when known)."""
    header = ["comparison / rater kind", "raters", "gain (95% CI)", "t-test p", "Wilcoxon p"]
    rows = []
    for s in summaries:
        rows.append([s["condition"], str(s["n"]), _cell(s["mean"], s["ci"], signed=True), _p(s["t_p"]),
                     _p(s["wilcoxon_p"])])  # fmt: skip
        for kind, k in sorted(s.get("by_kind", {}).items()):
            rows.append([f"  {kind}", str(k["n"]), _cell(k["mean"], k["ci"], signed=True), "", ""])
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def finite(value: Any) -> Any:
    """`value` with every nan float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def rich_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    """A rich Table of (header, rows): first column bold, the others right-aligned."""
    from rich.table import Table

    table = Table(title=title, title_style="bold")
    for index, name in enumerate(header):
        table.add_column(
            name, justify="left" if index == 0 else "right", style="bold" if index == 0 else None
        )
    for row in rows:
        table.add_row(*row)
    return table
