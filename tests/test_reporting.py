"""dsaml.reporting against hand-computed statistics, tables and gains."""

from __future__ import annotations

import json
import math

import pytest

from dsaml import reporting
from dsaml.reporting import Run


def test_t_interval_and_t_test_by_hand():
    # [1, 2, 3]: mean 2, sd 1, sem 1/sqrt(3); t(0.975, 2 dof) = 4.3027 (printed tables)
    mean, half = reporting.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    # t = 2 / (1 / sqrt(3)) = sqrt(12); with 2 dof P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2 exactly
    assert reporting.t_test([1.0, 2.0, 3.0]) == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
    # 1 dof is the Cauchy distribution: t(0.975) = tan(0.475 pi); [0, 2]: mean 1, sem 1
    assert reporting.t_interval([0.0, 2.0])[1] == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    assert math.isnan(reporting.t_interval([0.5])[1]) and math.isnan(reporting.t_test([0.5]))


def test_wilcoxon_exact_by_enumeration():
    # |x| ranks 1, 2, 3, 4; W+ = 1 + 3 + 4 = 8; of the 16 sign patterns 3 reach >= 8 -> p = 2 * 3/16
    assert reporting.wilcoxon([0.1, -0.2, 0.3, 0.4]) == pytest.approx(0.375)
    # tied |x| share rank 1.5: W+ = 1.5 + 3 = 4.5; sums of {1.5, 1.5, 3}: 3 of 8 patterns >= 4.5
    assert reporting.wilcoxon([1.0, -1.0, 2.0]) == pytest.approx(0.75)
    # zeros are dropped: [1, 2] -> W+ = 3, 1 of 4 patterns -> p = 0.5
    assert reporting.wilcoxon([0.0, 1.0, 2.0]) == pytest.approx(0.5)
    # 1..30 all positive: only 1 of the 2^30 sign patterns reaches W+ = 465
    assert reporting.wilcoxon(list(range(1, 31))) == pytest.approx(2 / 2**30, rel=1e-6)
    assert math.isnan(reporting.wilcoxon([0.0, 0.0]))


def results(rows: dict[str, float], per_rater: dict[tuple[str, str], tuple[float, int]]) -> dict:
    """A results.json with the given protocol averages and per-rater (average, n); other scores = 0."""
    zeros = dict.fromkeys(reporting.METRICS, 0.0)
    return {
        "rows": [{"protocol": p, **zeros, "average": a, "n": 4} for p, a in rows.items()],
        "per_rater": [
            {"protocol": p, "rater": r, **zeros, "average": a, "n": n} for (p, r), (a, n) in per_rater.items()
        ],
    }


def test_score_table_mean_and_interval_over_seeds():
    runs = [
        Run("maml", seed, results({"within": value}, {})) for seed, value in ((0, 0.5), (1, 0.6), (2, 0.7))
    ]
    (entry,) = reporting.score_table(runs)
    assert entry["condition"] == "maml within" and entry["seeds"] == 3 and entry["n"] == 4
    # [0.5, 0.6, 0.7]: mean 0.6, sd 0.1 -> half-width 4.3027 * 0.1 / sqrt(3)
    assert entry["average"] == pytest.approx(0.6)
    assert entry["average_ci"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3), abs=1e-4)
    header, rows = reporting.score_rows([entry], scores=("average",))
    assert header == ["condition", "average", "seeds", "n"] and rows == [
        ["maml within", "0.600 ± 0.248", "3", "4"]
    ]


