"""Schema and early validation of a training configuration (fails before any work, naming allowed values).

The `task:` group (conf/task/{dmer,pdmer}.yaml) is parsed by `TaskConfig.from_dict` into the config of its
task, built from one dataclass per concern:

- `Optimisation` and `Protocols` (both tasks): the optimiser, the validation split and checkpoint
  selection; the test protocols and how whole songs are predicted;
- `Episodes` and `InnerLoop` (PDMER only): the episode shape and stream; the MAML inner loop and its
  engine.

`TaskConfig` (task=dmer) holds the first two, `PDMERConfig` (task=pdmer) all four; conf/task/dmer.yaml lists
the DMER keys, conf/task/pdmer.yaml adds the PDMER ones. A new PDMER key is a field of `Episodes` or
`InnerLoop` and a line of conf/task/pdmer.yaml.

`TrainJob` / `EvalJob` declare the top-level keys of dsaml-train / dsaml-eval. `validate_train_config` checks
the composed config: top-level keys, the task, the adaptation group, the model (via `DSAMLConfig`), task/data
compatibility and the feature store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dsaml.config import (
    Config,
    ConfigError,
    check_choice,
    choice,
    flag,
    group,
    integer,
    number,
    text,
)
from dsaml.inference import STITCH_RULES
from dsaml.meta.adaptation import DEFAULT_META_ENGINE, META_ENGINES
from dsaml.meta.methods import INNER_LOOP_DEFAULTS, AdaptationConfig

TASKS = ("dmer", "pdmer")
PROTOCOLS = {"dmer": ("dmer",), "pdmer": ("pdmer_unadapted", "pdmer_within_song", "pdmer_cross_song")}
MONITOR_MODES = ("max", "min")
INNER_LOOPS = ("full", "head", "readout")
CROSS_SUPPORT = ("clip", "song")
# datasets with per-rater curves (PDMER needs them)
PER_RATER_DATASETS = ("deam", "synthetic")


@dataclass
class Optimisation(Config):
    """How the network is trained and its checkpoint chosen (both tasks).

    lr / weight_decay: Adam (the outer optimiser for PDMER). batch_size: clips per DMER batch (a PDMER
    meta-batch is `episodes` raters). val_fraction: held-out share of the training songs (DMER) or raters
    (PDMER). monitor / monitor_mode: the validation metric selecting the best checkpoint.
    """

    lr: float = number(5e-5, low=0, low_open=True)
    weight_decay: float = number(0.0, low=0)
    batch_size: int = integer(15, low=1)
    val_fraction: float = number(0.1, low=0.0, high=1.0, high_open=True)
    monitor: str = "val/average"
    monitor_mode: str = choice("max", MONITOR_MODES)


@dataclass
class Protocols(Config):
    """How the trained network is tested (both tasks).

    test_protocols: the evaluation protocols `test` runs (`PROTOCOLS` of the task). support_segments:
    segments of the within-song support and of the sliding windows (conf: data.segments_per_clip, 60 = 30 s
    on DEAM). stitch: sliding-window stitching of whole songs (mean = correct default; weighted = window
    edges count less; original = the original's rule, arousal off-by-one included). eval_stride: segments
    between the windows predicting a whole test song (1 = every window, the original's protocol; 10 with
    stitch=weighted is within 0.002 of it and ~10x cheaper, experiments/benchmarks/RESULTS.md).
    eval_batch_size: windows per forward at evaluation.
    """

    test_protocols: list[str] = field(default_factory=lambda: ["dmer"])
    support_segments: int = integer(60, low=1)
    stitch: str = choice("mean", STITCH_RULES)
    eval_stride: int = integer(1, low=1)
    eval_batch_size: int = integer(32, low=1)

    @property
    def song_prediction(self) -> dict[str, Any]:
        """The test protocols' whole-song prediction settings, as `run_protocols` keywords: window
        (support_segments), stitch, batch_size (eval_batch_size), stride (eval_stride)."""
        return dict(
            window=self.support_segments,
            stitch=self.stitch,
            batch_size=self.eval_batch_size,
            stride=self.eval_stride,
        )


@dataclass
class Episodes(Config):
    """PDMER's episodes: one episode = one rater.

    shots / queries: support and query clips per episode (in the cross-song test protocol, `shots` is the
    number of the rater's other songs adapted on). cross_support: what of each of those songs the
    cross-song protocol adapts on: clip (its first support_segments segments) or song (the whole song).
    episodes: distinct raters per meta-batch. steps_per_epoch: meta-batches between validations.
    val_episodes: validation episodes (held-out raters). Each field is passed to the `DSAMLDataModule`
    argument of its name (`dsaml.training.run.datamodule_from`).
    """

    shots: int = integer(1, low=1)
    queries: int = integer(15, low=1)
    cross_support: str = choice("clip", CROSS_SUPPORT)
    episodes: int = integer(16, low=1)
    steps_per_epoch: int = integer(10, low=1)
    val_episodes: int = integer(16, low=0)


@dataclass
class InnerLoop(Config):
    """PDMER's MAML inner loop.

    inner_steps / inner_lr / first_order: the inner loop of meta-training (second order when first_order is
    false). eval_inner_steps: inner steps at validation and in the test protocols (None = inner_steps).
    inner_loop: what it adapts: full (the whole network, the paper's) | head (ANIL) | readout (the head's
    final read-out refitted in closed form on the support, ridge toward the trained one with
    readout_strength songs of evidence, differentiated through; no inner SGD steps: inner_steps / inner_lr
    are not used; validation adapts with the test-time ridge, test with adaptation=ridge; sequential engine
    only). meta_engine: how a meta-batch's episodes, and the test protocols' (listener, song) pairs with an
    inner-loop method, are adapted: batched (together, stacked per-episode parameters;
    docs/meta-engine.md) | sequential (one after another, learn2learn). meta_chunk: episodes (test: items
    and pairs) per batched call (None = the whole meta-batch; test: 16 items; bounds the batched engine's
    memory).
    """

    inner_steps: int = integer(INNER_LOOP_DEFAULTS["steps"], low=0)
    inner_lr: float = number(INNER_LOOP_DEFAULTS["lr"], low=0, low_open=True)
    first_order: bool = flag(INNER_LOOP_DEFAULTS["first_order"])
    eval_inner_steps: int | None = integer(None, low=0, optional=True)
    inner_loop: str = choice("full", INNER_LOOPS)
    readout_strength: float = number(1.0, low=0, low_open=True)
    meta_engine: str = choice(DEFAULT_META_ENGINE, META_ENGINES)
    meta_chunk: int | None = integer(None, low=1, optional=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_loop == "readout" and self.meta_engine != "sequential":
            raise ConfigError(
                f"task.inner_loop=readout runs on the sequential engine only: task.meta_engine="
                f"{self.meta_engine!r}, expected sequential"
            )

    @property
    def adapt_steps(self) -> int:
        """Inner steps at validation and test: eval_inner_steps, else inner_steps."""
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps


@dataclass
class TaskConfig(Protocols, Optimisation):
    """The `task:` group of task=dmer (`Optimisation`, `Protocols`); `PDMERConfig` for task=pdmer.

    Build either with `TaskConfig.from_dict`, which picks the class by `name`. How the test protocols adapt
    is not a task key: it is the top-level `adaptation` group (`dsaml.meta.AdaptationConfig`).
    """

    SECTION = "task"

    name: str = choice("dmer", ("dmer",))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.test_protocols = list(self.test_protocols)
        for protocol in self.test_protocols:
            check_choice(f"task.test_protocols entry for task={self.name}", protocol, PROTOCOLS[self.name])
        if not self.monitor.startswith("val/"):
            raise ConfigError(
                f"task.monitor={self.monitor!r}: expected a validation metric such as val/average "
                "(checkpoints are never selected on the test set)"
            )

    @classmethod
    def from_dict(cls, values: Any) -> TaskConfig:
        """The config of a task; checkpoints written before the task config was split are migrated first
        (`migrate`).

        Args:
            values: a plain mapping or OmegaConf node (`conf.task`, a checkpoint's
                hyper_parameters["task"]); its `name` (default dmer) picks the class.

        Returns:
            A `TaskConfig` (task=dmer) or `PDMERConfig` (task=pdmer); ConfigError names a bad key or value.
        """
        if values is not None and type(values).__module__.startswith("omegaconf"):
            from omegaconf import OmegaConf

            values = OmegaConf.to_container(values, resolve=True)
        values = migrate(dict(values or {}))
        name = values.get("name", "dmer")
        check_choice("task.name", name, TASKS)
        return TASK_CONFIGS[name].from_mapping(values)


@dataclass
class PDMERConfig(InnerLoop, Episodes, TaskConfig):
    """The `task:` group of task=pdmer: `TaskConfig` plus `Episodes` and `InnerLoop`."""

    name: str = choice("pdmer", ("pdmer",))
    test_protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS["pdmer"]))


TASK_CONFIGS: dict[str, type[TaskConfig]] = {"dmer": TaskConfig, "pdmer": PDMERConfig}
# keys of the checkpoints written before the split: one flat config for both tasks, with two old names
OLD_NAMES = {"tasks": "episodes", "val_tasks": "val_episodes"}


def migrate(values: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's task dict in the current format. Those written before the split (they hold `tasks`
    and `val_tasks`, the old names of `episodes` and `val_episodes`) held every key for both tasks and the
    test adaptation (now hyper_parameters["adaptation"], see `stored_adaptation`): the old names give way
    to the new (a value set under the old name wins, as it did then), the adaptation is dropped, and a DMER
    task keeps only the keys `TaskConfig` has. Any other dict is returned unchanged."""
    if not any(old in values for old in OLD_NAMES):
        return values
    values = {key: value for key, value in values.items() if key != "adaptation"}
    for old, new in OLD_NAMES.items():
        value = values.pop(old, None)
        if value is not None:
            values[new] = value
    if values.get("name", "dmer") == "dmer":
        dmer_keys = {f.name for f in fields(TaskConfig)}
        values = {key: value for key, value in values.items() if key in dmer_keys}
    return values


def stored_adaptation(hparams: dict[str, Any]) -> dict[str, Any] | None:
    """The `adaptation` group a checkpoint was tested with: hyper_parameters["adaptation"] (before the task
    config was split: its task.adaptation); None when it records none."""
    task = hparams.get("task")
    return hparams.get("adaptation") or (task.get("adaptation") if isinstance(task, dict) else None)


@dataclass
class JobConfig(Config):
    """The top-level keys dsaml-train and dsaml-eval share (conf/train.yaml, conf/eval.yaml); each `group`
    is checked by its own class (`TaskConfig`, `DSAMLConfig`, ...)."""

    data: Any = group()
    task: Any = group()
    adaptation: Any = group()
    trainer: Any = group()
    logger: Any = group()
    callbacks: Any = group()
    paths: Any = group()
    hydra: Any = group()
    task_name: str = text("train")
    seed: int = integer(0, low=0)
    num_workers: int = integer(0, low=0)
    ckpt_path: str | None = text(None, optional=True)
    trust_checkpoint: bool = flag(False)
    overwrite: bool = flag(False)


@dataclass
class TrainJob(JobConfig):
    """conf/train.yaml's top-level keys (`dsaml-train`)."""

    model: Any = group()
    experiment: Any = group()
    debug: Any = group()
    tags: Any = group()
    init_from: str | None = text(None, optional=True)
    train: bool = flag(True)
    test: bool = flag(True)


@dataclass
class EvalJob(JobConfig):
    """conf/eval.yaml's top-level keys (`dsaml-eval`): protocols and overrides are task keys, checked by
    `TaskConfig`."""

    protocols: Any = group()
    overrides: Any = group()


def validate_train_config(cfg: Any, need_store: bool = True) -> TaskConfig:
    """Check a composed training config (an OmegaConf DictConfig); returns the parsed `TaskConfig`."""
    from omegaconf import OmegaConf

    from dsaml.models import DSAMLConfig

    TrainJob.check_top_level(cfg, "dsaml-train")
    task = TaskConfig.from_dict(cfg.task)
    adaptation_of(cfg)
    model = DSAMLConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    dataset = str(cfg.data.name)
    if task.name == "pdmer" and dataset not in PER_RATER_DATASETS:
        raise ConfigError(
            f"task=pdmer needs per-rater curves, which data={dataset} does not have; "
            f"allowed data for task=pdmer: {', '.join(PER_RATER_DATASETS)} (use task=dmer for {dataset})"
        )
    if need_store:
        store = Path(str(cfg.paths.store))
        if not store.is_file():
            raise FileNotFoundError(
                f"feature store {store} (paths.store) does not exist; build it first with "
                f"`dsaml-preprocess data={dataset} paths.store={store}` "
                "or point paths.store at an existing store"
            )
        if model.global_store_name is not None:
            check_global_vectors(store, model.global_store_name, model.global_input_dim)
    init_from = cfg.get("init_from")
    if init_from is not None and not Path(str(init_from)).is_file():
        raise FileNotFoundError(f"init_from={init_from!r}: no such checkpoint file")
    return task


def adaptation_of(cfg: Any) -> dict[str, Any] | None:
    """The `adaptation` group of a composed config as a checked plain dict (None when unset)."""
    if cfg.get("adaptation") is None:
        return None
    return AdaptationConfig.from_dict(cfg.adaptation).to_dict()


def check_global_vectors(store: Path, name: str, dim: int) -> None:
    """The store holds global vectors `name` of width `dim` (model.global_context / model.global_dim)."""
    from dsaml.data.store import FeatureStore

    with FeatureStore(store) as reader:
        stored = reader.global_names()
        if name not in stored:
            raise ConfigError(
                f"model.global_context needs global vectors {name!r}, but {store} holds {stored or 'none'}; "
                f"add them with `dsaml-preprocess ... global_vectors=clap|file global_vectors.name={name}`"
            )
        width = reader.global_dim(name)
    if width != dim:
        raise ConfigError(
            f"global vectors {name!r} in {store} are {width} wide, but the network expects "
            f"model.global_dim={dim}; set model.global_dim={width}"
        )
