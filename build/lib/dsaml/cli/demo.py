"""`dsaml-demo` (`make demo`): the whole job on a generated DEAM-format corpus, in minutes on a CPU.

1. corpus: `dsaml-synth` preset (reused when it is already there with the same plan),
2. feature store: `dsaml-preprocess` (reused when up to date),
3. DMER: `dsaml-train experiment=dmer_synthetic` (fit, then test the best checkpoint on the test songs),
4. PDMER: `dsaml-train experiment=pdmer_synthetic init_from=<the DMER checkpoint>` (first-order MAML over
   raters; tests unadapted, within-song and cross-song adaptation),
5. results: one table (DMER; PDMER before / after adaptation), the adaptation gain per rater over the
   unadapted model and over the DMER model, with its spread, and plots in the run directory (curves
   before/after personalisation, attention maps, per-rater gains),
6. the user tools: `dsaml-predict` on a test song, `dsaml-personalize` for one test rater (a held-out song
   scored before/after), `dsaml-predict` with the adapted checkpoint.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from dsaml.cli.entry import hydra_command
from dsaml.cli.predict import plain_options
from dsaml.data.validation import ConfigError, from_mapping
from dsaml.models import DSAMLConfig
from dsaml.models.checkpoint import load_network
from dsaml.plots import plot_attention, plot_curves, plot_rater_gains
from dsaml.training.evaluation import METRIC_KEYS, predict, run_protocols, scores_of

DEVICES = ("cpu", "gpu")  # dsaml-train trainer presets
SHOWN = METRIC_KEYS + ("average",)
ROW_LABELS = {  # key -> (table label, what it is)
    "dmer": ("DMER", "DMER model, scored on the rater-averaged curves of the test songs"),
    "dmer_on_raters": ("DMER on raters", "DMER model (not adapted), scored on each rater's own curves"),
    "pdmer_unadapted": ("PDMER before", "meta-trained PDMER model before adaptation, rater curves"),
    "pdmer_within_song": ("PDMER within-song", "adapted on the rater's first 30 s of the song, scored after"),
    "pdmer_cross_song": ("PDMER cross-song", "adapted on another song of the rater, scored on this song"),
}
ADAPTED_NAMES = {"pdmer_within_song": "within-song", "pdmer_cross_song": "cross-song"}
COLUMN_NAMES = {"arousal": "A", "valence": "V", "ccc": "CCC", "pcc": "PCC", "rmse": "RMSE"}


@dataclass(frozen=True)
class DemoConfig:
    """conf/demo.yaml without `paths` (see there for each key)."""

    synth: dict[str, Any]
    seed: int
    corpus: str
    store: str
    out: str
    workers: int = 2
    device: str = "cpu"
    examples: int = 4
    pdmer_from_dmer: bool = True
    dmer: dict[str, Any] = field(default_factory=lambda: {"experiment": "dmer_synthetic"})
    pdmer: dict[str, Any] = field(default_factory=lambda: {"experiment": "pdmer_synthetic"})

    def __post_init__(self) -> None:
        from dsaml.data.synth import SynthConfig

        object.__setattr__(self, "synth", SynthConfig.from_mapping(self.synth))
        if self.device not in DEVICES:
            raise ConfigError(f"device={self.device!r} is not one of {', '.join(DEVICES)}")
        for key in ("seed", "workers", "examples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{key}={value!r}: expected an integer >= 0")
        if not isinstance(self.pdmer_from_dmer, bool):
            raise ConfigError(f"pdmer_from_dmer={self.pdmer_from_dmer!r}: expected true or false")
        for key in ("dmer", "pdmer"):
            if not isinstance(getattr(self, key), dict) or "experiment" not in getattr(self, key):
                raise ConfigError(f"{key}: expected a mapping: an `experiment` preset and settings on top")


@dataclass
class TrainedRun:
    """A finished dsaml-train run: its directory, composed config, results.json and best checkpoint."""

    name: str
    directory: Path
    cfg: DictConfig
    results: dict[str, list[dict[str, Any]]]
    checkpoint: Path

    def row(self, protocol: str) -> dict[str, Any] | None:
        return next((r for r in self.results["rows"] if r["protocol"] == protocol), None)


class Stages:
    """Numbered stage headers with the elapsed time, so progress is visible between progress bars."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.index, self.started = console, total, 0, time.perf_counter()

    def __call__(self, title: str) -> None:
        self.index += 1
        elapsed = time.perf_counter() - self.started
        self.console.rule(
            f"[bold]{self.index}/{self.total} {title}[/bold]  [dim]({elapsed:.0f} s so far)[/dim]"
        )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# ------------------------------------------------------------------ stages 1-4
