"""A crafted checkpoint never runs code: every loader refuses a file whose unpickling would execute a
payload (the payload writes a marker file; it must never appear), the test stage of a resumed run loads
no checkpoint from outside the run folder, and only trust_checkpoint=true unpickles."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app_fixtures import capture, compose_cli, save_tiny_ckpt, tiny_net, write_audio
from dsaml.cli.convert import main as convert_main
from dsaml.cli.errors import expected_errors
from dsaml.cli.personalize import run as run_personalize
from dsaml.cli.predict import run as run_predict
from dsaml.data.features import FeatureConfig
from dsaml.models.checkpoint import (
    NET_PREFIX,
    CheckpointError,
    UnsafeCheckpointError,
    load_network,
    save_network,
)
from dsaml.predictor import Predictor
from dsaml.training.resume import RunDirectoryError
from dsaml.training.run import run
from train_fixtures import DMER_TINY, train_config

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this calls exec(code): here it only writes `marker`, a real attacker's code could do
    anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


def poisoned_checkpoint(path: Path, marker: Path, model: dict | None = None) -> Path:
    """A complete, otherwise valid dsaml checkpoint whose hyper_parameters carry the payload."""
    net = tiny_net(**(model or {}))
    torch.save(
        {
            "state_dict": {NET_PREFIX + k: v for k, v in net.state_dict().items()},
            "hyper_parameters": {
                "model": net.cfg.to_dict(),
                "features": FeatureConfig().to_dict(),
                "task": {"name": "dmer"},
                "note": Payload(marker),
            },
            "dsaml": {"format": 1, "version": "0"},
        },
        path,
    )
    return path


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PAYLOAD_RAN"
    return poisoned_checkpoint(tmp_path / "evil.ckpt", marker), marker


def test_payload_really_runs_when_unpickled(evil):
    """The fixture is a real attack: plain unpickling runs it (so the refusals below mean something)."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.read_text() == "payload ran"


def test_load_network_refuses_and_names_the_opt_in(evil):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match=r"refused: .*exec.*trust_checkpoint=true"):
        load_network(path)
    with pytest.raises(CheckpointError, match="refused"):
        Predictor.load(path, device="cpu")
    assert not marker.exists()


def test_trust_is_the_only_way_to_unpickle(evil):
    path, marker = evil
    net, cfg, hparams = load_network(path, trust=True)
    assert marker.exists() and cfg.hidden_size == 16  # the documented opt-in does unpickle


def test_predict_and_personalize_refuse(evil, tmp_path):
    path, marker = evil
    song = write_audio(tmp_path / "song.wav", 20.0, 22050, 1)
    console, buffer = capture()
    cfg = compose_cli("predict", [f"ckpt={path}", f"inputs=[{song}]", f"out={tmp_path / 'out'}"])
    assert run_predict(cfg, console) == 2
    assert "refused" in buffer.getvalue() and "trust_checkpoint=true" in buffer.getvalue()
    curves = tmp_path / "curves"
    curves.mkdir()
    time = 15.0 + np.arange(8) / 2
    (curves / "song.csv").write_text("time,arousal,valence\n" + "".join(f"{t},0.1,0.2\n" for t in time))
    console, buffer = capture()
    cfg = compose_cli(
        "personalize",
        [f"ckpt={path}", f"audio=[{song}]", f"annotations=[{curves}]", f"out={tmp_path / 'me.ckpt'}"],
    )
    assert run_personalize(cfg, console) == 2
    assert "refused" in buffer.getvalue()
    assert not marker.exists()


