"""Checkpoints: round trip, Lightning-style files, dsaml-convert output, clear errors for other files."""

from __future__ import annotations

import pytest
import torch

from dsaml.cli.convert import main as convert_main
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.models.checkpoint import load_network, save_network
from dsaml.training.smoke import TINY_MODEL
from model_fixtures import load_reference

TINY = DSAMLConfig(**TINY_MODEL, global_context="none")


def test_round_trip_keeps_weights_config_and_hyper_parameters(tmp_path):
    net = DSAMLNet(TINY)
    path = save_network(tmp_path / "a" / "net.ckpt", net, features={"n_mels": 128}, task="dmer")
    loaded, cfg, hparams = load_network(path)
    assert cfg == TINY and hparams["features"] == {"n_mels": 128} and hparams["task"] == "dmer"
    assert not loaded.training
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_lightning_style_checkpoint_with_other_modules_loads(tmp_path):
    net = DSAMLNet(TINY)
    state = {f"net.{k}": v for k, v in net.state_dict().items()} | {"loss_weight": torch.ones(1)}
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": {"model": TINY.to_dict(), "task": {"name": "pdmer"}},
            "epoch": 3,
            "optimizer_states": [],
        },
        tmp_path / "last.ckpt",
    )
    loaded, _, hparams = load_network(tmp_path / "last.ckpt")
    assert hparams["task"] == {"name": "pdmer"}
    assert torch.equal(loaded.head.out.weight, net.head.out.weight)


def test_non_dsaml_files_are_named_in_the_error(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare state_dict .*dsaml-convert"):
        load_network(tmp_path / "bare.pt")
    torch.save({"epoch": 1, "state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"not a dsaml checkpoint .*keys \['epoch', 'state_dict'\]"):
        load_network(tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(ValueError, match="not a dsaml checkpoint: it is a text file starting 'hello'"):
        load_network(tmp_path / "text.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_network(tmp_path / "missing.ckpt")


def test_convert_cli_writes_a_loadable_checkpoint_with_the_originals_outputs(tmp_path, capsys):
    ref = load_reference()
    torch.save(ref["state_dict"], tmp_path / "original.pt")
    options = [f"{k}={v}" for k, v in ref["config"].items()]
    assert convert_main([str(tmp_path / "original.pt"), str(tmp_path / "out.ckpt"), *options]) == 0
    assert "0.64 M parameters" in capsys.readouterr().out
    net, cfg, hparams = load_network(tmp_path / "out.ckpt")
    assert cfg.global_context == "precomputed:imagebind" and "original" in hparams["converted_from"]
    with torch.no_grad():
        out = net(ref["inputs"]["log_mel_spectrogram"], ref["inputs"]["global_imagebind_audio_embedding"])
    torch.testing.assert_close(out["valence"], ref["eval_valence"], rtol=0, atol=1e-5)
    assert convert_main([str(tmp_path / "original.pt"), str(tmp_path / "x.ckpt"), "num_heads=5"]) == 2
    assert "must be divisible" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "original.pt"), str(tmp_path / "x.ckpt"), "heads=4"]) == 2
    assert "unknown option 'heads'" in capsys.readouterr().err
