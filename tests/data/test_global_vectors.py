"""Global-context vectors in the feature store: CLAP vectors equal a direct encoder computation, file import
round trip and its checks, resume and skip, broken audio, the dsaml-preprocess hook and its config errors,
and a short training run reading `precomputed:<name>` vectors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console

from dsaml.cli.preprocess import run as preprocess_cli
from dsaml.config import CONFIG_DIR, ConfigError
from dsaml.data.catalogue import DataError
from dsaml.data.global_vectors import GlobalVectorsConfig, add_global_vectors, parts_dir
from dsaml.data.store import FeatureStore
from dsaml.training.run import run as train
from model_fixtures import TINY_CLAP_DIM as D_CLAP
from train_fixtures import DMER_TINY, train_config


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is much faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _copy(store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "store.h5"
    shutil.copy(store, target)
    return target


def _clap(path: Path, **overrides) -> GlobalVectorsConfig:
    return GlobalVectorsConfig(
        **{"source": "clap", "name": "clap", "path": str(path), "device": "cpu", **overrides}
    )


def _stored(store: Path, name: str) -> dict[str, np.ndarray]:
    with FeatureStore(store) as reader:
        return {s: reader.global_vectors(name, s) for s in reader.song_ids()}


class CountingEncoder:
    """A ClapAudioEncoder wrapper counting songs; raises KeyboardInterrupt at song `interrupt_at`."""

    def __init__(self, encoder, interrupt_at: int | None = None) -> None:
        self.encoder, self.interrupt_at, self.calls = encoder, interrupt_at, 0
        self.dim = encoder.dim

    def _count(self) -> None:
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls += 1

    def clip_vector(self, *args, **kwargs):
        self._count()
        return self.encoder.clip_vector(*args, **kwargs)

    def song_vectors(self, *args, **kwargs):
        self._count()
        return self.encoder.song_vectors(*args, **kwargs)


def test_clap_vectors_equal_a_direct_encoder_computation(tiny_store_f32, tiny_clap, tmp_path):
    from dsaml.models.clap import ClapAudioEncoder

    store = _copy(tiny_store_f32, tmp_path)
    summary = add_global_vectors(store, _clap(tiny_clap))
    vectors = _stored(store, "clap")
    with FeatureStore(store) as reader:
        info = {s: reader.song_info(s) for s in reader.song_ids()}
    assert summary.computed == len(info) == 26 and not summary.failures and summary.dim == D_CLAP
    clips = [s for s in info if info[s]["mode"] == "clip"]
    songs = [s for s in info if info[s]["mode"] == "song"]
    assert len(clips) == 23 and len(songs) == 3
    for s in clips:
        assert vectors[s].shape == (1, D_CLAP)
    for s in songs:
        assert vectors[s].shape == (info[s]["n_segments"], D_CLAP)
    # independent decode (soundfile, channel mean) and a separately loaded encoder
    encoder = ClapAudioEncoder.from_pretrained(tiny_clap, batch_size=5)
    for s in [*clips[:2], songs[0]]:
        frames, rate = sf.read(info[s]["audio_path"], dtype="float32", always_2d=True)
        audio = frames.mean(axis=1)
        if info[s]["mode"] == "clip":
            direct = encoder.clip_vector(audio, rate, start_s=15.0)
        else:
            direct = encoder.song_vectors(audio, rate, info[s]["n_segments"])
        np.testing.assert_allclose(vectors[s], direct, rtol=1e-4, atol=1e-5, err_msg=s)
    assert np.abs(np.diff(vectors[songs[0]], axis=0)).max() > 0  # one vector per window, not repeated
    with h5py.File(store) as handle:
        attrs = dict(handle["global/clap"].attrs)
    assert attrs["source"] == "clap" and attrs["dim"] == D_CLAP
    assert attrs["path"] == str(tiny_clap.resolve()) and "ClapModel" in attrs["encoder"]


def test_interrupted_run_resumes_and_done_songs_are_skipped(tiny_store_f32, tiny_clap, tmp_path):
    from dsaml.models.clap import ClapAudioEncoder

    encoder = ClapAudioEncoder.from_pretrained(tiny_clap)
    store = _copy(tiny_store_f32, tmp_path)
    first = CountingEncoder(encoder, interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        add_global_vectors(store, _clap(tiny_clap), encoder=first)
    assert len(list(parts_dir(store, "clap").glob("*.npy"))) == 4
    assert FeatureStore(store).global_names() == []  # the store is only written at the end

    second = CountingEncoder(encoder)
    summary = add_global_vectors(store, _clap(tiny_clap), encoder=second)
    assert second.calls == summary.computed == 22 and summary.resumed == 4
    assert not parts_dir(store, "clap").exists()
    resumed = _stored(store, "clap")

    (tmp_path / "clean").mkdir()
    clean = _copy(tiny_store_f32, tmp_path / "clean")
    add_global_vectors(clean, _clap(tiny_clap), encoder=encoder)
    for song, vectors in _stored(clean, "clap").items():
        np.testing.assert_array_equal(resumed[song], vectors)

    third = CountingEncoder(encoder)
    again = add_global_vectors(store, _clap(tiny_clap), encoder=third)
    assert third.calls == 0 and again.stored == 26 and again.computed == 0

    # another source under the same name: refused before any work, replaced with overwrite=true
    table = {s: np.zeros((len(v), 3), np.float32) for s, v in resumed.items()}
    np.savez(tmp_path / "other.npz", **table)
    other = GlobalVectorsConfig(source="file", name="clap", path=str(tmp_path / "other.npz"))
    with pytest.raises(
        ConfigError,
        match=r"different source \(differs in \['dim', 'encoder', 'fingerprint', 'path', 'source'\]",
    ):
        add_global_vectors(store, other)
    clip = next(s for s, v in resumed.items() if len(v) == 1)
    assert _stored(store, "clap")[clip].shape == (1, D_CLAP)
    add_global_vectors(store, GlobalVectorsConfig(**{**vars(other), "overwrite": True}))
    assert _stored(store, "clap")[clip].shape == (1, 3)


def _shapes(store: Path) -> dict[str, tuple[str, int]]:
    with FeatureStore(store) as reader:
        return {s: (reader.song_info(s)["mode"], reader.n_segments(s)) for s in reader.song_ids()}


def _random_table(store: Path, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """[D] per clip (the file form of [1, D]) and [T, D] per full song."""
    rng = np.random.default_rng(seed)
    return {
        s: rng.standard_normal(dim if mode == "clip" else (t, dim)).astype(np.float32)
        for s, (mode, t) in _shapes(store).items()
    }


def test_file_import_round_trip_npz_and_h5(tiny_store_f32, tmp_path):
    store = _copy(tiny_store_f32, tmp_path)
    table = _random_table(store, 8)
    with h5py.File(store, "r+") as handle:  # a song that failed preprocessing may be in the file
        handle.attrs["failures"] = json.dumps([{"id": "4242", "path": "x.mp3", "reason": "empty file"}])
    np.savez(tmp_path / "imagebind.npz", **table, **{"4242": np.ones(8, np.float32)})
    summary = add_global_vectors(
        store, GlobalVectorsConfig(source="file", name="imagebind", path=str(tmp_path / "imagebind.npz"))
    )
    assert summary.computed == 26 and summary.dim == 8
    for song, vectors in _stored(store, "imagebind").items():
        np.testing.assert_array_equal(vectors, table[song].reshape(-1, 8))
    with h5py.File(tmp_path / "vectors.h5", "w") as handle:
        for song, vectors in table.items():
            handle.create_dataset(f"global/{song}", data=vectors * 2)
    add_global_vectors(
        store, GlobalVectorsConfig(source="file", name="twice", path=str(tmp_path / "vectors.h5"))
    )
    with FeatureStore(store) as reader:
        assert reader.global_names() == ["imagebind", "twice"]
        song = next(s for s, (mode, _) in _shapes(store).items() if mode == "song")
        np.testing.assert_array_equal(reader.global_vectors("twice", song, 5, 65), table[song][5:65] * 2)


def test_file_that_does_not_fit_the_store_is_refused_naming_songs_and_shapes(tiny_store_f32, tmp_path):
    store = _copy(tiny_store_f32, tmp_path)
    shapes = _shapes(store)
    clip = next(s for s, (mode, _) in shapes.items() if mode == "clip")
    song = next(s for s, (mode, _) in shapes.items() if mode == "song")
    missing = [s for s in shapes if s not in (clip, song)][-1]
    table = _random_table(store, 4)
    table[clip] = np.zeros((2, 4), np.float32)
    table[song] = table[song][:-1]
    del table[missing]
    table["9999"] = np.zeros(4, np.float32)
    np.savez(tmp_path / "bad.npz", **table)
    config = GlobalVectorsConfig(source="file", name="bad", path=str(tmp_path / "bad.npz"))
    with pytest.raises(DataError) as error:
        add_global_vectors(store, config)
    message = str(error.value)
    t = shapes[song][1]
    assert f"global-vector file {tmp_path / 'bad.npz'} does not fit the store" in message
    assert f"1 stored song(s) have no vectors: {missing}" in message
    assert "1 id(s) are not songs of the store: 9999" in message
    assert f"song {clip} (clip): shape [2, 4], expected [1, 4]" in message
    assert f"song {song} (full song, {t} segments): shape [{t - 1}, 4], expected [{t}, 4]" in message
    assert FeatureStore(store).global_names() == [] and not parts_dir(store, "bad").exists()
    table = _random_table(store, 4)
    table[clip] = np.zeros(5, np.float32)
    np.savez(tmp_path / "widths.npz", **table)
    with pytest.raises(DataError, match="vectors have different widths \\[4, 5\\]"):
        add_global_vectors(
            store, GlobalVectorsConfig(source="file", name="w", path=str(tmp_path / "widths.npz"))
        )


def test_broken_audio_is_reported_and_retried_on_the_next_run(tiny_store_f32, tiny_clap, tmp_path):
    store = _copy(tiny_store_f32, tmp_path)
    with FeatureStore(store) as reader:
        ids = reader.song_ids()
        paths = list(reader._t["songs"]["audio_path"])
    junk, changed = tmp_path / "junk.mp3", tmp_path / "changed.mp3"
    junk.write_bytes(b"ID3" + bytes(range(256)) * 40)
    shutil.copy(paths[3], changed)
    with changed.open("ab") as handle:
        handle.write(b"\0" * 10)
    broken = dict(zip(ids, paths, strict=True))
    broken[ids[1]], broken[ids[3]] = str(junk), str(changed)
    with h5py.File(store, "r+") as handle:
        handle["songs/audio_path"][...] = list(broken.values())
    summary = add_global_vectors(store, _clap(tiny_clap))
    assert summary.computed == 24 and [f["id"] for f in summary.failures] == [ids[1], ids[3]]
    assert summary.failures[0] == {
        "id": ids[1],
        "path": str(junk),
        "reason": "cannot decode audio (Format not recognised.)",
    }
    assert "the audio changed since the store was built" in summary.failures[1]["reason"]
    with FeatureStore(store) as reader, pytest.raises(KeyError, match=f"no entry for song '{ids[1]}'"):
        reader.global_vectors("clap", ids[1])
    with h5py.File(store, "r+") as handle:  # the files are fixed: the next run computes just those two
        handle["songs/audio_path"][...] = paths
    again = add_global_vectors(store, _clap(tiny_clap))
    assert again.computed == 2 and again.stored == 24 and not again.failures
    assert _stored(store, "clap")[ids[1]].shape == (1, D_CLAP)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("preprocess", overrides=list(overrides))


def _cli(tmp_path: Path, *overrides: str) -> tuple[int, str]:
    log = tmp_path / "log.txt"
    with log.open("w") as handle:
        code = preprocess_cli(_compose(*overrides), Console(file=handle, width=400))
    return code, log.read_text()


def test_preprocess_adds_vectors_to_an_up_to_date_store(tiny_corpus, tiny_store_f32, tiny_clap, tmp_path):
    store = _copy(tiny_store_f32, tmp_path)
    with h5py.File(store) as handle:
        logmel = handle["features/logmel"][:50]
    args = [f"data.root={tiny_corpus}", f"paths.store={store}", "dtype=float32", "progress=false"]
    clap_args = ["global_vectors=clap", f"global_vectors.path={tiny_clap}", "global_vectors.device=cpu"]
    code, log = _cli(tmp_path, *args, *clap_args)
    assert code == 0, log
    assert f"{store} is up to date (26 songs)" in log  # the log-mel was not recomputed
    assert "songs: 26 in the store, 26 computed, 0 already stored" in log
    with h5py.File(store) as handle:
        np.testing.assert_array_equal(handle["features/logmel"][:50], logmel)
        assert handle["global/clap"].attrs["dim"] == D_CLAP
    code, log = _cli(tmp_path, *args, *clap_args)
    assert code == 0 and f"global vectors 'clap' (clap, D={D_CLAP}) in {store}: up to date (26 songs)" in log
    assert f"train with: model.global_context=precomputed:clap model.global_dim={D_CLAP}" in log
    table = _random_table(store, 6)
    np.savez(tmp_path / "v.npz", **table)
    file_args = ["global_vectors=file", f"global_vectors.path={tmp_path / 'v.npz'}"]
    code, log = _cli(tmp_path, *args, *file_args, "global_vectors.name=imagebind")
    assert code == 0 and "songs: 26 in the store, 26 computed" in log
    song = next(iter(table))
    np.testing.assert_array_equal(_stored(store, "imagebind")[song], table[song].reshape(-1, 6))
    code, log = _cli(tmp_path, *args, *file_args, "global_vectors.name=clap")
    assert code == 2 and "already holds global vectors 'clap' from a different source" in log
    assert "set global_vectors.overwrite=true" in log


def test_configuration_errors_stop_before_any_work(tiny_clap, tmp_path):
    store = tmp_path / "never.h5"
    base = [f"data.root={tmp_path}", f"paths.store={store}"]
    clap = ["global_vectors=clap", f"global_vectors.path={tiny_clap}"]
    for overrides, message in (
        (["global_vectors=clap"], "global_vectors=clap needs global_vectors.path=..."),
        (
            ["global_vectors=file"],
            "global_vectors=file needs global_vectors.name=..., global_vectors.path=...",
        ),
        (
            ["global_vectors.source=imagebind"],
            "global_vectors.source='imagebind' is not one of none, clap, file",
        ),
        (
            [*clap, "+global_vectors.colour=red"],
            "global_vectors: unknown key(s) ['colour']; allowed keys: ['source', 'name', 'path'",
        ),
        ([*clap, "global_vectors.device=tpu"], "device='tpu': expected 'auto', 'cpu', 'cuda'"),
        ([*clap, "global_vectors.batch_size=0"], "global_vectors.batch_size=0: expected an integer >= 1"),
        ([*clap, "global_vectors.name=a/b"], "global_vectors.name='a/b': expected a name without '/'"),
        (
            ["global_vectors=clap", f"global_vectors.path={tmp_path / 'nothing'}"],
            "neither a CLAP checkpoint directory nor a model in the Hugging Face cache",
        ),
        (
            ["global_vectors=file", "global_vectors.name=x", f"global_vectors.path={tmp_path / 'x.npz'}"],
            "x.npz': no such file",
        ),
        (
            ["global_vectors=file", "global_vectors.name=x", f"global_vectors.path={tmp_path / 'x.csv'}"],
            "expected a file ending in ['.npz', '.h5', '.hdf5']",
        ),
    ):
        code, log = _cli(tmp_path, *base, *overrides)
        assert code == 2 and "configuration error" in log and message in log, (overrides, log)
    assert not store.exists()


def test_training_reads_precomputed_vectors(tiny_store_f32, tmp_path):
    store = _copy(tiny_store_f32, tmp_path)
    np.savez(tmp_path / "imagebind.npz", **_random_table(store, 8))
    add_global_vectors(
        store, GlobalVectorsConfig(source="file", name="imagebind", path=str(tmp_path / "imagebind.npz"))
    )
    overrides = [
        *DMER_TINY,
        "debug=fast_dev_run",
        "model.global_context=precomputed:imagebind",
        "model.global_dim=8",
    ]
    metrics = train(train_config(store, tmp_path / "run", overrides))
    assert np.isfinite(metrics["test/average"])
    # both mistakes fail before any work, saying what the store holds
    with pytest.raises(ValueError, match=r"needs global vectors 'clap', but .* holds \['imagebind'\]"):
        train(
            train_config(
                store, tmp_path / "clap", [*overrides[:-2], "model.global_context=clap", "model.global_dim=8"]
            )
        )
    wide = r"'imagebind' .* are 8 wide, .* model.global_dim=12; set model.global_dim=8"
    with pytest.raises(ValueError, match=wide):
        train(train_config(store, tmp_path / "wide", [*overrides[:-1], "model.global_dim=12"]))
    assert not (tmp_path / "clap").exists() and not (tmp_path / "wide").exists()
