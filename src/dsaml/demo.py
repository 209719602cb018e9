"""The demo's stages (`dsaml-demo`), each a call of the project's own entry points.

- `DemoConfig.check`: conf/demo.yaml, including the two nested `dsaml-train` settings (composed and validated
  as training configs before any work);
- `make_corpus` (`dsaml-synth`), `make_store` (`dsaml-preprocess`);
- `train` (`dsaml-train`: fit, then test the best checkpoint -> results.json) and `evaluate` (`dsaml-eval`:
  a checkpoint under the PDMER run's test settings, e.g. the DMER model on the raters' curves with 0
  adaptation steps);
- `compare`: the results table and per-rater gains (`dsaml.reporting`);
- `example_curves`, `attention_maps`: the demo's figures (`dsaml.plots`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from dsaml import reporting
from dsaml.config import Config, ConfigError, choice, flag, group, integer, text
from dsaml.training.runs import best_checkpoint, train_config

DEVICES = ("cpu", "gpu")  # dsaml-train trainer presets
ROWS = {  # key -> (table label, what it is)
    "dmer": ("DMER", "DMER model, scored on the rater-averaged curves of the test songs"),
    "dmer_on_raters": ("DMER on raters", "DMER model (not adapted), scored on each rater's own curves"),
    "pdmer_unadapted": ("PDMER before", "meta-trained PDMER model before adaptation, rater curves"),
    "pdmer_within_song": ("PDMER within-song", "adapted on the rater's first 30 s of the song, scored after"),
    "pdmer_cross_song": ("PDMER cross-song", "adapted (MAML) on another whole song of the rater"),
    "new_listener": (
        "new listener (auto)",
        "the DMER model personalised by dsaml-personalize's method=auto on another whole song of the rater",
    ),
}
ADAPTED = {"pdmer_within_song": "within-song", "pdmer_cross_song": "cross-song"}


@dataclass(frozen=True)
class DemoConfig(Config):
    """conf/demo.yaml without `paths` (see there for each key). synth: a `SynthConfig` preset; dmer /
    pdmer: dsaml-train settings (an `experiment` preset and keys on top), checked by `check_runs`."""

    seed: int = integer(low=0)
    corpus: str = text()
    store: str = text()
    out: str = text()
    synth: Any = group()
    workers: int = integer(2, low=0)
    device: str = choice("cpu", DEVICES)
    examples: int = integer(4, low=0)
    pdmer_from_dmer: bool = flag(True)
    dmer: dict[str, Any] = group({"experiment": "dmer_synthetic"})
    pdmer: dict[str, Any] = group({"experiment": "pdmer_synthetic"})

    def __post_init__(self) -> None:
        from dsaml.data.synth import SynthConfig

        super().__post_init__()
        object.__setattr__(self, "synth", SynthConfig.from_mapping(self.synth))
        for key in ("dmer", "pdmer"):
            if not isinstance(getattr(self, key), dict) or "experiment" not in getattr(self, key):
                raise ConfigError(f"{key}: expected a mapping: an `experiment` preset and settings on top")

    def run_config(self, name: str, directory: Path, init_from: Path | None = None) -> DictConfig:
        """The composed dsaml-train config of the demo's run `name` (dmer | pdmer) into `directory`."""
        return train_config(
            getattr(self, name),
            directory,
            device=self.device,
            seed=self.seed,
            store=self.store,
            init_from=init_from,
        )

    def check_runs(self) -> None:
        """Compose and validate both dsaml-train configurations (the store need not exist yet)."""
        from dsaml.training.config import validate_train_config

        for name in ("dmer", "pdmer"):  # each run trains the task of its name
            try:
                experiment = getattr(self, name)["experiment"]
                trains = compose("train", overrides=[f"experiment={experiment}"]).task.name
                if trains != name:  # before the settings, which name the keys of the run's task
                    raise ValueError(f"experiment={experiment!r} trains task={trains}")
                validate_train_config(self.run_config(name, Path(self.out) / name), need_store=False)
            except (ValueError, HydraException, OmegaConfBaseException) as error:
                raise ConfigError(f"{name}: {str(error).splitlines()[0]}") from None


