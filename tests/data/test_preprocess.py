"""dsaml-preprocess: resumable after kill -9, broken files reported, strict exit code, config checks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from data_fixtures import data_config, subset_tree
from dsaml.cli.preprocess import run
from dsaml.config import CONFIG_DIR, ConfigError
from dsaml.data.preprocess import PreprocessConfig, preprocess
from dsaml.data.store import FeatureStore, StoreError
from dsaml.data.synth.corpus import load_truth

CLI = [sys.executable, "-m", "dsaml.cli.preprocess"]


def _songs(corpus: Path, n_clips: int) -> list[str]:
    songs = load_truth(corpus)["songs"]
    clips = [s for s in songs if songs[s]["kind"] == "clip" and int(s) >= 1001][:n_clips]
    return clips + [next(s for s in songs if songs[s]["kind"] == "full")]


def _dump(path: Path) -> dict:
    """Every dataset and attribute of an HDF5 file, for equality checks."""
    out = {}
    with h5py.File(path) as handle:
        handle.visititems(
            lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
        out["attrs"] = {k: v for k, v in handle.attrs.items()}
    return out


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("preprocess", overrides=list(overrides))


def _gone(marker: str, within: float) -> bool:
    """True once no process's command line mentions `marker` (Linux /proc; True elsewhere)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                alive.append(marker in cmdline.read_bytes().decode(errors="replace"))
        if not any(alive):
            return True
        time.sleep(0.2)
    return False


