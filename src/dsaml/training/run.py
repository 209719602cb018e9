"""Build and run a training job from a composed Hydra config (used by `dsaml-train` and the tests).

`build(cfg)` validates the whole config first (nothing is read or trained before that), then instantiates
datamodule, LightningModule, callbacks, loggers and Trainer. `run(cfg)` fits, tests the best checkpoint
and returns the logged metrics (the value of `task.monitor` is what sweepers optimise).

Every checkpoint (init_from, ckpt_path, the resumed run's state, the best checkpoint tested) is read by
`dsaml.models.checkpoint` without unpickling unless `trust_checkpoint=true`; see `dsaml.training.resume`
for what protects the run folder and makes a resume exact.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from dsaml.config import ConfigError
from dsaml.data.datamodule import DSAMLDataModule
from dsaml.models import DSAMLConfig
from dsaml.models.checkpoint import (
    CheckpointError,
    check_weights,
    differing_model_fields,
    load_network,
    read_torch_file,
)
from dsaml.training.config import (
    Episodes,
    EvalJob,
    PDMERConfig,
    TaskConfig,
    TrainJob,
    adaptation_of,
    migrate,
    stored_adaptation,
    validate_train_config,
)
from dsaml.training.module import DSAMLModule
from dsaml.training.resume import (
    RunDirectoryError,
    StepSeed,
    check_resumed_settings,
    checkpoint_epoch,
    checkpoint_in_run,
    claim_run_directory,
    mark_slurm_job,
    preserve_metrics_csv,
    requeued_checkpoint,
    requeued_run,
)

__all__ = ["RunDirectoryError", "build", "evaluate", "run"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    cfg: DictConfig
    task: TaskConfig
    datamodule: DSAMLDataModule
    module: DSAMLModule
    trainer: L.Trainer


def configure_wandb_env() -> None:
    """Offline wandb unless the user configured it (WANDB_MODE or WANDB_API_KEY set); never prompt."""
    if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")


def _sweep_job() -> tuple[str, dict[str, str]] | None:
    """Inside a job of a sweep (any launcher or sweeper): (the sweep folder's name, the job's overrides as
    {key: value}); None otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(hc.mode) != "RunMode.MULTIRUN":
        return None
    overrides = dict(item.split("=", 1) for item in hc.overrides.task if "=" in item)
    return Path(str(hc.sweep.dir)).name, overrides


def _has_validation(task: TaskConfig) -> bool:
    return task.val_fraction > 0 and (task.name == "dmer" or task.val_episodes > 0)


def datamodule_from(cfg: DictConfig, task: TaskConfig, model_cfg: DSAMLConfig) -> DSAMLDataModule:
    episodes = (
        {f.name: getattr(task, f.name) for f in fields(Episodes)} if isinstance(task, PDMERConfig) else {}
    )
    return DSAMLDataModule(
        store=str(cfg.paths.store),
        task=task.name,
        batch_size=task.batch_size,
        val_fraction=task.val_fraction,
        global_name=model_cfg.global_store_name,
        seed=int(cfg.seed),
        num_workers=int(cfg.get("num_workers", 0)),
        cross_song="pdmer_cross_song" in task.test_protocols,
        **episodes,
    )


def build_trainer(cfg: DictConfig, with_validation: bool, extra_callbacks: tuple = ()) -> L.Trainer:
    callbacks_cfg = cfg.get("callbacks") or {}
    if not with_validation and "model_checkpoint" in callbacks_cfg:
        with open_dict(cfg):
            cfg.callbacks.model_checkpoint.monitor = None
    callbacks = [instantiate(c) for c in callbacks_cfg.values() if c is not None and "_target_" in c]
    if not cfg.trainer.get("enable_progress_bar", True):  # a progress-bar callback would contradict it
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None or "_target_" not in logger_cfg:
            continue
        if name == "wandb":
            configure_wandb_env()
            sweep = _sweep_job()
            if sweep is not None:  # the sweep's jobs form one group; each job's overrides are its config
                with open_dict(logger_cfg):
                    logger_cfg.group = logger_cfg.get("group") or sweep[0]
                    logger_cfg.config = {"overrides": sweep[1]}
                    logger_cfg._convert_ = "all"  # wandb.init takes a plain dict
        loggers.append(instantiate(logger_cfg))
    return instantiate(cfg.trainer, callbacks=[*callbacks, *extra_callbacks], logger=loggers or False)