def make_corpus(config: DemoConfig, console: Console) -> bool:
    """Generate the corpus (or reuse an identical one); returns whether it was (re)generated."""
    from dsaml.data.synth import generate_corpus

    summary = generate_corpus(
        config.corpus, config.synth, config.seed, workers=max(1, config.workers), console=console
    )
    for label, value in summary.lines():
        console.print(f"  {label:20s} {value}", highlight=False)
    return not summary.reused


def make_store(config: DemoConfig, console: Console, rebuild: bool) -> Path:
    """The corpus's feature store: reused when up to date, rebuilt when the corpus was just (re)generated
    or the store was made from other input (it is the demo's own derived file)."""
    from dsaml.cli.preprocess import configs
    from dsaml.cli.preprocess import run as preprocess
    from dsaml.data.preprocess import store_is_current

    cfg = compose(
        "preprocess",
        overrides=[
            "data=synthetic",
            f"data.root={config.corpus}",
            f"paths.store={config.store}",
            f"workers={config.workers}",
        ],
    )
    if not rebuild and Path(config.store).is_file():
        rebuild = not store_is_current(*configs(cfg))
    cfg.overwrite = rebuild
    if preprocess(cfg, console):
        raise RuntimeError(f"dsaml-preprocess failed for {config.corpus} (see the messages above)")
    return Path(config.store)


def best_checkpoint(directory: Path) -> Path:
    """The run's selected checkpoint (ModelCheckpoint's top-1 epoch_*.ckpt), else its last.ckpt."""
    found = sorted((directory / "checkpoints").glob("epoch_*.ckpt")) or [
        directory / "checkpoints" / "last.ckpt"
    ]
    if not found[-1].is_file():
        raise FileNotFoundError(f"no checkpoint in {directory / 'checkpoints'}")
    return found[-1]


