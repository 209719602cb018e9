"""The feature store: the contract API, metadata, float16/float32, global vectors, per-process handles."""

from __future__ import annotations

import multiprocessing

import h5py
import numpy as np
import pytest
import torch

import dsaml
from data_fixtures import data_config, subset_tree, write_pmemo
from dsaml.data.audio import fingerprint_file
from dsaml.data.preprocess import PreprocessConfig, preprocess
from dsaml.data.readers import DataConfig, read_catalogue
from dsaml.data.store import FeatureStore, FeatureStoreWriter, StoreError
from dsaml.data.synth.corpus import load_truth


def test_contract_api_and_catalogue(tiny_corpus, tiny_store_f32):
    store = FeatureStore(tiny_store_f32)
    catalogue = read_catalogue(data_config(tiny_corpus))
    truth = load_truth(tiny_corpus)["songs"]
    assert store.dataset == "synthetic" and store.segments_per_clip == 60
    assert store.song_ids() == list(catalogue.songs)
    assert store.song_ids("test") == [s for s in truth if truth[s]["kind"] == "full"]
    assert set(store.song_ids("train")) | set(store.song_ids("test")) == set(store.song_ids())
    for song_id in store.song_ids("train"):
        assert store.n_segments(song_id) == 60 and store.logmel(song_id).shape == (60, 51, 128)
    song = store.song_ids("test")[0]
    assert store.duration_s(song) == pytest.approx(truth[song]["duration_s"], abs=0.05)
    arousal, valence = store.curves(int(song))  # int ids are accepted
    np.testing.assert_array_equal(arousal, catalogue.averaged[song][0])
    assert arousal.dtype == np.float32 and len(valence) == len(arousal)
    assert abs(len(arousal) - store.n_segments(song)) <= 3

    raters = store.raters("train")
    assert raters == sorted({r for r, s in catalogue.pdmer_pairs if catalogue.songs[s].split == "train"})
    rater = raters[0]
    songs = store.songs_of_rater(rater, "train")
    assert len(songs) >= 16
    # every pair in one pass: the catalogue's training pairs, by rater, each rater's songs as songs_of_rater
    pairs = store.rater_songs("train")
    assert sorted(pairs) == sorted(
        (r, s) for r, s in catalogue.pdmer_pairs if catalogue.songs[s].split == "train"
    )
    assert [s for r, s in pairs if r == rater] == songs and [r for r, _ in pairs] == sorted(
        r for r, _ in pairs
    )
    assert store.songs_by_rater("test") == {r: store.songs_of_rater(r, "test") for r in store.raters("test")}
    np.testing.assert_array_equal(store.curves(songs[0], rater)[1], catalogue.ratings[(rater, songs[0])][1])
    with pytest.raises(KeyError, match="rater 'nobody' has no curves for song"):
        store.curves(songs[0], "nobody")
    with pytest.raises(KeyError, match="song '42' is not in"):
        store.logmel("42")
    with pytest.raises(ValueError, match="split='val'"):
        store.song_ids("val")


def test_window_reads_equal_slices_of_the_whole_song(tiny_store_f32):
    store = FeatureStore(tiny_store_f32)
    song = store.song_ids("test")[-1]
    whole = store.logmel(song)
    for start, stop in ((0, 60), (17, 44), (len(whole) - 5, None), (3, 3)):
        np.testing.assert_array_equal(store.logmel(song, start, stop), whole[start:stop])
    # a window touches only the chunks it overlaps (chunks of 16 segments along the song axis)
    with h5py.File(tiny_store_f32) as handle:
        assert handle["features/logmel"].chunks == (16, 51, 128)