def test_convert_refuses(evil, tmp_path, capsys):
    path, marker = evil
    assert convert_main([str(path), str(tmp_path / "out.ckpt")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


def test_training_loaders_refuse(evil, tiny_store, tmp_path):
    path, marker = evil
    cases = {
        "init_from": [f"init_from={path}"],
        "train=false ckpt_path": ["train=false", f"ckpt_path={path}"],
        "resume ckpt_path": [f"ckpt_path={path}"],
    }
    for name, overrides in cases.items():
        with pytest.raises(UnsafeCheckpointError, match="refused"):
            run(train_config(tiny_store, tmp_path / f"run{len(name)}", [*DMER_TINY, *overrides]))
        assert not marker.exists(), name


def eval_error(ckpt: Path, store: Path, run_dir: Path) -> str:
    """dsaml-eval's stderr for `ckpt`, after checking it failed as an expected error: exit 2, at most two
    lines, no traceback."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsaml.cli.evaluate",
            f"ckpt_path={ckpt}",
            "data=synthetic",
            f"paths.store={store}",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2, result.stderr
    return result.stderr


def test_eval_command_refuses_in_two_lines(evil, tiny_store, tmp_path):
    path, marker = evil
    assert "refused" in eval_error(path, tiny_store, tmp_path / "eval")
    assert not marker.exists()


def test_resumed_run_never_tests_a_checkpoint_outside_its_folder(tiny_store, tmp_path):
    """A resume checkpoint that loads safely but whose ModelCheckpoint state points best_model_path at a
    payload file elsewhere: the test stage refuses it (and the payload never runs)."""
    marker = tmp_path / "PAYLOAD_RAN"
    (tmp_path / "elsewhere").mkdir()
    outside = poisoned_checkpoint(tmp_path / "elsewhere" / "best.ckpt", marker)
    run_dir = tmp_path / "run"
    run(train_config(tiny_store, run_dir, [*DMER_TINY, "test=false"]))
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    callbacks = [k for k in state["callbacks"] if k.startswith("ModelCheckpoint")]
    assert callbacks
    for key in callbacks:
        state["callbacks"][key]["best_model_path"] = str(outside)
    torch.save(state, last)
    # max_epochs equal to the checkpoint's: nothing left to fit, the (poisoned) best path stays
    with pytest.raises(RunDirectoryError, match="not inside this run's folder"):
        run(train_config(tiny_store, run_dir, [*DMER_TINY, "ckpt_path=last"]))
    assert not marker.exists()
    # a poisoned file inside the run folder is still only read safely
    inside = poisoned_checkpoint(run_dir / "checkpoints" / "epoch_000.ckpt", marker, {"dropout": 0.0})
    for key in callbacks:
        state["callbacks"][key]["best_model_path"] = str(inside)
    torch.save(state, last)
    with pytest.raises(UnsafeCheckpointError):
        run(train_config(tiny_store, run_dir, [*DMER_TINY, "ckpt_path=last"]))
    assert not marker.exists()


class Call:
    """Unpickling this calls `function(*args)` (pickled by reference, as an attacker's file would be)."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def payloads(marker: Path) -> dict[str, Call]:
    """Each writes `marker` when unpickled (torch 2.x words the refusal of some of them differently)."""
    import builtins
    import posix
    import subprocess as sp

    write = f"open({str(marker)!r}, 'w').write('payload ran')"
    return {
        "os.system": Call(os.system, f"touch {marker}"),
        "posix.system": Call(posix.system, f"touch {marker}"),
        "exec": Call(exec, write),
        "builtins.eval": Call(builtins.eval, write),
        "subprocess.Popen": Call(sp.Popen, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("name", ["os.system", "posix.system", "exec", "builtins.eval", "subprocess.Popen"])
def test_every_blocked_global_is_named_without_torchs_advice(name, tmp_path):
    """torch 2.14 says "unsupported GLOBAL posix.system whose module posix is blocked" for some payloads and
    "Unsupported global: GLOBAL exec was not an allowed global" for others: both are named refusals, and
    torch's "weights_only=False will likely succeed" is never repeated."""
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"note": payloads(marker)[name]}}, path)
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_network(path)
    message = str(caught.value)
    function = name.rsplit(".", 1)[-1]
    assert re.search(rf"would unpickle the Python object [\w.]*\b{function}, which can run code", message)
    assert "trust_checkpoint=true" in message and "weights_only" not in message, message
    assert "not a dsaml checkpoint" not in message
    assert not marker.exists()


def damaged_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """kind -> (file, what every command's message says)."""
    whole = save_tiny_ckpt(folder / "whole.ckpt")
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    text = folder / "text.ckpt"
    text.write_text("a note\n")
    foreign = folder / "foreign.ckpt"  # weights of a 32-wide network under a 16-wide config
    wide, narrow = tiny_net(hidden_size=32), tiny_net()
    torch.save(
        {
            "state_dict": {NET_PREFIX + k: v for k, v in wide.state_dict().items()},
            "hyper_parameters": {"model": narrow.cfg.to_dict(), "features": FeatureConfig().to_dict()},
            "dsaml": {"format": 1},
        },
        foreign,
    )
    return {
        "truncated": (truncated, "is truncated or damaged"),
        "text": (text, "is not a dsaml checkpoint: it is a text file starting 'a note'"),
        "foreign": (foreign, "holds weights of another architecture or sizes"),
    }


def test_damaged_checkpoints_get_one_message_in_predict_and_personalize(tmp_path):
    song = write_audio(tmp_path / "song.wav", 20.0, 22050, 1)
    for kind, (path, message) in damaged_checkpoints(tmp_path).items():
        console, buffer = capture()
        cfg = compose_cli("predict", [f"ckpt={path}", f"inputs=[{song}]", f"out={tmp_path / 'out'}"])
        assert run_predict(cfg, console) == 2, kind
        assert message in buffer.getvalue() and "Traceback" not in buffer.getvalue(), buffer.getvalue()
        console, buffer = capture()
        cfg = compose_cli(
            "personalize",
            [f"ckpt={path}", f"audio=[{song}]", f"annotations=[{tmp_path}]", f"out={tmp_path / 'me.ckpt'}"],
        )
        assert run_personalize(cfg, console) == 2, kind
        assert message in buffer.getvalue(), buffer.getvalue()


def test_damaged_checkpoints_in_training_and_another_architecture_named(tiny_store, tmp_path):
    """init_from / ckpt_path (test only and resume) with each damaged kind: CheckpointError (exit 2 in the
    commands); a checkpoint of another width in train=false names the sizes and the config field."""
    cases = damaged_checkpoints(tmp_path)
    for kind, (path, message) in cases.items():
        for overrides in ([f"init_from={path}"], ["train=false", f"ckpt_path={path}"], [f"ckpt_path={path}"]):
            with pytest.raises(CheckpointError, match=message):
                run(
                    train_config(
                        tiny_store, tmp_path / f"run_{kind}_{len(overrides)}", [*DMER_TINY, *overrides]
                    )
                )
    wide = save_network(tmp_path / "wide.ckpt", tiny_net(hidden_size=32), features=FeatureConfig().to_dict())
    run_cfg = train_config(
        tiny_store, tmp_path / "run_wide", [*DMER_TINY, "train=false", f"ckpt_path={wide}"]
    )
    with pytest.raises(
        CheckpointError, match=r"another architecture.*model.hidden_size: run \d+ vs checkpoint 32"
    ):
        run(run_cfg)
    assert issubclass(CheckpointError, expected_errors())


def test_eval_reports_a_truncated_checkpoint_in_one_line(tiny_store, tmp_path):
    path, message = damaged_checkpoints(tmp_path)["truncated"]
    assert message in eval_error(path, tiny_store, tmp_path / "eval")
