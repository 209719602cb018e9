"""Every preset composes and instantiates; trainer/launcher presets are wired; bad configs fail before any
work with the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dsaml.config import CONFIG_DIR
from dsaml.training.config import validate_train_config
from dsaml.training.module import DSAMLModule
from dsaml.training.run import build, run
from train_fixtures import PDMER_TINY, compose_config, train_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_all_presets_are_listed():
    assert {
        "dmer_deam",
        "pdmer_deam",
        "local_only",
        "global_only",
        "no_meta",
        "no_global_context",
        "dmer_synthetic",
        "pdmer_synthetic",
    } <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tiny_store, tmp_path):
    cfg = compose_config(
        "train", [f"experiment={experiment}", f"paths.store={tiny_store}"], output_dir=tmp_path
    )
    task = validate_train_config(cfg)
    assert task.name in ("dmer", "pdmer")
    if experiment.endswith("_synthetic"):  # CPU presets: the whole job builds on the tiny store
        job = build(cfg)
        assert job.trainer.max_epochs >= 1 and job.module.meta == (task.name == "pdmer")
    else:  # paper presets: the paper-size network (D = 1024) instantiates with the preset's task
        module = DSAMLModule(
            model=OmegaConf.to_container(cfg.model, resolve=True),
            task=OmegaConf.to_container(cfg.task, resolve=True),
        )
        n_params = sum(p.numel() for p in module.net.parameters())
        assert n_params > 25_000_000
    if experiment == "local_only":
        assert cfg.model.attention == "local"
    if experiment == "no_meta":
        assert cfg.task.inner_steps == 0 and cfg.task.eval_inner_steps == 16


@pytest.mark.parametrize(
    "trainer,devices,strategy",
    [("cpu", 1, None), ("gpu", 1, None), ("ddp", 4, "MetaDDPStrategy"), ("ddp_cpu", 2, "MetaDDPStrategy")],
)
def test_trainer_presets(trainer, devices, strategy, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}"], output_dir=tmp_path)
    assert cfg.trainer.devices == devices and cfg.trainer.inference_mode is False
    if strategy:
        assert cfg.trainer.strategy._target_.endswith(strategy)


def test_slurm_launcher_has_one_task_per_device(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == cfg.trainer.devices == 8 and launcher.gpus_per_node == 8


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (["+foo=1"], ValueError, r"dsaml-train: unknown key\(s\) \['foo'\]; allowed keys"),
        (["+task.foo=1"], ValueError, r"task: unknown key\(s\) \['foo'\]; allowed keys"),
        (
            ["task=pdmer", "data=pmemo"],
            ValueError,
            r"task=pdmer needs per-rater curves.*allowed data for task=pdmer",
        ),
        (["task=pdmer", "task.shots=0"], ValueError, r"task.shots=0: expected an integer >= 1"),
        (["task.test_protocols=[pdmer_cross_song]"], ValueError, r"is not one of dmer"),
        (["task.monitor=test/average"], ValueError, r"never selected on the test set"),
        (["model.attention=sideways"], ValueError, r"model.attention='sideways' is not one of"),
    ],
)
def test_bad_values_fail_before_work(overrides, error, match, tiny_store, tmp_path):
    cfg = train_config(tiny_store, tmp_path, overrides)
    with pytest.raises(error, match=match):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


def test_missing_store_names_the_command(tmp_path):
    cfg = compose_config(
        "train", ["experiment=pdmer_synthetic", f"paths.store={tmp_path / 'nope.h5'}"], output_dir=tmp_path
    )
    with pytest.raises(
        FileNotFoundError, match=r"nope.h5 \(paths.store\) does not exist.*dsaml-preprocess data=synthetic"
    ):
        run(cfg)


def test_unknown_override_is_rejected_by_hydra(tmp_path):
    with pytest.raises(ConfigCompositionException, match="task.nonsense"):
        compose_config("train", ["task.nonsense=1"], output_dir=Path(tmp_path))


@pytest.mark.parametrize("debug", ["fast_dev_run", "overfit"])
def test_debug_presets_run(debug, tiny_store, tmp_path):
    metrics = run(train_config(tiny_store, tmp_path, [*PDMER_TINY, f"debug={debug}", "trainer.max_epochs=1"]))
    assert "train/loss_step" in metrics
    assert (tmp_path / "results.json").is_file() == (debug == "fast_dev_run")  # overfit: no test


def test_init_from_starts_from_a_checkpoints_weights(tiny_store, tmp_path):
    """init_from copies the network weights (fresh optimiser); a differently shaped network is refused."""
    import torch

    from dsaml.models.checkpoint import save_network

    plain = build(train_config(tiny_store, tmp_path / "plain", PDMER_TINY))
    source = plain.module.net
    torch.manual_seed(123)
    for parameter in source.parameters():
        parameter.data.normal_()
    ckpt = save_network(tmp_path / "source.ckpt", source)
    job = build(train_config(tiny_store, tmp_path / "init", [*PDMER_TINY, f"init_from={ckpt}"]))
    for name, value in source.state_dict().items():
        assert torch.equal(job.module.net.state_dict()[name], value), name
    # how the network computes is the run's choice: e.g. a converted original (native CNN kernels)
    native = build(
        train_config(
            tiny_store, tmp_path / "native", [*PDMER_TINY, f"init_from={ckpt}", "model.cnn_kernel=native"]
        )
    )
    assert native.module.net.cfg.cnn_kernel == "native"
    assert torch.equal(
        native.module.net.state_dict()["spectrogram.blocks.0.conv.weight"],
        source.spectrogram.blocks[0].conv.weight,
    )

    other = train_config(tiny_store, tmp_path / "wide", [*PDMER_TINY, "model.hidden_size=32"])
    wide = save_network(tmp_path / "wide.ckpt", build(other).module.net)
    with pytest.raises(ValueError, match=r"model.hidden_size: run 16 vs checkpoint 32"):
        build(train_config(tiny_store, tmp_path / "bad", [*PDMER_TINY, f"init_from={wide}"]))
    with pytest.raises(FileNotFoundError, match=r"init_from=.*missing.ckpt.*no such checkpoint"):
        build(
            train_config(
                tiny_store, tmp_path / "bad", [*PDMER_TINY, f"init_from={tmp_path / 'missing.ckpt'}"]
            )
        )