# ------------------------------------------------------------------ corpus and store
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

    overrides = ["data=synthetic", f"data.root={config.corpus}", f"paths.store={config.store}"]
    cfg = compose("preprocess", overrides=[*overrides, f"workers={config.workers}"])
    if not rebuild and Path(config.store).is_file():
        rebuild = not store_is_current(*configs(cfg))
    cfg.overwrite = rebuild
    if preprocess(cfg, console):
        raise RuntimeError(f"dsaml-preprocess failed for {config.corpus} (see the messages above)")
    return Path(config.store)


# ------------------------------------------------------------------ dsaml-train and dsaml-eval runs
@dataclass
class DemoRun:
    """A finished dsaml-train / dsaml-eval run: its directory, config, results.json and checkpoint."""

    name: str
    directory: Path
    cfg: DictConfig
    results: dict[str, list[dict[str, Any]]]
    checkpoint: Path

    def row(self, protocol: str) -> dict[str, Any] | None:
        return next((r for r in self.results["rows"] if r["protocol"] == protocol), None)


def train(name: str, config: DemoConfig, run_dir: Path, init_from: Path | None = None) -> DemoRun:
    """`dsaml-train` of the demo's run `name` (dmer | pdmer) into run_dir/name: fit, test the best
    checkpoint."""
    from dsaml.training.run import run

    directory = run_dir / name
    cfg = config.run_config(name, directory, init_from)
    run(cfg)
    results = json.loads((directory / "results.json").read_text())
    return DemoRun(name, directory, cfg, results, best_checkpoint(directory))


def evaluate(
    name: str,
    checkpoint: Path,
    pdmer: DemoRun,
    protocols: list[str],
    config: DemoConfig,
    adaptation: str = "none",
) -> DemoRun:
    """`dsaml-eval` of `checkpoint` with the PDMER run's test settings and an adaptation method (none: the
    network as it is, scored on the same (song, rater) pairs and regions as the adapted model) into
    <run dir>/name."""
    from dsaml.training.run import evaluate as dsaml_eval

    directory = pdmer.directory.parent / name
    task = OmegaConf.to_container(pdmer.cfg.task, resolve=True)
    task = {k: v for k, v in task.items() if k != "test_protocols"}
    cfg = compose(
        "eval",
        overrides=[
            "data=synthetic",
            "task=pdmer",
            f"ckpt_path={checkpoint}",
            f"adaptation={adaptation}",
            f"protocols=[{','.join(protocols)}]",
            f"trainer={config.device}",
            "trainer.enable_model_summary=false",
            f"seed={config.seed}",
            f"paths.store={config.store}",
            f"paths.output_dir={directory}",
        ],
    )
    with open_dict(cfg):
        cfg.overrides = task
    return DemoRun(name, directory, cfg, dsaml_eval(cfg), checkpoint)


# ------------------------------------------------------------------ comparisons
def compare(
    dmer: DemoRun,
    pdmer: DemoRun,
    dmer_on_raters: DemoRun,
    pdmer_before: DemoRun,
    new_listener: DemoRun,
    kinds: dict[str, str],
) -> dict[str, Any]:
    """The results rows (DMER; DMER on the raters' curves; PDMER before / after adaptation; the new-listener
    case with the automatically chosen method) and the per-rater gains of each adapted protocol over the
    unadapted PDMER and the DMER model on the same pairs."""
    rows = {"dmer": dmer.row("dmer"), "dmer_on_raters": dmer_on_raters.row("pdmer_within_song")}
    rows.update({p: pdmer.row(p) for p in ("pdmer_unadapted", *ADAPTED)})
    rows["new_listener"] = new_listener.row("pdmer_cross_song")
    rows = {k: v for k, v in rows.items() if v is not None}
    seed = int(pdmer.cfg.seed)
    candidates = [
        reporting.Run("PDMER", seed, pdmer.results),
        reporting.Run("auto", seed, new_listener.results),
    ]
    summaries, gains = [], {}
    for baseline in (pdmer_before, dmer_on_raters):
        label = ROWS["pdmer_unadapted" if baseline is pdmer_before else "dmer"][0]
        found, per_rater = reporting.paired_gains(
            [*candidates, reporting.Run(label, seed, baseline.results)], label, kinds
        )
        for summary in found:
            adapted = "new listener (auto)" if summary["label"] == "auto" else ADAPTED[summary["protocol"]]
            name = f"{adapted} vs {label}"
            summaries.append({**summary, "condition": name})
            gains[name] = per_rater[summary["condition"]]
    adapted = [*ADAPTED.values(), "new listener (auto)"]
    order = [f"{a} vs {b}" for a in adapted for b in ("PDMER before", "DMER")]
    summaries.sort(key=lambda s: order.index(s["condition"]))
    return {
        "rows": [{"model": ROWS[k][0], "key": k, "meaning": ROWS[k][1], **v} for k, v in rows.items()],
        "gains": summaries,
        "per_rater_gains": {name: gains[name] for name in order if name in gains},
        "rater_kinds": {r: kinds.get(r) for g in gains.values() for r in g},
    }