def test_paired_gains_pair_raters_by_protocol_seed_and_pair_count():
    base = {
        0: {("cross", "a"): (0.5, 2), ("cross", "b"): (0.4, 2), ("cross", "c"): (0.3, 1)},
        1: {("cross", "a"): (0.6, 2), ("cross", "b"): (0.2, 2), ("cross", "c"): (0.3, 1)},
    }
    cand = {
        0: {("cross", "a"): (0.7, 2), ("cross", "b"): (0.3, 2), ("cross", "c"): (0.9, 2)},
        1: {("cross", "a"): (0.6, 2), ("cross", "b"): (0.5, 2), ("cross", "c"): (0.9, 2)},
    }
    runs = [Run("dmer", s, results({}, base[s])) for s in (0, 1)]
    runs += [Run("maml", s, results({}, cand[s])) for s in (0, 1)]
    kinds = {"a": "typical", "b": "inverted"}
    summaries, per_rater = reporting.paired_gains(runs, "dmer", kinds)
    # rater a: (0.2 + 0.0) / 2 = 0.1; b: (-0.1 + 0.3) / 2 = 0.1; c: other pair count (2 vs 1) -> left out
    assert per_rater == {"maml cross": pytest.approx({"a": 0.1, "b": 0.1})}
    (summary,) = summaries
    assert summary["n"] == 2 and summary["seeds"] == 2 and summary["improved"] == 2
    assert summary["mean"] == pytest.approx(0.1) and summary["std"] == pytest.approx(0.0, abs=1e-12)
    assert set(summary["by_kind"]) == {"typical", "inverted"} and summary["by_kind"]["typical"]["n"] == 1
    header, rows = reporting.gain_rows(summaries)
    assert header[-2:] == ["inverted", "typical"] and rows[0][1].startswith("+0.100") and rows[0][2] == "2/2"
    assert header[3] == "not worse by > 0.01" and rows[0][3] == "2/2"
    # the terminal's two tables hold the same cells: the first five columns, then tests and kinds as rows
    narrow_header, narrow_rows = reporting.gain_rows(summaries, narrow=True)
    assert narrow_header == ["comparison", "gain (95% CI)", "improve", "not worse", "worst"]
    assert narrow_rows == [rows[0][:5]]
    test_header, test_rows = reporting.test_rows(summaries)
    assert test_header[1:] == ["raters", "gain (95% CI)", "t-test p", "Wilcoxon p"]
    assert test_rows[0] == ["maml cross", "2", rows[0][1], rows[0][5], rows[0][6]]
    # kinds in name order; typical: rater a alone, gain 0.1 and no interval from one rater
    assert test_rows[1:] == [["  inverted", "1", "+0.100", "", ""], ["  typical", "1", "+0.100", "", ""]]
    margins = reporting.summarize_gains({"a": -0.02, "b": -0.005, "c": 0.0, "d": 0.3})
    assert (margins["improved"], margins["not_worse"], margins["worst"]) == (1, 3, -0.02)
    with pytest.raises(
        ValueError, match=r"baseline='nope' is not a run label; the runs are: \['dmer', 'maml'\]"
    ):
        reporting.paired_gains(runs, "nope")


def test_paired_gains_keep_methods_apart():
    base = Run("dmer", 0, results({}, {("cross", "a"): (0.5, 1)}))
    rows = results({}, {})
    rows["per_rater"] = [
        {"protocol": "cross", "rater": "a", "method": m, "average": v, "n": 1}
        for m, v in (("maml", 0.4), ("calibrate", 0.8))
    ]
    summaries, per_rater = reporting.paired_gains([base, Run("pdmer", 0, rows)], "dmer")
    assert per_rater == {
        "pdmer cross maml": pytest.approx({"a": -0.1}),
        "pdmer cross calibrate": pytest.approx({"a": 0.3}),
    }


