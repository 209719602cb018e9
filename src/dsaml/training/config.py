"""Schema and early validation of a training configuration (fails before any work, naming allowed values).

`TaskConfig` holds the `task:` group (conf/task/{dmer,pdmer}.yaml); `validate_train_config` checks the
composed config: top-level keys, the task, the model (via `DSAMLConfig`), task/data compatibility and the
feature store.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dsaml.config import (
    Config,
    ConfigError,
    check_choice,
    check_keys,
    check_range,
    choice,
    flag,
    integer,
    number,
)
from dsaml.inference import STITCH_RULES
from dsaml.meta.adaptation import DEFAULT_META_ENGINE, META_ENGINES
from dsaml.meta.methods import AdaptationConfig

TASKS = ("dmer", "pdmer")
PROTOCOLS = {"dmer": ("dmer",), "pdmer": ("pdmer_unadapted", "pdmer_within_song", "pdmer_cross_song")}
MONITOR_MODES = ("max", "min")
INNER_LOOPS = ("full", "head", "readout")
CROSS_SUPPORT = ("clip", "song")
DEPRECATED_KEYS = {"tasks": "episodes", "val_tasks": "val_episodes"}  # old key -> new key
# datasets with per-rater curves (PDMER needs them)
PER_RATER_DATASETS = ("deam", "synthetic")
TOP_LEVEL_KEYS = (
    "data",
    "model",
    "task",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "hydra",
    "experiment",
    "debug",
    "seed",
    "ckpt_path",
    "init_from",
    "train",
    "test",
    "task_name",
    "tags",
    "num_workers",
    "adaptation",
    "trust_checkpoint",
    "overwrite",
)


@dataclass
class TaskConfig(Config):
    """The `task:` group.

    name: dmer | pdmer. lr / weight_decay: Adam (outer optimiser for PDMER). batch_size: DMER clips per batch.
    shots / queries / episodes: PDMER episode shape (support clips, query clips, distinct raters per
    meta-batch; in the cross-song test protocol, the rater's other songs adapted on). cross_support: what of
    each of those songs the cross-song protocol adapts on: clip (its first support_segments segments) or song
    (the whole song). inner_steps / inner_lr / first_order: MAML inner loop (second order when first_order is
    false). steps_per_epoch: PDMER meta-batches between validations. val_fraction: held-out share of training
    songs (DMER) or raters (PDMER). val_episodes: PDMER validation episodes. tasks / val_tasks: deprecated
    aliases of episodes / val_episodes (a FutureWarning names the new key). eval_inner_steps: inner steps at
    evaluation (None = inner_steps). support_segments: segments of the within-song support and of the sliding
    windows (conf: data.segments_per_clip, 60 = 30 s on DEAM). monitor / monitor_mode: metric selecting the
    best checkpoint. test_protocols: evaluation protocols run by `test`. stitch: sliding-window stitching of
    predict_song (mean = correct default; weighted = window edges count less; original = the original's rule,
    arousal off-by-one included). eval_stride: segments between the sliding windows that predict a whole test
    song (1 = every window, the original's protocol; 10 with stitch=weighted is within 0.002 of it and ~10x
    cheaper, experiments/benchmarks/RESULTS.md). eval_batch_size: windows per forward at evaluation.
    inner_loop: PDMER meta-training's inner loop: full (MAML over the whole network, the paper's) | head
    (ANIL: the head only) | readout (the head's final read-out refitted in closed form on the support, ridge
    toward the trained one with readout_strength songs of evidence, differentiated through; no inner SGD
    steps: inner_steps / inner_lr are not used; validation adapts with the test-time ridge, adaptation=ridge;
    sequential engine only). meta_engine: how PDMER adapts a meta-batch's episodes: batched (together,
    stacked per-episode parameters; docs/meta-engine.md) | sequential (one after another, learn2learn).
    meta_chunk: episodes per batched call (None = the whole meta-batch; bounds the batched engine's memory).
    """

    SECTION = "task"

    name: str = choice("dmer", TASKS)
    lr: float = number(5e-5, low=0, low_open=True)
    weight_decay: float = number(0.0, low=0)
    batch_size: int = integer(15, low=1)
    shots: int = integer(1, low=1)
    queries: int = integer(15, low=1)
    cross_support: str = choice("clip", CROSS_SUPPORT)
    episodes: int = integer(16, low=1)
    inner_steps: int = integer(16, low=0)
    inner_lr: float = number(5e-3, low=0, low_open=True)
    first_order: bool = flag(True)
    steps_per_epoch: int = integer(10, low=1)
    val_fraction: float = number(0.1, low=0.0, high=1.0, high_open=True)
    val_episodes: int = integer(16, low=0)
    tasks: int | None = integer(None, low=1, optional=True)  # deprecated alias of episodes
    val_tasks: int | None = integer(None, low=0, optional=True)  # deprecated alias of val_episodes
    eval_inner_steps: int | None = integer(None, low=0, optional=True)
    support_segments: int = integer(60, low=1)
    monitor: str = "val/average"
    monitor_mode: str = choice("max", MONITOR_MODES)
    test_protocols: list[str] = field(default_factory=lambda: ["dmer"])
    stitch: str = choice("mean", STITCH_RULES)
    eval_stride: int = integer(1, low=1)
    eval_batch_size: int = integer(32, low=1)
    inner_loop: str = choice("full", INNER_LOOPS)
    readout_strength: float = number(1.0, low=0, low_open=True)
    meta_engine: str = choice(DEFAULT_META_ENGINE, META_ENGINES)
    meta_chunk: int | None = integer(None, low=1, optional=True)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        for old, new in DEPRECATED_KEYS.items():
            value = getattr(self, old)
            if value is not None:  # an old config or checkpoint: the alias sets the new key
                warnings.warn(
                    f"task.{old}={value} is deprecated: use task.{new} (the same setting, renamed because "
                    '"task" also names dmer/pdmer)',
                    FutureWarning,
                    stacklevel=2,
                )
                setattr(self, new, value)
                setattr(self, old, None)
        if not isinstance(self.adaptation, AdaptationConfig):
            self.adaptation = AdaptationConfig.from_dict(self.adaptation)
        self.test_protocols = list(self.test_protocols)
        for protocol in self.test_protocols:
            check_choice(f"task.test_protocols entry for task={self.name}", protocol, PROTOCOLS[self.name])
        if self.inner_loop == "readout" and self.meta_engine != "sequential":
            raise ConfigError(
                f"task.inner_loop=readout runs on the sequential engine only: task.meta_engine="
                f"{self.meta_engine!r}, expected sequential"
            )
        if not self.monitor.startswith("val/"):
            raise ConfigError(
                f"task.monitor={self.monitor!r}: expected a validation metric such as val/average "
                "(checkpoints are never selected on the test set)"
            )

    @property
    def adapt_steps(self) -> int:
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    @property
    def resolved_adaptation(self) -> AdaptationConfig:
        """`adaptation` with steps / lr / first_order filled in from this task."""
        return self.adaptation.resolve(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adaptation": self.adaptation.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TaskConfig:
        """Build from a plain mapping (e.g. `conf.task`, a checkpoint's hyper_parameters["task"])."""
        return cls.from_mapping(values)


def validate_train_config(cfg: Any, need_store: bool = True) -> TaskConfig:
    """Check a composed training config (an OmegaConf DictConfig); returns the parsed `TaskConfig`."""
    from omegaconf import OmegaConf

    from dsaml.models import DSAMLConfig

    check_keys("dsaml-train", cfg.keys(), TOP_LEVEL_KEYS)
    task = TaskConfig.from_dict(task_values(cfg))
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
    check_range("num_workers", cfg.get("num_workers", 0), integer=True, low=0)
    return task


def task_values(cfg: Any) -> dict[str, Any]:
    """The `task:` keys of a composed config, with the top-level `adaptation` group (when set) as
    task.adaptation."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg.task, resolve=True)
    if cfg.get("adaptation") is not None:
        values["adaptation"] = OmegaConf.to_container(cfg.adaptation, resolve=True)
    return values


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