def results_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the demo's results table."""
    header = ["model", *(k.replace("arousal_", "A ").replace("valence_", "V ") for k in reporting.METRICS)]
    rows = [[r["model"], *(f"{r[k]:.3f}" for k in reporting.SCORES), str(r["n"])] for r in report["rows"]]
    return [*header, "avg", "n"], rows


def tool_commands(dmer: DemoRun, config: DemoConfig) -> tuple[dict[str, Any], list]:
    """The demo's user commands: dsaml-predict on a test song with the DMER model; dsaml-personalize of the
    DMER model for the test rater with the most test songs (their DEAM per-rater files, method=auto; the last
    song held out and scored against the model unadapted -> personalize_report.json); dsaml-predict with the
    adapted checkpoint.
    Returns (what they write, [(command, overrides)])."""
    from dsaml.data.deam import PER_RATER_DIR
    from dsaml.data.synth import deam_tree, load_truth

    corpus = Path(config.corpus)
    truth = load_truth(corpus)
    annotations = deam_tree.annotations_dir(corpus, truth["layout"])
    audio = {song: corpus / truth["songs"][song]["audio"] for song in truth["songs"]}  # .mp3 or .flac
    songs_of = test_songs_of_raters(config.store)
    rater = max(sorted(songs_of), key=lambda r: len(songs_of[r]))
    songs = sorted(songs_of[rater], key=int)
    out = Path(config.out) / "tools"
    adapted = out / f"personalized_{rater}.ckpt"
    # the DMER model: the better base for a new listener (experiments/personalization/RESULTS.md)
    personalize = [
        f"ckpt={dmer.checkpoint}",
        "audio=[" + ",".join(str(audio[s]) for s in songs) + "]",
        f'annotations=["{annotations / PER_RATER_DIR}"]',
        f"rater={rater}",
        f"holdout=[{songs[-1]}]",
        f"out={adapted}",
    ]
    commands = [
        ("predict", [f"ckpt={dmer.checkpoint}", f"inputs=[{audio[songs[0]]}]", f"out={out}"]),
        ("personalize", personalize),
        ("predict", [f"ckpt={adapted}", f"inputs=[{audio[songs[-1]]}]", f"out={out}"]),
    ]
    info = {"rater": rater, "songs": songs, "adapted_checkpoint": str(adapted), "folder": str(out),
            "personalize_report": str(out / "personalize_report.json")}  # fmt: skip
    return info, commands


# ------------------------------------------------------------------ figures
def test_songs_of_raters(store: str | Path) -> dict[str, list[str]]:
    """{rater: their test songs} in the feature store."""
    from dsaml.data.store import FeatureStore

    with FeatureStore(store) as reader:
        return {r: sorted(songs) for r, songs in reader.songs_by_rater("test").items()}


def test_dataset(pdmer: DemoRun) -> Any:
    """The PDMER run's test dataset as dsaml-train tests it: `pairs` [(song, rater)], `[i]` the item."""
    from dsaml.models import DSAMLConfig
    from dsaml.training.config import TaskConfig
    from dsaml.training.run import datamodule_from

    task = TaskConfig.from_dict(OmegaConf.to_container(pdmer.cfg.task, resolve=True))
    model = DSAMLConfig.from_dict(OmegaConf.to_container(pdmer.cfg.model, resolve=True))
    return datamodule_from(pdmer.cfg, task, model).test_dataloader().dataset