def test_metadata_attributes(tiny_corpus, tiny_store_f32):
    store = FeatureStore(tiny_store_f32)
    attrs = store.attrs
    assert attrs["dsaml_version"] == dsaml.__version__ and attrs["dtype"] == "float32"
    assert store.feature_config["n_fft"] == 2646 and store.feature_config["start_s"] == 15.0
    assert attrs["data_config"]["pdmer"]["min_songs"] == 16 and attrs["failures"] == []
    song = store.song_ids()[0]
    info = store.song_info(song)
    assert info["fingerprint"] == fingerprint_file(info["audio_path"])
    for path, fingerprint in attrs["annotation_fingerprints"].items():
        assert fingerprint == fingerprint_file(path)


def test_global_vectors_per_clip_and_per_segment(tiny_store_f32, tmp_path):
    path = tmp_path / "copy.h5"
    path.write_bytes(tiny_store_f32.read_bytes())
    store = FeatureStore(path)
    clip, song = store.song_ids("train")[0], store.song_ids("test")[0]
    n = store.n_segments(song)
    per_segment = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    store.close()  # HDF5 does not open a file for writing while this process holds it open for reading
    with FeatureStoreWriter(path) as writer:
        writer.add_global_vectors("toy", clip, np.ones((1, 8)), attrs={"encoder": "toy-v1"})
        writer.add_global_vectors("toy", int(song), per_segment)
        with pytest.raises(ValueError, match=r"expected \[1, D\] or \[60, D\]"):
            writer.add_global_vectors("toy", clip, np.ones((5, 8)))
        with pytest.raises(ValueError, match="D=4, but this name already holds D=8"):
            writer.add_global_vectors("toy", clip, np.ones((1, 4)))
    store = FeatureStore(path)
    assert store.global_names() == ["toy"] and store.global_dim("toy") == 8
    assert store.global_vectors("toy", clip, 10, 20).shape == (1, 8)
    np.testing.assert_array_equal(store.global_vectors("toy", song, 5, 9), per_segment[5:9])
    with pytest.raises(KeyError, match="stored: \\['toy'\\]"):
        store.global_vectors("clap", song)


def _read_in_child(store: FeatureStore, song: str, queue) -> None:
    queue.put(store.logmel(song, 0, 4).sum().item())


def test_handles_are_opened_per_process(tiny_store_f32):
    store = FeatureStore(tiny_store_f32)
    song = store.song_ids()[0]
    expected = store.logmel(song, 0, 4).sum().item()  # the parent has an open handle before forking
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(store, song, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == pytest.approx(expected)
    loader = torch.utils.data.DataLoader(
        store.song_ids()[:4], batch_size=None, num_workers=2, collate_fn=lambda s: store.logmel(s, 0, 2)
    )
    assert all(batch.shape == (2, 51, 128) for batch in loader)
    assert store.logmel(song, 0, 4).sum().item() == pytest.approx(expected)


def test_float16_default_and_pmemo_refuses_per_rater(tiny_corpus, tiny_store_f32, tmp_path):
    song = FeatureStore(tiny_store_f32).song_ids()[0]
    root = subset_tree(tiny_corpus, tmp_path / "sub", [song])
    half = tmp_path / "half.h5"
    preprocess(data_config(root), PreprocessConfig(workers=0, progress=False), half)
    with h5py.File(half) as handle:
        assert handle["features/logmel"].dtype == np.float16
    reference = FeatureStore(tiny_store_f32).logmel(song)
    stored = FeatureStore(half).logmel(song)
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored, reference, atol=1e-2, rtol=1e-3)

    pmemo = write_pmemo(tmp_path / "pmemo")
    config = DataConfig.from_mapping(
        {
            "name": "pmemo",
            "root": str(pmemo),
            "reader": "pmemo",
            "store_as": {"train": "song", "test": "song"},
            "split": {"method": "random"},
        }
    )
    preprocess(config, PreprocessConfig(workers=0, progress=False), tmp_path / "pmemo.h5")
    store = FeatureStore(tmp_path / "pmemo.h5")
    assert store.n_segments("1") == 12 and len(store.curves("1")[0]) == 13
    with pytest.raises(StoreError, match="no per-rater curves .* PDMER is not possible"):
        store.raters("train")
