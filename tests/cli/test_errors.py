"""Expected errors end every command in one or two lines (what, where, what was expected) and exit code 2,
never a traceback: Hydra override errors (listing the allowed keys/options), config errors inside the job,
truncated stores, out= pointing at a file, read-only folders, wrong weight shapes in dsaml-convert."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app_fixtures import tiny_net
from dsaml.cli.convert import main as convert_main
from dsaml.models.compat import state_dict_to_original

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def command(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"dsaml.cli.{module}", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=300,
    )


def assert_short_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err, err
    assert 1 <= len(err.splitlines()) <= 2, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.slow  # runs the commands in processes of their own
def test_hydra_override_errors_list_what_is_allowed(tmp_path):
    err = assert_short_error(
        command("train", "seeed=3", cwd=tmp_path), "dsaml-train: error: Could not override"
    )
    assert "seed" in err and "init_from" in err and "+seeed=" in err
    err = assert_short_error(command("train", "task.lrr=0.1", cwd=tmp_path), "keys of 'task'")
    assert "lr" in err.split("keys of 'task'")[1]
    assert_short_error(
        command("evaluate", "data=nosuch", "ckpt_path=x", cwd=tmp_path), "available: deam, pmemo, synthetic"
    )
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run folder


@pytest.mark.slow  # runs the commands in processes of their own
def test_config_errors_inside_the_job_are_two_lines(tmp_path):
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    assert_short_error(
        command("train", "data=synthetic", f"paths.store={tmp_path / 'none.h5'}", run_dir, cwd=tmp_path),
        "dsaml-train: error:",
        "none.h5",
    )
    assert_short_error(
        command("evaluate", f"ckpt_path={tmp_path / 'no.ckpt'}", run_dir, cwd=tmp_path), "no.ckpt"
    )


@pytest.mark.slow  # runs the commands in processes of their own
def test_truncated_store_and_existing_files_as_outputs(tmp_path):
    from app_fixtures import save_tiny_ckpt, write_audio

    ckpt = save_tiny_ckpt(tmp_path / "m.ckpt")
    truncated = tmp_path / "t.h5"
    truncated.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert_short_error(
        command(
            "evaluate",
            f"ckpt_path={ckpt}",
            "task=dmer",
            "data=synthetic",
            f"paths.store={truncated}",
            f"hydra.run.dir={tmp_path / 'e'}",
            cwd=tmp_path,
        ),
        "t.h5",
    )
    song = write_audio(tmp_path / "song.wav", 20.0, 22050, 1)
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    assert_short_error(
        command("predict", f"ckpt={ckpt}", f"inputs=[{song}]", f"out={a_file}", cwd=tmp_path),
        "out=",
        "existing file",
    )
    assert a_file.read_text() == "keep me"
    assert_short_error(
        command(
            "preprocess", "data=synthetic", f"data.root={tmp_path}", f"paths.store={tmp_path}", cwd=tmp_path
        ),
        "is a folder",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders: nothing to refuse")
def test_read_only_output_folder(tmp_path):
    from app_fixtures import save_tiny_ckpt, write_audio

    ckpt = save_tiny_ckpt(tmp_path / "m.ckpt")
    song = write_audio(tmp_path / "song.wav", 20.0, 22050, 1)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_short_error(
            command("predict", f"ckpt={ckpt}", f"inputs=[{song}]", f"out={locked}", cwd=tmp_path),
            "not writable",
        )
    finally:
        locked.chmod(0o700)


def test_convert_wrong_shapes_and_existing_output(tmp_path, capsys):
    original = tmp_path / "original.pt"
    torch.save(state_dict_to_original(tiny_net(global_context="precomputed:imagebind")), original)
    assert convert_main([str(original), str(tmp_path / "a.ckpt"), "num_attention_heads=2"]) == 2
    err = capsys.readouterr().err
    assert "do not fit" in err and "size mismatch" in err and len(err.strip().splitlines()) <= 2
    out = tmp_path / "exists.ckpt"
    out.write_text("keep me")
    assert convert_main([str(original), str(out), "num_attention_heads=2", "origin_feature_dim=16"]) == 2
    err = capsys.readouterr().err
    assert (
        "exists and is not a dsaml-convert checkpoint; pass --overwrite" in err
        and out.read_text() == "keep me"
    )


@pytest.mark.slow  # runs the commands in processes of their own
def test_taken_run_folder_is_refused_before_hydra_rewrites_its_config(tmp_path):
    taken = tmp_path / "run"
    (taken / "checkpoints").mkdir(parents=True)
    (taken / ".hydra").mkdir()
    (taken / ".hydra" / "config.yaml").write_text("the earlier run's config\n")
    for module in ("train", "evaluate"):
        extra = ["ckpt_path=x.ckpt"] if module == "evaluate" else []
        result = command(module, "data=synthetic", *extra, f"hydra.run.dir={taken}", cwd=tmp_path)
        assert_short_error(result, "already holds a run's results (checkpoints)", "overwrite=true")
        assert (taken / ".hydra" / "config.yaml").read_text() == "the earlier run's config\n"


@pytest.mark.slow  # runs the commands in processes of their own
def test_command_line_values_are_type_checked_before_any_folder(tmp_path):
    """trainer.max_epochs=abc used to fail inside Lightning (AssertionError) after creating csv/ in the run
    folder, which then blocked reruns; seed=abc an int() traceback."""
    run_dir = tmp_path / "run"
    assert_short_error(
        command("train", "trainer.max_epochs=abc", f"hydra.run.dir={run_dir}", cwd=tmp_path),
        "trainer.max_epochs='abc': expected a number (default 50)",
    )
    assert not run_dir.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("train", ["seed=abc"], "seed='abc': expected a number (default 0)"),
        ("train", ["task.lr=fast"], "task.lr='fast': expected a number"),
        ("train", ["test=maybe"], "test='maybe': expected true or false (default True)"),
        ("predict", ["ckpt=x", "inputs=[a]", "plot=3"], "plot=3: expected true or false"),
        ("train", ["trainer.devices=auto", "seed=7", "trainer.limit_train_batches=0.5"], None),
    ],
)
def test_value_types_against_the_defaults(name, args, message, capsys):
    from dsaml.cli.overrides import check_overrides

    if message is None:  # words where Lightning takes them, numbers where numbers are expected: accepted
        args = [a.replace("trainer.limit", "+trainer.limit") for a in args]
        check_overrides(name, f"dsaml-{name}", args)
        return
    with pytest.raises(SystemExit) as caught:
        check_overrides(name, f"dsaml-{name}", args)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_convert_options_after_flags_and_ignored_intermediate_size(tmp_path, capsys):
    """`dsaml-convert in out --overwrite k=v` was rejected for its order; intermediate_size was silently
    ignored (a size error followed); an output that is the input is refused even with --overwrite."""
    original = tmp_path / "original.pt"
    torch.save(state_dict_to_original(tiny_net(global_context="precomputed:imagebind")), original)
    out = tmp_path / "out.ckpt"
    options = ["num_attention_heads=2", "origin_feature_dim=16", "num_hidden_layers=1", "ffn_size=16"]
    out.write_text("old")
    assert convert_main([str(original), str(out), "--overwrite", *options]) == 0, capsys.readouterr().err
    assert convert_main([str(original), str(out), *options]) == 0  # an earlier dsaml-convert output
    assert convert_main([str(original), str(out), "--overwrite", "intermediate_size=16", *options]) == 2
    err = capsys.readouterr().err
    assert "option 'intermediate_size' would be ignored" in err and "ffn_size=<width>" in err
    before = original.read_bytes()
    assert convert_main([str(original), str(original), "--overwrite", *options]) == 2
    assert "is also the input IN.pt" in capsys.readouterr().err and original.read_bytes() == before


def test_an_unquoted_space_in_a_value_gets_the_quoting_hint(capsys):
    from dsaml.cli.overrides import check_overrides

    with pytest.raises(SystemExit) as caught:
        check_overrides("predict", "dsaml-predict", ["ckpt=x", "inputs=[a]", "out=my", "folder"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Error parsing override 'folder': no '=': quote a value with spaces" in err
    assert '"out=my folder"' in err
