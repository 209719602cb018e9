"""Feature stores are never silently corrupted: one preprocess run at a time (a second, real process is
refused naming the holder; a killed holder's lock is detected as stale), stores verify themselves (tables,
offsets, counts; finiteness on request) before being called up to date or trained on, damaged or truncated
stores and unusable songs are reported where they arise, and a store made with other feature settings than
asked is refused."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_fixtures import subset_tree
from dsaml.config import ConfigError
from dsaml.data.preprocess import PreprocessConfig, preprocess
from dsaml.data.store import FeatureStore, StoreError
from dsaml.training.run import run
from train_fixtures import DMER_TINY, train_config

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
CLI = [sys.executable, "-m", "dsaml.cli.preprocess"]
AVERAGED = "DEAM_Annotations/annotations/annotations averaged per song/dynamic (per second annotations)"


def _few_songs(corpus: Path, target: Path, n: int = 3) -> tuple[Path, list[str]]:
    lines = (corpus / AVERAGED / "arousal.csv").read_text().splitlines()[1:]
    songs = [line.split(",", 1)[0] for line in lines][:n]
    return subset_tree(corpus, target, songs), songs


def _preprocess_cli(root: Path, store: Path, *extra: str) -> subprocess.Popen:
    args = [f"data.root={root}", f"paths.store={store}", "workers=0", "progress=false", *extra]
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV
    )


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_is_stale(
    tiny_corpus,
    tmp_path,
):
    root, songs = _few_songs(tiny_corpus, tmp_path / "corpus")
    store = tmp_path / "s.h5"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dsaml.data.store import store_lock\n"
            f"with store_lock({str(store)!r}):\n    print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = _preprocess_cli(root, store)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "Traceback" not in err
        assert not store.exists() and not Path(f"{store}.parts").exists()  # the refused run touched nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    after = _preprocess_cli(root, store)
    out, err = after.communicate(timeout=300)
    assert after.returncode == 0, err
    assert "stale lock" in out + err and f"pid {holder.pid}" in out + err
    with FeatureStore(store) as built:
        built.verify(full=True)
        assert built.song_ids() == songs


def test_two_simultaneous_runs_leave_one_good_store(tiny_corpus, tmp_path):
    root, songs = _few_songs(tiny_corpus, tmp_path / "corpus")
    store = tmp_path / "s.h5"
    first, second = _preprocess_cli(root, store), _preprocess_cli(root, store, "overwrite=true")
    results = [(p.wait(timeout=300), p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert any("being written by another run" in err for code, (_, err) in results if code == 2)
    with FeatureStore(store) as built:
        built.verify(full=True)
        assert built.song_ids() == songs


def _damaged_copy(store: Path, target: Path, edit) -> Path:
    shutil.copy(store, target)
    with h5py.File(target, "r+") as handle:
        edit(handle)
    return target


def test_verify_finds_bad_offsets_counts_and_non_finite_values(tiny_store_f32, tmp_path):
    with FeatureStore(tiny_store_f32) as good:
        good.verify(full=True)
        first = good.song_ids()[0]

    def shift(handle):
        handle["songs/offset"][1] += 1

    def shorten(handle):
        handle["features/logmel"].resize(handle["features/logmel"].shape[0] - 1, axis=0)

    def poison(handle):
        handle["features/logmel"][0, 0, 0] = np.nan

    with FeatureStore(_damaged_copy(tiny_store_f32, tmp_path / "a.h5", shift)) as store:
        with pytest.raises(StoreError, match=r"damaged: song '.*': offset"):
            store.verify()
    with FeatureStore(_damaged_copy(tiny_store_f32, tmp_path / "b.h5", shorten)) as store:
        with pytest.raises(StoreError, match=r"segments, /features/logmel"):
            store.verify()
    with FeatureStore(_damaged_copy(tiny_store_f32, tmp_path / "c.h5", poison)) as store:
        store.verify()  # the cheap part reads no features
        with pytest.raises(StoreError, match=rf"song '{first}': non-finite features"):
            store.verify(full=True)


def test_truncated_store_is_a_clear_error(tiny_store_f32, tmp_path):
    truncated = tmp_path / "t.h5"
    truncated.write_bytes(tiny_store_f32.read_bytes()[: tiny_store_f32.stat().st_size // 2])
    with pytest.raises(StoreError, match="not a readable feature store"):
        FeatureStore(truncated)


def test_a_damaged_store_is_not_up_to_date(tiny_corpus, tmp_path):
    root, songs = _few_songs(tiny_corpus, tmp_path / "corpus")
    from data_fixtures import data_config

    store = tmp_path / "s.h5"
    options = PreprocessConfig(workers=0, progress=False)
    preprocess(data_config(root), options, store)

    def shift(handle):
        handle["songs/offset"][1] += 1

    _damaged_copy(store, tmp_path / "copy.h5", shift)
    os.replace(tmp_path / "copy.h5", store)
    summary = preprocess(data_config(root), options, store)
    assert not summary.up_to_date and summary.computed == len(songs)
    with FeatureStore(store) as rebuilt:
        rebuilt.verify(full=True)


def test_song_without_usable_labels_is_excluded_with_its_reason(tiny_corpus, tmp_path):
    root, songs = _few_songs(tiny_corpus, tmp_path / "corpus")
    for name in ("arousal.csv", "valence.csv"):
        path = root / AVERAGED / name
        lines = path.read_text().splitlines()
        cells = lines[1].split(",")
        cells[1] = "abc"  # the first curve value of the first song is not a number
        lines[1] = ",".join(cells)
        path.write_text("\n".join(lines) + "\n")
    from data_fixtures import data_config

    store = tmp_path / "s.h5"
    summary = preprocess(data_config(root), PreprocessConfig(workers=0, progress=False), store)
    assert [f["id"] for f in summary.failures] == [songs[0]]
    assert "no usable arousal/valence labels" in summary.failures[0]["reason"]
    with FeatureStore(store) as built:
        assert built.song_ids() == songs[1:]
        built.verify(full=True)


def test_training_refuses_a_store_with_other_feature_settings(tiny_store_f32, tmp_path):
    cfg = train_config(tiny_store_f32, tmp_path, [*DMER_TINY, "data=synthetic", "data.features.n_mels=64"])
    with pytest.raises(ConfigError, match=r"data.features.n_mels=64 \(store: 128\)"):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_non_finite_features_are_named_at_test(tiny_store_f32, tmp_path):
    """Inf in the test songs' features (a damaged store; training and validation never read them): the
    test stage stops naming the song instead of reporting NaN metrics."""
    damaged = tmp_path / "nan.h5"
    with FeatureStore(tiny_store_f32) as good:
        songs = good.song_ids("test")
        offsets = {s: good.song_info(s)["offset"] for s in songs}

    def poison(handle):
        for song in songs:
            handle["features/logmel"][offsets[song], 0, 0] = np.inf

    _damaged_copy(tiny_store_f32, damaged, poison)
    with pytest.raises(StoreError, match=r"song '\d+' has non-finite \(NaN/inf\) logmel"):
        run(train_config(damaged, tmp_path / "run", DMER_TINY))