def to_overrides(settings: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested settings -> dotted Hydra overrides: {"task": {"lr": 0.001}} -> ["task.lr=0.001"]."""
    out = []
    for key, value in settings.items():
        if isinstance(value, dict):
            out += to_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


def train(
    name: str, settings: dict[str, Any], config: DemoConfig, run_dir: Path, init_from: Path | None = None
) -> TrainedRun:
    """Fit and test one `dsaml-train` configuration into run_dir/name (starting from the weights of
    `init_from` when given); returns its results."""
    from dsaml.training.run import run

    directory = run_dir / name
    overrides = [
        *([f"init_from={init_from}"] if init_from is not None else []),
        f"experiment={settings['experiment']}",
        f"trainer={config.device}",
        *to_overrides({k: v for k, v in settings.items() if k != "experiment"}),
        f"seed={config.seed}",
        f"paths.store={config.store}",
        f"paths.output_dir={directory}",
        "trainer.enable_model_summary=false",
    ]
    cfg = compose("train", overrides=overrides)
    run(cfg)
    results = json.loads((directory / "results.json").read_text())
    return TrainedRun(name, directory, cfg, results, best_checkpoint(directory))


# ------------------------------------------------------------------ stage 5: analysis
def test_items(pdmer: TrainedRun) -> list[dict[str, Any]]:
    """The PDMER test items ((song, rater) pairs with cross-song support), as dsaml-train tests them."""
    from dsaml.training.config import TaskConfig
    from dsaml.training.run import datamodule_from

    task = TaskConfig.from_dict(OmegaConf.to_container(pdmer.cfg.task, resolve=True))
    model = DSAMLConfig.from_dict(OmegaConf.to_container(pdmer.cfg.model, resolve=True))
    dataset = datamodule_from(pdmer.cfg, task, model).test_dataloader().dataset
    return [dataset[i] for i in range(len(dataset))]


def _query(item: dict[str, Any], window: int) -> dict[str, Any]:
    return {k: item[k][window:] for k in ("logmel", "arousal", "valence")}


def score_on_raters(
    net: torch.nn.Module, items: list[dict[str, Any]], window: int, task: dict[str, Any], query_only: bool
) -> list[dict[str, float]]:
    """Scores of `net` (no adaptation) on each item's rater curves: the within-song query region
    (segments `window`..) or the whole song. Each song is predicted once and scored for all its raters."""
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rows = []
    for item in items:
        seq = _query(item, window) if query_only else item
        if item["song"] not in cache:
            cache[item["song"]] = predict(net, seq, window, task["stitch"], task["eval_batch_size"])
        rows.append(scores_of(*cache[item["song"]], seq["arousal"], seq["valence"]))
    return rows


def mean_row(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {**{k: float(np.mean([r[k] for r in rows])) for k in SHOWN}, "n": len(rows)}


def per_rater_average(rows: list[dict[str, float]], items: list[dict[str, Any]]) -> dict[str, float]:
    """Mean "average" score per rater over that rater's test songs."""
    by_rater: dict[str, list[float]] = {}
    for row, item in zip(rows, items, strict=True):
        by_rater.setdefault(item["rater"], []).append(row["average"])
    return {rater: float(np.mean(values)) for rater, values in by_rater.items()}


def rater_gains(
    pdmer: TrainedRun, baselines: dict[str, dict[str, dict[str, float]]]
) -> dict[str, dict[str, float]]:
    """Per-rater gain in the "average" score of an adapted protocol over a baseline scored on the same
    (song, rater) pairs and region. baselines = {protocol: {baseline name: {rater: mean average score}}};
    returns {"<within-song|cross-song> vs <baseline>": {rater: gain}}."""
    per = {(r["protocol"], r["rater"]): r["average"] for r in pdmer.results["per_rater"]}
    gains = {}
    for protocol, by_baseline in baselines.items():
        for baseline, scores in by_baseline.items():
            values = {
                rater: per[(protocol, rater)] - score
                for rater, score in scores.items()
                if (protocol, rater) in per
            }
            if values:
                gains[f"{ADAPTED_NAMES[protocol]} vs {baseline}"] = values
    return gains


def gain_summary(gains: dict[str, dict[str, float]], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Per comparison: mean ± std of the per-rater gains, how many raters improve, and the mean gain per
    synthetic rater kind (typical, valence_inverted, ...)."""
    out = []
    for comparison, values in gains.items():
        g = np.array(list(values.values()))
        by_kind: dict[str, list[float]] = {}
        for rater, gain in values.items():
            by_kind.setdefault(kinds.get(rater, "unknown"), []).append(gain)
        out.append(
            {
                "comparison": comparison,
                "n": len(g),
                "mean": float(g.mean()),
                "std": float(g.std()),
                "improved": int((g > 0).sum()),
                "by_kind": {k: {"mean": float(np.mean(v)), "n": len(v)} for k, v in sorted(by_kind.items())},
            }
        )
    return out


def results_table(rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Test results (mean over songs / song-rater pairs)", title_style="bold")
    table.add_column("model", style="bold", no_wrap=True)
    for key in SHOWN:
        dimension, _, metric = key.partition("_")
        name = f"{COLUMN_NAMES[dimension]} {COLUMN_NAMES[metric]}" if metric else "avg"
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("n", justify="right")
    for key, row in rows.items():
        table.add_row(ROW_LABELS[key][0], *(f"{row[k]:.3f}" for k in SHOWN), str(row["n"]))
    return table


def gains_table(summary: list[dict[str, Any]]) -> Table:
    table = Table(
        title="Adaptation gain per rater (average score: adapted PDMER - baseline on the same pairs)",
        title_style="bold",
    )
    kinds = sorted({k for row in summary for k in row["by_kind"]})
    table.add_column("comparison")
    table.add_column("mean ± std over raters", justify="right")
    table.add_column("improve", justify="right")
    for kind in kinds:
        table.add_column(kind.replace("_", " "), justify="right")
    for row in summary:
        per_kind = [row["by_kind"].get(k) for k in kinds]
        table.add_row(
            row["comparison"],
            f"{row['mean']:+.3f} ± {row['std']:.3f}",
            f"{row['improved']}/{row['n']}",
            *(f"{k['mean']:+.3f} ({k['n']})" if k else "" for k in per_kind),
        )
    return table


def plot_examples(
    pdmer: TrainedRun,
    dmer_net: torch.nn.Module,
    pdmer_net: torch.nn.Module,
    items: list[dict[str, Any]],
    gains: dict[str, float],
    kinds: dict[str, str],
    count: int,
    out: Path,
) -> list[Path]:
    """Curves of `count` test pairs (one per rater, the raters with the largest and smallest gains first):
    the rater's curve, the DMER model, PDMER before and after within-song and cross-song adaptation."""
    task = pdmer.cfg.task
    window = int(task.support_segments)
    ranked = sorted(gains, key=gains.get)
    chosen = list(dict.fromkeys(ranked[::-1][: (count + 1) // 2] + ranked[: count // 2]))
    paths = []
    features = pdmer.results.get("features", {})
    start_s, step_s = float(features.get("start_s", 15.0)), float(features.get("segment_s", 0.5))
    for rater in chosen:
        item = next(it for it in items if it["rater"] == rater and len(it["arousal"]) > window)
        protocols = ["pdmer_unadapted", "pdmer_within_song", "pdmer_cross_song"]
        results = run_protocols(
            pdmer_net,
            item,
            protocols,
            window=window,
            adapt_steps=_adapt_steps(task),
            inner_lr=float(task.inner_lr),
            first_order=bool(task.first_order),
            stitch=str(task.stitch),
            batch_size=int(task.eval_batch_size),
        )
        dmer_a, dmer_v = predict(dmer_net, item, window, str(task.stitch), int(task.eval_batch_size))
        curves = {"DMER model": (dmer_a.numpy(), dmer_v.numpy())}
        labels = {
            "pdmer_unadapted": "PDMER before",
            "pdmer_within_song": "PDMER within-song adapted",
            "pdmer_cross_song": "PDMER cross-song adapted",
        }
        for protocol, label in labels.items():
            if protocol in results:
                scores, (pred_a, pred_v, _, _) = results[protocol]
                curves[f"{label} ({scores['average']:.2f})"] = (pred_a.numpy(), pred_v.numpy())
        path = out / f"curves_{item['song']}_{rater}.png"
        title = (
            f"test song {item['song']}, rater {rater} ({kinds.get(rater, '?')} rater); in brackets: average "
            "score; shaded: the within-song support"
        )
        paths.append(
            plot_curves(
                path,
                (item["arousal"].numpy(), item["valence"].numpy()),
                curves,
                title,
                start_s,
                step_s,
                support_until=window,
            )
        )
    return paths


def _adapt_steps(task: DictConfig) -> int:
    return int(task.inner_steps if task.eval_inner_steps is None else task.eval_inner_steps)


def plot_attention_maps(run: TrainedRun, net: torch.nn.Module, item: dict[str, Any], out: Path) -> Path:
    """Head-averaged attention maps of the first 60 segments of a test song, every pass and layer."""
    window = int(run.cfg.task.support_segments)
    cfg: DSAMLConfig = net.cfg
    with torch.no_grad():
        maps = net(item["logmel"][None, :window], None, return_attention=True)["attention_maps"][0].mean(
            dim=1
        )
    names = ["local", "global"] if cfg.attention == "dual" else [cfg.attention]
    title = (
        f"{run.name}: attention of song {item['song']} (first {window} segments), head-averaged; "
        f"local radius {cfg.local_radius}, global radius {cfg.global_radius}"
    )
    return plot_attention(out / f"attention_{run.name}.png", maps.numpy(), names, title)


def analyse(
    dmer: TrainedRun,
    pdmer: TrainedRun,
    items: list[dict[str, Any]],
    corpus: Path,
    run_dir: Path,
    examples: int,
    console: Console,
) -> dict[str, Any]:
    """Stage 5: the results table, per-rater gains and plots; writes demo_results.json."""
    from dsaml.data.synth import load_truth

    kinds = {rater: info["kind"] for rater, info in load_truth(corpus)["raters"].items()}
    dmer_net, _, _ = load_network(dmer.checkpoint)
    pdmer_net, _, _ = load_network(pdmer.checkpoint)
    task = OmegaConf.to_container(pdmer.cfg.task, resolve=True)
    window = int(task["support_segments"])
    long_items = [it for it in items if len(it["arousal"]) > window]
    cross_items = [it for it in items if it.get("cross_support") is not None]
    console.print(
        f"scoring the DMER model and the unadapted PDMER model on the {len(long_items)} within-song and "
        f"{len(cross_items)} cross-song test pairs ...",
        highlight=False,
    )
    dmer_on_raters = score_on_raters(dmer_net, long_items, window, task, query_only=True)
    per_rater_unadapted = {
        r["rater"]: r["average"] for r in pdmer.results["per_rater"] if r["protocol"] == "pdmer_unadapted"
    }
    baselines = {
        "pdmer_within_song": {
            "PDMER before": per_rater_unadapted,
            "DMER": per_rater_average(dmer_on_raters, long_items),
        },
        "pdmer_cross_song": {
            name: per_rater_average(
                score_on_raters(net, cross_items, window, task, query_only=False), cross_items
            )
            for name, net in (("PDMER before", pdmer_net), ("DMER", dmer_net))
        },
    }

    rows = {"dmer": dmer.row("dmer"), "dmer_on_raters": mean_row(dmer_on_raters)}
    rows.update({p: pdmer.row(p) for p in ("pdmer_unadapted", "pdmer_within_song", "pdmer_cross_song")})
    rows = {k: v for k, v in rows.items() if v is not None}
    gains = rater_gains(pdmer, baselines)
    summary = gain_summary(gains, kinds)
    console.print(results_table(rows))
    for key in rows:
        console.print(f"  [bold]{ROW_LABELS[key][0]}[/bold]: {ROW_LABELS[key][1]}", highlight=False)
    console.print(gains_table(summary))

    plots = run_dir / "plots"
    console.print(f"plots -> {plots}")
    made = [
        plot_rater_gains(
            plots / "rater_gains.png",
            gains,
            "average score",
            "Per-rater gain of the adapted PDMER model over the unadapted one and over the DMER model",
            labels={r: f"{r[:6]} ({kinds.get(r, '?')})" for g in gains.values() for r in g},
        )
    ]
    made += plot_examples(
        pdmer, dmer_net, pdmer_net, items, next(iter(gains.values()), {}), kinds, examples, plots
    )
    made += [
        plot_attention_maps(run, net, long_items[0], plots)
        for run, net in ((dmer, dmer_net), (pdmer, pdmer_net))
    ]
    report = {
        "rows": [
            {"model": ROW_LABELS[k][0], "key": k, "meaning": ROW_LABELS[k][1], **v} for k, v in rows.items()
        ],
        "gains": summary,
        "per_rater_gains": gains,
        "rater_kinds": {r: kinds.get(r) for g in gains.values() for r in g},
        "runs": {"dmer": str(dmer.directory), "pdmer": str(pdmer.directory)},
        "plots": [str(p) for p in made],
    }
    (run_dir / "demo_results.json").write_text(json.dumps(report, indent=2))
    return report


# ------------------------------------------------------------------ stage 6: the user tools
def run_tool(name: str, overrides: list[str], console: Console) -> None:
    """One user command (dsaml-predict / dsaml-personalize) as a user would type it: printed, then run."""
    from dsaml.cli import personalize, predict

    console.print(
        f"$ dsaml-{name} {' '.join(shlex.quote(o) for o in overrides)}", markup=False, highlight=False
    )
    code = {"predict": predict.run, "personalize": personalize.run}[name](compose(name, overrides), console)
    if code:
        raise RuntimeError(f"dsaml-{name} failed with exit code {code} (see the messages above)")


def try_the_tools(
    dmer: TrainedRun,
    pdmer: TrainedRun,
    items: list[dict[str, Any]],
    config: DemoConfig,
    run_dir: Path,
    console: Console,
) -> dict[str, Any]:
    """Stage 6: dsaml-predict on a test song with the DMER model; dsaml-personalize for the test rater with
    the most test songs (their DEAM per-rater files; the last song held out and scored before/after), then
    dsaml-predict with the adapted checkpoint. Returns the paths written."""
    from dsaml.data.deam import PER_RATER_DIR
    from dsaml.data.synth import deam_tree, load_truth

    corpus = Path(config.corpus)
    layout = load_truth(corpus)["layout"]
    audio, annotations = deam_tree.audio_dir(corpus, layout), deam_tree.annotations_dir(corpus, layout)
    songs_of: dict[str, list[str]] = {}
    for item in items:
        songs_of.setdefault(item["rater"], []).append(item["song"])
    rater = max(sorted(songs_of), key=lambda r: len(songs_of[r]))
    songs = sorted(set(songs_of[rater]), key=int)
    out = run_dir / "tools"
    first = audio / f"{songs[0]}.mp3"
    run_tool("predict", [f"ckpt={dmer.checkpoint}", f"inputs=[{first}]", f"out={out}"], console)
    adapted = out / f"personalized_{rater}.ckpt"
    run_tool(
        "personalize",
        [
            f"ckpt={pdmer.checkpoint}",
            "audio=[" + ",".join(str(audio / f"{s}.mp3") for s in songs) + "]",
            f'annotations=["{annotations / PER_RATER_DIR}"]',
            f"rater={rater}",
            f"holdout=[{songs[-1]}]",
            f"out={adapted}",
        ],
        console,
    )
    run_tool("predict", [f"ckpt={adapted}", f"inputs=[{audio / f'{songs[-1]}.mp3'}]", f"out={out}"], console)
    return {"rater": rater, "songs": songs, "adapted_checkpoint": str(adapted), "folder": str(out)}


# ------------------------------------------------------------------ entry point
def run(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    """The five stages; returns the report written to <out>/demo_results.json."""
    console = console or Console(stderr=True)
    if not console.is_terminal:  # logs: wide enough for the results table
        console.width = max(console.width, 110)
    config = from_mapping(DemoConfig, plain_options(cfg), "dsaml-demo")
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]dsaml demo[/bold]: corpus {config.corpus} (preset {config.synth.name}, seed {config.seed}), "
        f"store {config.store}, run directory {run_dir}",
        highlight=False,
    )
    stage = Stages(console, 6)
    stage(f"synthetic DEAM-format corpus (dsaml-synth preset {config.synth.name})")
    generated = make_corpus(config, console)
    stage("feature store (dsaml-preprocess)")
    make_store(config, console, rebuild=generated)
    stage("DMER: train on rater-averaged curves, test on full songs")
    dmer = train("dmer", config.dmer, config, run_dir)
    start = "from the DMER weights" if config.pdmer_from_dmer else "from scratch"
    stage(f"PDMER: first-order MAML over raters {start}; test before/after adaptation")
    pdmer = train("pdmer", config.pdmer, config, run_dir, dmer.checkpoint if config.pdmer_from_dmer else None)
    stage("results")
    items = test_items(pdmer)
    report = analyse(dmer, pdmer, items, Path(config.corpus), run_dir, config.examples, console)
    stage("your own music: dsaml-predict and dsaml-personalize on the demo's test songs")
    report["tools"] = try_the_tools(dmer, pdmer, items, config, run_dir, console)
    (run_dir / "demo_results.json").write_text(json.dumps(report, indent=2))
    console.print(
        f"demo finished in {stage.elapsed:.0f} s; results: {run_dir / 'demo_results.json'}", highlight=False
    )
    return report


def command(cfg: DictConfig) -> int:
    """dsaml-demo's exit code: 0, or 2 for a configuration error (reported before any work)."""
    import lightning.pytorch  # noqa: F401  (it sets its logger's level when imported; ours comes after)

    from dsaml.data.synth import SynthConfigError
    from dsaml.meta import learn2learn

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