def validated(cfg: DictConfig) -> TaskConfig:
    """`validate_train_config`, its ValueErrors (bad keys/values, missing files) as ConfigError."""
    try:
        return validate_train_config(cfg)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_store(
    cfg: DictConfig, wanted: dict[str, Any] | None = None, asked_by: str = "data.features"
) -> None:
    """Before any work: the store passes its cheap verification, holds the dataset `data` names and was made
    with the feature settings `wanted` (default: this config's data.features); ConfigError naming what
    differs."""
    from dsaml.data.features import FeatureConfig
    from dsaml.data.store import FeatureStore

    with FeatureStore(str(cfg.paths.store)) as store:
        store.verify()
        stored = store.feature_config
        dataset = store.dataset
    if dataset != cfg.data.name:
        raise ConfigError(
            f"paths.store={cfg.paths.store} holds the dataset {dataset!r}, not data={cfg.data.name}: pass "
            f"data={dataset}, or the store dsaml-preprocess data={cfg.data.name} made"
        )
    if wanted is None:
        features = cfg.data.get("features")
        wanted = FeatureConfig.from_mapping(
            OmegaConf.to_container(features, resolve=True) if features else None
        ).to_dict()
    differ = sorted(k for k in wanted if k in stored and wanted[k] != stored[k])
    if differ:
        details = ", ".join(f"{asked_by}.{k}={wanted[k]!r} (store: {stored[k]!r})" for k in differ)
        raise ConfigError(
            f"paths.store={cfg.paths.store} was made with other feature settings than asked: {details}; "
            "use a store made with these settings (dsaml-preprocess with the same data.features and another "
            "paths.store)"
        )


def build(cfg: DictConfig) -> Job:
    task = validated(cfg)
    check_store(cfg)
    model_cfg = DSAMLConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = datamodule_from(cfg, task, model_cfg)
    module = DSAMLModule(
        model=model_cfg.to_dict(),
        task=task.to_dict(),
        features=datamodule.feature_config,
        adaptation=adaptation_of(cfg),
    )
    if cfg.get("init_from") is not None:
        load_initial_weights(module, model_cfg, str(cfg.init_from), trusted(cfg))
    trainer = build_trainer(cfg, _has_validation(task), extra_callbacks=(StepSeed(int(cfg.seed)),))
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            logger.experiment.config.update(
                {"resolved_config": OmegaConf.to_container(cfg, resolve=True)}, allow_val_change=True
            )
    return Job(cfg, task, datamodule, module, trainer)


def trusted(cfg: DictConfig) -> bool:
    """`trust_checkpoint=true`: the user vouches for the checkpoints of this run (they may be unpickled)."""
    return bool(cfg.get("trust_checkpoint", False))


def load_initial_weights(module: DSAMLModule, model_cfg: DSAMLConfig, path: str, trust: bool = False) -> None:
    """`init_from`: copy a dsaml checkpoint's network weights into `module.net` (fails, naming the keys,
    when the checkpoint's network is configured differently)."""
    net, source_cfg, _ = load_network(path, trust=trust)
    differ = differing_model_fields(model_cfg.to_dict(), source_cfg.to_dict())
    if differ:
        raise ConfigError(
            f"init_from={path}: the checkpoint's network differs from this run's ({', '.join(differ)})"
        )
    module.net.load_state_dict(net.state_dict())
    log.info("initial weights from %s", path)


def load_tested_weights(module: DSAMLModule, path: str | Path, trust: bool = False) -> None:
    """The network weights of checkpoint `path` and the priors estimated for them, into `module`
    (its in-memory prior belongs to the last validated weights, not necessarily these)."""
    net, cfg, hparams = load_network(path, trust=trust)
    check_weights(module.net, net.state_dict(), path, module.model_cfg.to_dict(), cfg.to_dict())
    module.net.load_state_dict(net.state_dict())
    if hparams.get("calibration_prior") is not None:
        module.hparams.calibration_prior = hparams["calibration_prior"]
    if hparams.get("listener_prior") is not None:
        module.set_listener_prior(hparams["listener_prior"])


def check_resumable(module: DSAMLModule, resume: Any, path: str) -> None:
    """CheckpointError unless `resume` (read from `path`) is a dsaml training checkpoint whose weights fit
    `module` (a replaced last.ckpt, another model)."""
    hparams = resume.get("hyper_parameters") if isinstance(resume, dict) else None
    if isinstance(hparams, dict) and isinstance(resume.get("state_dict"), dict):
        theirs = hparams.get("model")
        ours = module.model_cfg.to_dict()
        check_weights(
            module, resume["state_dict"], path, ours, dict(theirs) if isinstance(theirs, dict) else None
        )
        if "epoch" in resume:
            check_resumed_settings(hparams, dict(module.hparams), path)
            return
    what = f"keys {sorted(map(str, resume))[:6]}" if isinstance(resume, dict) else type(resume).__name__
    raise CheckpointError(f"{path} is not a dsaml training checkpoint to resume from ({what})")


