"""Schema and early validation of a training configuration (fails before any work, naming allowed values).

`TaskConfig` holds the `task:` group (conf/task/{dmer,pdmer}.yaml); `validate_train_config` checks the
composed config: top-level keys, the task, the model (via `DSAMLConfig`), task/data compatibility and the
feature store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TASKS = ("dmer", "pdmer")
PROTOCOLS = {"dmer": ("dmer",), "pdmer": ("pdmer_unadapted", "pdmer_within_song", "pdmer_cross_song")}
MONITOR_MODES = ("max", "min")
STITCH = ("mean", "last", "original")
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
)


@dataclass
class TaskConfig:
    """The `task:` group.

    name: dmer | pdmer. lr / weight_decay: Adam (outer optimiser for PDMER). batch_size: DMER clips per
    batch. shots / queries / tasks: PDMER episode shape (support clips, query clips, distinct raters per
    meta-batch). inner_steps / inner_lr / first_order: MAML inner loop (second order when first_order is
    false). steps_per_epoch: PDMER meta-batches between validations. val_fraction: held-out share of
    training songs (DMER) or raters (PDMER). val_tasks: PDMER validation tasks. eval_inner_steps: inner steps
    at evaluation (None = inner_steps). support_segments: segments of the within-song support and of the
    sliding windows (conf: data.segments_per_clip, 60 = 30 s on DEAM). monitor / monitor_mode: metric
    selecting the best checkpoint. test_protocols: evaluation protocols run by `test`. stitch:
    sliding-window stitching of predict_song (mean = correct default; original = the original's rule,
    arousal off-by-one included). eval_batch_size: windows per forward at evaluation.
    """

    name: str = "dmer"
    lr: float = 5e-5
    weight_decay: float = 0.0
    batch_size: int = 15
    shots: int = 1
    queries: int = 15
    tasks: int = 16
    inner_steps: int = 16
    inner_lr: float = 5e-3
    first_order: bool = True
    steps_per_epoch: int = 10
    val_fraction: float = 0.1
    val_tasks: int = 16
    eval_inner_steps: int | None = None
    support_segments: int = 60
    monitor: str = "val/average"
    monitor_mode: str = "max"
    test_protocols: list[str] = field(default_factory=lambda: ["dmer"])
    stitch: str = "mean"
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        _choice("task.name", self.name, TASKS)
        _choice("task.monitor_mode", self.monitor_mode, MONITOR_MODES)
        _choice("task.stitch", self.stitch, STITCH)
        for key in (
            "batch_size",
            "shots",
            "queries",
            "tasks",
            "steps_per_epoch",
            "support_segments",
            "eval_batch_size",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"task.{key}={value!r}: expected an integer >= 1")
        for key in ("inner_steps", "val_tasks"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"task.{key}={value!r}: expected an integer >= 0")
        if self.eval_inner_steps is not None and (
            not isinstance(self.eval_inner_steps, int) or self.eval_inner_steps < 0
        ):
            raise ValueError(
                f"task.eval_inner_steps={self.eval_inner_steps!r}: expected null or an integer >= 0"
            )
        for key in ("lr", "inner_lr"):
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"task.{key}={getattr(self, key)!r}: expected a positive number")
        if float(self.weight_decay) < 0:
            raise ValueError(f"task.weight_decay={self.weight_decay!r}: expected >= 0")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ValueError(f"task.val_fraction={self.val_fraction!r}: expected a value in [0, 1)")
        if not isinstance(self.first_order, bool):
            raise ValueError(f"task.first_order={self.first_order!r}: expected true or false")
        self.test_protocols = list(self.test_protocols)
        for protocol in self.test_protocols:
            _choice(f"task.test_protocols entry for task={self.name}", protocol, PROTOCOLS[self.name])
        if not self.monitor.startswith("val/"):
            raise ValueError(
                f"task.monitor={self.monitor!r}: expected a validation metric such as val/average "
                "(checkpoints are never selected on the test set)"
            )

    @property
    def adapt_steps(self) -> int:
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TaskConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown task config key(s) {unknown}; allowed keys: {sorted(known)}")
        return cls(**dict(values))


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def validate_train_config(cfg: Any, need_store: bool = True) -> TaskConfig:
    """Check a composed training config (an OmegaConf DictConfig); returns the parsed `TaskConfig`."""
    from omegaconf import OmegaConf

    from dsaml.models import DSAMLConfig

    unknown = sorted(set(cfg.keys()) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; allowed keys: {list(TOP_LEVEL_KEYS)}")
    task = TaskConfig.from_dict(OmegaConf.to_container(cfg.task, resolve=True))
    model = DSAMLConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    dataset = str(cfg.data.name)
    if task.name == "pdmer" and dataset not in PER_RATER_DATASETS:
        raise ValueError(
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
    if int(cfg.get("num_workers", 0)) < 0:
        raise ValueError(f"num_workers={cfg.num_workers!r}: expected an integer >= 0")
    return task


def check_global_vectors(store: Path, name: str, dim: int) -> None:
    """The store holds global vectors `name` of width `dim` (model.global_context / model.global_dim)."""
    from dsaml.data.store import FeatureStore

    with FeatureStore(store) as reader:
        stored = reader.global_names()
        if name not in stored:
            raise ValueError(
                f"model.global_context needs global vectors {name!r}, but {store} holds {stored or 'none'}; "
                f"add them with `dsaml-preprocess ... global_vectors=clap|file global_vectors.name={name}`"
            )
        width = reader.global_dim(name)
    if width != dim:
        raise ValueError(
            f"global vectors {name!r} in {store} are {width} wide, but the network expects "
            f"model.global_dim={dim}; set model.global_dim={width}"
        )