def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_corpus, tmp_path):
    root = subset_tree(tiny_corpus, tmp_path / "corpus", _songs(tiny_corpus, 9))
    killed, clean = tmp_path / "killed.h5", tmp_path / "clean.h5"
    args = [f"data.root={root}", "workers=1", "progress=false", "dtype=float32"]
    process = subprocess.Popen([*CLI, *args, f"paths.store={killed}"], stderr=subprocess.PIPE, text=True)
    parts = Path(str(killed) + ".parts")
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.npz"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = len(list(parts.glob("*.npz")))
    assert 3 <= done < 10 and not killed.exists()
    assert _gone(str(killed), within=10), "a decode worker outlived the killed run"
    Path(str(killed) + ".tmp").write_bytes(b"half-written store from an earlier crash")

    resumed = subprocess.run([*CLI, *args, f"paths.store={killed}"], stderr=subprocess.PIPE, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{10 - done} computed, {done} resumed" in resumed.stderr
    assert not parts.exists()

    preprocess(data_config(root), PreprocessConfig(workers=1, dtype="float32", progress=False), clean)
    a, b = _dump(killed), _dump(clean)
    assert a.keys() == b.keys()
    for key in a:
        if key != "attrs":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["attrs"] == b["attrs"]
    assert FeatureStore(killed).n_segments(_songs(tiny_corpus, 1)[0]) == 60

    again = subprocess.run([*CLI, *args, f"paths.store={killed}"], stderr=subprocess.PIPE, text=True)
    assert again.returncode == 0 and "is up to date" in again.stderr
    changed = subprocess.run(
        [*CLI, *args, f"paths.store={killed}", "chunk_segments=8"], stderr=subprocess.PIPE, text=True
    )
    assert (
        changed.returncode == 2
        and "different configuration or input (differs in ['chunk_segments'])" in changed.stderr
    )


def test_broken_files_are_reported_and_strict_sets_the_exit_code(tiny_corpus, tmp_path):
    good, empty, junk = _songs(tiny_corpus, 3)[:3]
    root = subset_tree(tiny_corpus, tmp_path / "corpus", [good, empty, junk])
    audio = root / "DEAM_audio" / "MEMD_audio"
    (audio / f"{empty}.mp3").write_bytes(b"")
    (audio / f"{junk}.mp3").write_bytes(b"ID3" + bytes(range(256)) * 40)
    store = tmp_path / "store.h5"
    console = Console(file=(log := tmp_path / "log.txt").open("w"), width=200)
    overrides = [f"data.root={root}", f"paths.store={store}", "workers=0", "progress=false"]
    assert run(_compose(*overrides), console) == 0
    console.file.close()
    text = log.read_text()
    assert "failed songs (id, path, reason):" in text
    assert f"{empty}  {audio / f'{empty}.mp3'}  empty file (0 bytes)" in text
    failures = FeatureStore(store).failures
    assert [f["id"] for f in failures] == [empty, junk]
    assert failures[1]["reason"] == "cannot decode audio (Format not recognised.)" and failures[1][
        "path"
    ] == str(audio / f"{junk}.mp3")
    assert FeatureStore(store).song_ids() == [good]

    assert (
        run(_compose(*overrides, "strict=true", "overwrite=true"), Console(file=open(os.devnull, "w"))) == 1
    )


def test_changed_audio_is_not_reported_up_to_date(tiny_corpus, tmp_path):
    """The store records every audio file's content: new audio under the same name needs a rebuild."""
    first, second = _songs(tiny_corpus, 2)[:2]
    root = subset_tree(tiny_corpus, tmp_path / "corpus", [first])
    store, options = tmp_path / "store.h5", PreprocessConfig(workers=0, progress=False)
    preprocess(data_config(root), options, store)
    assert preprocess(data_config(root), options, store).up_to_date
    audio = root / "DEAM_audio" / "MEMD_audio" / f"{first}.mp3"
    audio.write_bytes((tiny_corpus / load_truth(tiny_corpus)["songs"][second]["audio"]).read_bytes())
    with pytest.raises(ConfigError, match=r"different configuration or input \(differs in \['audio'\]\)"):
        preprocess(data_config(root), options, store)


def test_configuration_errors_stop_before_any_work(tmp_path):
    store = tmp_path / "never.h5"
    for override, message in (
        ("dtype=float64", "dtype='float64' is not one of float16, float32"),
        ("+colour=red", "unknown key(s) ['colour']; allowed keys: ['workers'"),
        ("data.layout=deep", "data.layout='deep' is not one of auto, nested, flat"),
        ("device=tpu", "device='tpu': expected 'auto', 'cpu', 'cuda'"),
    ):
        log = tmp_path / "log.txt"
        with log.open("w") as handle:
            code = run(
                _compose(f"data.root={tmp_path}", f"paths.store={store}", override),
                Console(file=handle, width=300),
            )
        assert code == 2 and message in log.read_text(), override
    assert not store.exists()
    with pytest.raises(ConfigError, match="workers=-1: expected a non-negative integer"):
        PreprocessConfig(workers=-1)
    with pytest.raises(StoreError, match="feature store not found"):
        FeatureStore(store)


def test_an_existing_file_that_is_not_a_store_is_never_replaced(tiny_corpus, tmp_path):
    """paths.store=<a text file> or <someone's own HDF5 results> used to be replaced, exit 0; now refused
    before any work, the file intact; overwrite=true replaces it with the store."""
    root = subset_tree(tiny_corpus, tmp_path / "corpus", _songs(tiny_corpus, 1)[:1])
    text = tmp_path / "notes.txt"
    text.write_text("my notes")
    results = tmp_path / "results.h5"
    with h5py.File(results, "w") as handle:
        handle["scores"] = np.arange(5.0)
    overrides = [f"data.root={root}", "workers=0", "progress=false"]
    for target in (text, results):
        before = target.read_bytes()
        log = tmp_path / "log.txt"
        with log.open("w") as handle:
            assert run(_compose(*overrides, f"paths.store={target}"), Console(file=handle, width=300)) == 2
        assert f"paths.store='{target}' exists and is not a dsaml feature store; pass overwrite=true" in (
            log.read_text().replace("\n", "")
        )
        assert target.read_bytes() == before
    quiet = Console(file=open(os.devnull, "w"))
    assert run(_compose(*overrides, f"paths.store={results}", "overwrite=true"), quiet) == 0
    assert FeatureStore(results).song_ids() == _songs(tiny_corpus, 1)[:1]
    assert run(_compose(*overrides, f"paths.store={results}"), quiet) == 0  # its own store: up to date