def resolve_ckpt(cfg: DictConfig) -> str | None:
    """`ckpt_path`: null, "last" (this run directory's checkpoints/last.ckpt) or a file."""
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    path = (
        Path(str(cfg.paths.output_dir)) / "checkpoints" / "last.ckpt" if value == "last" else Path(str(value))
    )
    if not path.is_file():
        hint = (
            " (ckpt_path=last resumes the run in hydra.run.dir: pass hydra.run.dir=<that run's folder>)"
            if value == "last"
            else ""
        )
        raise FileNotFoundError(f"ckpt_path={value!r}: checkpoint {path} does not exist{hint}")
    return str(path)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit and/or test as configured; returns the final logged metrics as floats."""
    fit = bool(cfg.get("train", True))
    output_dir = str(cfg.paths.output_dir)
    requeued = fit and cfg.get("ckpt_path") is None and requeued_run(output_dir)  # Slurm restarted this job
    ckpt = requeued_checkpoint(output_dir) if requeued else resolve_ckpt(cfg)
    if requeued:
        log.info("requeued Slurm job: %s", f"resuming {ckpt}" if ckpt else "no checkpoint yet, starting over")
    resume = read_torch_file(ckpt, "cpu", trusted(cfg)) if ckpt is not None and fit else None
    overwrite = bool(cfg.get("overwrite", False)) or requeued  # a requeued job's partial results are its own
    claim_run_directory(output_dir, resuming=resume is not None, overwrite=overwrite)
    mark_slurm_job(output_dir)
    job = build(cfg)
    trainer = job.trainer
    if fit:
        with warnings.catch_warnings():
            if resume is not None:  # the run's own folder: its checkpoints and metrics are meant to be there
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
                check_resumable(job.module, resume, ckpt)
                preserve_metrics_csv(trainer, checkpoint_epoch(resume))
            trainer.fit(job.module, datamodule=job.datamodule, ckpt_path=ckpt, weights_only=not trusted(cfg))
    elif ckpt is not None:
        load_tested_weights(job.module, ckpt, trusted(cfg))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", True):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if fit else ""
        if best:  # only a checkpoint this run wrote, read like any other (no unpickling)
            load_tested_weights(job.module, checkpoint_in_run(best, output_dir), trusted(cfg))
        trainer.test(job.module, datamodule=job.datamodule)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finish_wandb_run(trainer)
    return metrics


def finish_wandb_run(trainer: L.Trainer) -> None:
    """End the job's wandb run: the next job of a sweep in this process (basic launcher, Optuna) would
    otherwise log into it (Lightning's WandbLogger reuses a run in progress)."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        if wandb.run is not None:
            wandb.run.finish()


def evaluate(cfg: DictConfig) -> dict[str, list[dict[str, Any]]]:
    """`dsaml-eval`: test the checkpoint `cfg.ckpt_path` with the protocols of its task (or `cfg.protocols`),
    writing results.json / results.md into paths.output_dir. Returns the results dict."""
    from dsaml.training.callbacks import ResultsWriter
    from dsaml.training.config import PROTOCOLS

    EvalJob.check_top_level(cfg, "dsaml-eval")
    if (Path(str(cfg.paths.output_dir)) / "results.json").exists() and not cfg.get("overwrite", False):
        raise RunDirectoryError(
            f"{cfg.paths.output_dir} already holds results.json; pass overwrite=true or another hydra.run.dir"
        )
    net, model_cfg, hparams = load_network(str(cfg.ckpt_path), trust=trusted(cfg))
    task_values = migrate(dict(hparams.get("task") or {}))
    requested = cfg.get("task")  # the conf/task group (task=pdmer) or a bare name
    if requested is not None:
        name = str(requested.get("name") if isinstance(requested, DictConfig) else requested)
        if name not in PROTOCOLS:
            raise ConfigError(f"task={name!r} is not one of {', '.join(PROTOCOLS)}")
        if task_values.get("name") != name:  # another task than trained: its defaults, not the group's
            task_values = {"name": name}
    if "name" not in task_values:
        raise ConfigError(
            f"{cfg.ckpt_path} records no task (e.g. a dsaml-convert file): pass task=dmer or task=pdmer"
        )
    task_values.setdefault("test_protocols", list(PROTOCOLS[task_values["name"]]))
    if cfg.get("protocols") is not None:
        task_values["test_protocols"] = list(cfg.protocols)
    if cfg.get("overrides"):
        task_values.update(OmegaConf.to_container(cfg.overrides, resolve=True))
    task = TaskConfig.from_dict(task_values)
    with open_dict(cfg):
        cfg.task = OmegaConf.create(task.to_dict())
        cfg.model = OmegaConf.create(model_cfg.to_dict())
    validated(_as_train_keys(cfg))
    # the conf/adaptation group, else the checkpoint's
    adaptation = adaptation_of(cfg) or stored_adaptation(hparams)
    check_store(cfg, dict(hparams.get("features") or {}) or None, asked_by="the checkpoint's features")
    datamodule = datamodule_from(cfg, task, model_cfg)
    module = DSAMLModule(
        model=model_cfg.to_dict(),
        task=task.to_dict(),
        features=hparams.get("features"),
        calibration_prior=hparams.get("calibration_prior"),
        adaptation=adaptation,
        listener_prior=hparams.get("listener_prior"),
    )
    module.net.load_state_dict(net.state_dict())
    trainer = build_trainer(
        cfg,
        with_validation=False,
        extra_callbacks=(ResultsWriter(str(cfg.paths.output_dir)), StepSeed(int(cfg.get("seed", 0)))),
    )
    trainer.test(module, datamodule=datamodule)
    return module.test_results


def _as_train_keys(cfg: DictConfig) -> DictConfig:
    """The eval config viewed with only the keys `validate_train_config` knows."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k in TrainJob.allowed_keys()])