def test_find_runs_labels_a_sweep_by_its_overrides(tmp_path):
    for index, (method, seed) in enumerate([("maml", 0), ("maml", 1), ("head", 0)]):
        run = tmp_path / "sweep" / str(index)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=pdmer_synthetic\n- adapt={method}\n- seed={seed}\n- paths.store=/x.h5\n"
        )
        (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\ntask: {{}}\n")
        (run / "results.json").write_text(json.dumps(results({"within": 0.5}, {})))
    runs = reporting.find_runs([tmp_path / "sweep"])
    assert [(r.label, r.seed) for r in runs] == [
        ("experiment=pdmer_synthetic adapt=maml", 0),
        ("experiment=pdmer_synthetic adapt=maml", 1),
        ("experiment=pdmer_synthetic adapt=head", 0),
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("[]")
    with pytest.raises(ValueError, match="not a dsaml results.json"):
        reporting.find_runs([tmp_path / "bad"])
    with pytest.raises(FileNotFoundError, match="no results.json under"):
        reporting.find_runs([tmp_path / "sweep" / "0" / ".hydra"])


def test_dsaml_report_command_writes_tables_json_and_plot(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from app_fixtures import capture
    from dsaml.cli import report
    from dsaml.config import CONFIG_DIR

    for seed, (base, cand) in enumerate([(0.5, 0.6), (0.4, 0.6)]):
        for label, value in (("dmer", base), ("maml", cand)):
            folder = tmp_path / "runs" / label / f"seed_{seed}"
            folder.mkdir(parents=True)
            per = {("cross", "a"): (value, 1), ("cross", "b"): (value - 0.1, 1)}
            (folder / "results.json").write_text(json.dumps(results({"cross": value}, per)))

    def run(*overrides: str) -> tuple[int, str]:
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("report", overrides=[f"out={tmp_path / 'out'}", *overrides])
            console, buffer = capture()
            return report.run(cfg, console), buffer.getvalue()

    code, _ = run(f"runs=[{tmp_path / 'runs'}]", "baseline=dmer")
    assert code == 0
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    # gains per seed: a and b both +0.1 (seed 0) and +0.2 (seed 1) -> +0.15 per rater, no spread
    assert written["per_rater_gains"] == {"maml cross": pytest.approx({"a": 0.15, "b": 0.15})}
    (gain,) = written["gains"]
    assert gain["seeds"] == 2 and gain["n"] == 2 and gain["mean"] == pytest.approx(0.15)
    assert gain["t_p"] is None  # no spread over raters: no t statistic (nan -> null in strict JSON)
    scores = {s["condition"]: s for s in written["scores"]}
    assert scores["maml cross"]["average"] == pytest.approx(0.6) and scores["maml cross"]["average_ci"] == 0.0
    # dmer: [0.5, 0.4] -> mean 0.45 ± t(0.975, 1) * 0.05 = 12.706 * 0.05
    assert scores["dmer cross"]["average_ci"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| maml cross | +0.150 ± 0.000 | 2/2 | 2/2 | +0.150 |  | 0.5 |" in text
    assert "| dmer cross |" in text
    assert (tmp_path / "out" / "gains.png").read_bytes()[:4] == b"\x89PNG"

    code, text = run(f"runs=[{tmp_path / 'runs'}]", "baseline=nope")
    assert code == 2 and "baseline='nope' is not a run label" in text
    code, text = run(f"runs=[{tmp_path / 'missing'}]")
    assert code == 2 and "is not a folder" in text
    code, text = run()
    assert code == 2 and "runs is required" in text


def _report(tmp_path, *overrides: str) -> tuple[int, str, str]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from app_fixtures import capture
    from dsaml.cli import report
    from dsaml.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("report", overrides=[f"out={tmp_path / 'out'}", *overrides])
    (out, out_text), (err, err_text) = capture(), capture()
    return report.run(cfg, out, err), out_text.getvalue(), err_text.getvalue()


def test_report_skips_unusable_results_naming_them_on_stderr(tmp_path):
    """A truncated or empty results.json aborted the whole report without naming the file, a wrong value type
    gave a traceback, and the errors went to stdout."""
    runs = tmp_path / "runs"
    for seed, value in enumerate((0.5, 0.7)):
        (runs / f"seed_{seed}").mkdir(parents=True)
        (runs / f"seed_{seed}" / "results.json").write_text(json.dumps(results({"within": value}, {})))
    bad = {"truncated": '{"rows": [{"protocol": "within", "aver', "empty": ""}
    wrong = results({"within": 0.6}, {})
    wrong["rows"][0]["average"] = "high"
    bad["typed"] = json.dumps(wrong)
    for name, text in bad.items():
        (runs / name).mkdir()
        (runs / name / "results.json").write_text(text)
    code, out, err = _report(tmp_path, f"runs=[{runs}]")
    assert code == 0, err
    assert f"skipped {runs / 'empty' / 'results.json'}: not readable as JSON (empty or truncated?" in err
    assert f"skipped {runs / 'truncated' / 'results.json'}: not readable as JSON" in err
    assert f"skipped {runs / 'typed' / 'results.json'}: rows[0].average = 'high' is not a number" in err
    assert "skipped" not in out
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(written["runs"]) == 2 and written["scores"][0]["average"] == pytest.approx(0.6)
    code, out, err = _report(tmp_path, f"runs=[{runs / 'typed'}]", "overwrite=true")
    assert code == 2 and "no usable results.json under" in err and "rows[0].average" in err and not out


def test_report_never_replaces_a_file_it_did_not_write(tmp_path):
    runs = tmp_path / "runs" / "seed_0"
    runs.mkdir(parents=True)
    (runs / "results.json").write_text(json.dumps(results({"within": 0.5}, {})))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.md").write_text("my notes")
    code, _, err = _report(tmp_path, f"runs=[{runs}]")
    assert code == 2 and "report.md' exists and is not a dsaml-report output; pass overwrite=true" in err
    assert (tmp_path / "out" / "report.md").read_text() == "my notes"
    assert _report(tmp_path, f"runs=[{runs}]", "overwrite=true")[0] == 0
    assert _report(tmp_path, f"runs=[{runs}]")[0] == 0  # its own report: replaced