def example_curves(
    dmer: DemoRun, pdmer: DemoRun, gains: dict[str, float], kinds: dict[str, str], count: int, out: Path
) -> list[Path]:
    """Curves of `count` test pairs (one per rater, the raters with the largest and smallest gains first):
    the rater's curve, the DMER model, PDMER before and after within-song and cross-song adaptation, each
    from the library's test protocols (`run_protocols`) with the PDMER run's settings."""
    from dsaml.meta import AdaptationConfig, calibration_prior
    from dsaml.models.checkpoint import load_network
    from dsaml.plots import plot_curves
    from dsaml.training.config import TaskConfig
    from dsaml.training.evaluation import run_protocols

    task = TaskConfig.from_dict(OmegaConf.to_container(pdmer.cfg.task, resolve=True))
    window = task.support_segments
    ranked = sorted(gains, key=gains.get)
    chosen = list(dict.fromkeys(ranked[::-1][: (count + 1) // 2] + ranked[: count // 2]))
    dataset = test_dataset(pdmer)
    (dmer_net, _, _), (pdmer_net, _, hparams) = load_network(dmer.checkpoint), load_network(pdmer.checkpoint)
    adaptation = AdaptationConfig.from_dict(pdmer.cfg.get("adaptation")).resolve(task.to_dict())
    prior = calibration_prior(adaptation, hparams.get("calibration_prior"))
    features = pdmer.results.get("features", {})
    start_s, step_s = float(features.get("start_s", 15.0)), float(features.get("segment_s", 0.5))
    labels = {
        "pdmer_unadapted": "PDMER before",
        "pdmer_within_song": "PDMER within-song adapted",
        "pdmer_cross_song": "PDMER cross-song adapted",
    }
    paths = []
    for rater in chosen:
        item = next(
            it
            for i, (_, owner) in enumerate(dataset.pairs)
            if owner == rater
            for it in [dataset[i]]
            if len(it["arousal"]) > window
        )
        settings = dict(task.song_prediction, adaptation=adaptation)
        results = run_protocols(pdmer_net, item, list(labels), prior=prior, **settings)
        _, dmer_curves = run_protocols(dmer_net, item, ["dmer"], **settings)["dmer"]
        curves = {"DMER model": (dmer_curves[0].numpy(), dmer_curves[1].numpy())}
        for protocol, label in labels.items():
            if protocol in results:
                scores, (pred_a, pred_v, _, _) = results[protocol]
                curves[f"{label} ({scores['average']:.2f})"] = (pred_a.numpy(), pred_v.numpy())
        title = (
            f"test song {item['song']}, rater {rater} ({kinds.get(rater, '?')} rater); in brackets: average "
            "score; shaded: the within-song support"
        )
        true = (item["arousal"].numpy(), item["valence"].numpy())
        path = out / f"curves_{item['song']}_{rater}.png"
        paths.append(plot_curves(path, true, curves, title, start_s, step_s, support_until=window))
    return paths


def attention_maps(runs: list[DemoRun], pdmer: DemoRun, out: Path) -> list[Path]:
    """Head-averaged attention maps of each run's network on the first window of the first PDMER test
    song longer than that window, every pass and layer."""
    from dsaml.models.checkpoint import load_network
    from dsaml.plots import plot_attention

    window = int(pdmer.cfg.task.support_segments)
    dataset = test_dataset(pdmer)
    item = next(it for i in range(len(dataset)) for it in [dataset[i]] if len(it["arousal"]) > window)
    paths = []
    for run in runs:
        net, cfg, _ = load_network(run.checkpoint)
        with torch.no_grad():
            maps = net(item["logmel"][None, :window], None, return_attention=True)["attention_maps"][0]
        names = ["local", "global"] if cfg.attention == "dual" else [cfg.attention]
        title = (
            f"{run.name}: attention of song {item['song']} (first {window} segments), head-averaged; "
            f"local radius {cfg.local_radius}, global radius {cfg.global_radius}"
        )
        paths.append(
            plot_attention(out / f"attention_{run.name}.png", maps.mean(dim=1).numpy(), names, title)
        )
    return paths


def figures(
    dmer: DemoRun, pdmer: DemoRun, report: dict[str, Any], kinds: dict[str, str], config: DemoConfig
) -> list[Path]:
    """The results' figures under <out>/plots: the per-rater gains, example curves, attention maps."""
    from dsaml.plots import plot_rater_gains

    plots = Path(config.out) / "plots"
    gains, labels = report["per_rater_gains"], {r: f"{r[:6]} ({k})" for r, k in report["rater_kinds"].items()}
    title = "Per-rater gain of the adapted PDMER model over the unadapted one and over the DMER model"
    made = [plot_rater_gains(plots / "rater_gains.png", gains, "average score", title, labels=labels)]
    first = next(iter(gains.values()), {})
    made += example_curves(dmer, pdmer, first, kinds, config.examples, plots)
    return made + attention_maps([dmer, pdmer], pdmer, plots)
