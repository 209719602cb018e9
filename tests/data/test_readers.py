"""DEAM (on dsaml-synth's corpus, both layouts) and PMEmo readers; bad input; PDMER filters."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from data_fixtures import data_config, write_pmemo
from dsaml.config import ConfigError
from dsaml.data.catalogue import Catalogue, DataError, Song
from dsaml.data.readers import DataConfig, read_catalogue
from dsaml.data.rules import PdmerFilter
from dsaml.data.synth.corpus import load_truth

AVERAGED = "DEAM_Annotations/annotations/annotations averaged per song/dynamic (per second annotations)"


def _flat_view(corpus, target):
    """The same corpus in the flat layout (annotations/, MEMD_audio/ under the root), by symlinks."""
    target.mkdir()
    (target / "annotations").symlink_to(corpus / "DEAM_Annotations" / "annotations")
    (target / "MEMD_audio").symlink_to(corpus / "DEAM_audio" / "MEMD_audio")
    return target


def test_deam_reader_matches_the_generator_truth_in_both_layouts(tiny_corpus, tmp_path):
    truth = load_truth(tiny_corpus)
    nested = read_catalogue(data_config(tiny_corpus))
    flat = read_catalogue(data_config(_flat_view(tiny_corpus, tmp_path / "flat")))
    assert (nested.layout, flat.layout) == ("nested", "flat")
    assert list(nested.songs) == list(flat.songs) == sorted(truth["songs"], key=int)
    for song_id, info in truth["songs"].items():
        song = nested.songs[song_id]
        assert song.split == ("test" if int(song_id) >= 2001 else "train")
        assert song.mode == ("song" if song.split == "test" else "clip")
        arousal, valence = nested.averaged[song_id]
        assert len(arousal) == len(valence) == min(info["n_arousal"], info["n_valence"])
        np.testing.assert_array_equal(arousal, flat.averaged[song_id][0])
        named = {r for r, s in nested.ratings if s == song_id}
        assert named == (set(info["raters"]) if int(song_id) >= 1001 else set())  # no WorkerId below 1001
    assert not nested.issues  # the arousal file's extra column is a known quirk, aligned by time


def test_pdmer_raters_follow_the_original_filters(tiny_corpus):
    truth = load_truth(tiny_corpus)
    catalogue = read_catalogue(data_config(tiny_corpus))
    counts: dict[str, int] = {}
    for song_id, info in truth["songs"].items():
        if 1001 <= int(song_id) <= 2000:
            for rater, flat in zip(info["raters"], info["flat"], strict=True):
                counts[rater] = counts.get(rater, 0) + (not flat)
    expected = {r for r, n in counts.items() if n > 15}
    train_raters = {r for r, s in catalogue.pdmer_pairs if catalogue.songs[s].split == "train"}
    assert expected and train_raters == expected


def test_pdmer_filter_by_hand():
    rule = PdmerFilter(min_songs=2)
    moving = np.sin(np.arange(60) / 3).astype(np.float32)
    flat = np.full(60, 0.2, np.float32)
    songs = {
        s: Song(s, None, "train" if int(s) <= 2000 else "test", "clip")
        for s in ("900", "1001", "1002", "2001")
    }
    ratings = {
        ("a", "1001"): (moving, moving),
        ("a", "1002"): (moving, moving),
        ("a", "900"): (moving, moving),
        ("b", "1001"): (moving, moving),
        ("b", "1002"): (moving, flat),  # b keeps 1 song: dropped
        ("b", "2001"): (flat, flat),
    }
    catalogue = Catalogue("x", songs, {}, ratings, True, "nested", [])
    assert rule.select(catalogue) == {("a", "1001"), ("a", "1002"), ("b", "2001")}
    assert PdmerFilter(min_songs=2, apply_to_test=True).select(catalogue) == {("a", "1001"), ("a", "1002")}
    assert rule.is_flat(moving, flat) and not rule.is_flat(moving, moving)


def _copy_tree(corpus, target):
    shutil.copytree(corpus, target, symlinks=True)
    return target


def test_bad_deam_input_warns_or_fails_by_strict(tiny_corpus, tmp_path):
    root = _copy_tree(tiny_corpus, tmp_path / "bad")
    arousal = root / AVERAGED / "arousal.csv"
    lines = arousal.read_text().splitlines()
    cells = lines[2].split(",")
    song_id, cells[3] = cells[0], "abc"
    lines[2] = ",".join(cells)
    arousal.write_text("\n".join(lines) + "\n")
    audio = root / "DEAM_audio/MEMD_audio"
    shutil.copy(next(audio.glob("*.mp3")), audio / "3000.mp3")  # audio without labels

    with pytest.raises(
        DataError, match=r"arousal.csv, row 3, column 'sample_16000ms': non-numeric value 'abc'"
    ):
        read_catalogue(data_config(root, strict=True))
    catalogue = read_catalogue(data_config(root))  # strict=false: reported, not raised
    messages = [str(i) for i in catalogue.issues]
    assert any("row 3, column 'sample_16000ms': non-numeric value 'abc'" in m for m in messages)
    assert any("song 3000 has audio but no labels" in m for m in messages)
    assert "3000" not in catalogue.songs
    assert len(catalogue.averaged[song_id][0]) == 2  # the curve is the leading run before the bad cell
    assert any("value(s) after the gap" in m for m in messages)  # and what follows it is reported

    (root / AVERAGED / "valence.csv").unlink()
    with pytest.raises(DataError, match=r"annotation file not found: .*valence.csv"):
        read_catalogue(data_config(root))


def test_layout_and_config_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataError, match=r"no DEAM annotations found; expected .*DEAM_Annotations/annotations"
    ):
        read_catalogue(data_config(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"data.layout='deep' is not one of auto, nested, flat"):
        data_config(tmp_path, layout="deep")
    with pytest.raises(ConfigError, match=r"data.pdmer: unknown key\(s\) \['min_song'\]"):
        data_config(tmp_path, pdmer={"min_song": 3})
    with pytest.raises(ConfigError, match="data.root is not set"):
        DataConfig.from_mapping({"name": "deam", "root": None})


@pytest.mark.parametrize("first_time", [15.0, 15.5])
def test_pmemo_reader_aligns_frame_time(tmp_path, first_time):
    root = write_pmemo(tmp_path / "pmemo", first_time)
    config = DataConfig.from_mapping(
        {
            "name": "pmemo",
            "root": str(root),
            "reader": "pmemo",
            "segments_per_clip": 20,
            "store_as": {"train": "song", "test": "song"},
            "split": {"method": "random"},
        }
    )
    catalogue = read_catalogue(config)
    assert list(catalogue.songs) == ["1", "2", "3"] and not catalogue.per_rater and not catalogue.ratings
    assert sum(s.split == "test" for s in catalogue.songs.values()) == 1
    arousal, valence = catalogue.averaged["1"]
    np.testing.assert_allclose(arousal[:3], [0.5, 0.51, 0.52])
    np.testing.assert_allclose(valence[:3], [0.4, 0.39, 0.38])
    assert any(f"segment {'start' if first_time == 15.0 else 'end'}" in n for n in catalogue.notes)
