"""dsaml-synth: the generated tree is DEAM's format (parsed here with plain csv), the audio decodes as
declared and carries the emotion signal, raters follow their declared transforms, generation is
deterministic, and bad configs fail early with the allowed values."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dsaml.config import ConfigError
from dsaml.data.synth import SynthConfig, generate_corpus, load_preset, load_truth
from dsaml.data.synth.corpus import plan_corpus
from dsaml.data.synth.music import render_music

AVG = "annotations averaged per song"
RATER = "annotations per each rater"
DYN = "dynamic (per second annotations)"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "deam"
    generate_corpus(root, "tiny", seed=0, workers=2, progress=False)
    return root


@pytest.fixture(scope="module")
def truth(corpus):
    return load_truth(corpus)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def leading_values(cells: list[str]) -> np.ndarray:
    """DEAM's rule: a song's curve is the leading run of non-empty cells."""
    n = next((i for i, c in enumerate(cells) if c.strip() == ""), len(cells))
    assert all(c.strip() == "" for c in cells[n:]), "non-empty cell after an empty one"
    return np.array([float(c) for c in cells[:n]])


def averaged(corpus: Path, dim: str) -> tuple[list[str], dict[int, np.ndarray]]:
    header, rows = read_rows(corpus / "DEAM_Annotations" / "annotations" / AVG / DYN / f"{dim}.csv")
    return header, {int(r[0]): leading_values(r[1:]) for r in rows}


def per_rater(corpus: Path, dim: str, song_id: int) -> tuple[list[str], list[list[str]]]:
    return read_rows(corpus / "DEAM_Annotations" / "annotations" / RATER / DYN / dim / f"{song_id}.csv")


def rater_curves(corpus: Path, truth: dict, dim: str, song_id: int) -> dict[str, np.ndarray]:
    """rater id -> curve; anonymous files (ids < 1001) are matched to the truth's row order."""
    header, rows = per_rater(corpus, dim, song_id)
    if header[0] == "WorkerId":
        return {r[0]: np.array(r[1:], dtype=float) for r in rows}
    raters = truth["songs"][str(song_id)]["raters"]
    return {rid: np.array(r, dtype=float) for rid, r in zip(raters, rows, strict=True)}


def test_tree_layout_and_averaged_quirks(corpus, truth):
    ann = corpus / "DEAM_Annotations" / "annotations"
    assert (corpus / "DEAM_audio" / "MEMD_audio").is_dir() and (ann / AVG / "song_level").is_dir()
    a_header, a_curves = averaged(corpus, "arousal")
    v_header, v_curves = averaged(corpus, "valence")
    assert a_header[0] == "song_id" and len(a_header) == len(v_header) + 1
    assert any(c != c.strip() for c in a_header), "expected DEAM's stray spaces in header cells"
    times = [int(c.strip()[len("sample_") : -len("ms")]) for c in a_header[1:]]
    assert times == list(range(15000, 15000 + 500 * len(times), 500))
    ids = sorted(a_curves)
    assert ids == sorted(v_curves) == sorted(int(i) for i in truth["songs"])
    assert any(i < 1001 for i in ids) and any(1001 <= i <= 2000 for i in ids) and any(i > 2000 for i in ids)
    assert np.diff(ids).max() > 1, "ids should not be contiguous"
    for song_id in ids:
        song = truth["songs"][str(song_id)]
        assert len(a_curves[song_id]) == song["n_arousal"] and len(v_curves[song_id]) == song["n_valence"]
        assert np.abs(a_curves[song_id]).max() <= 1 and np.abs(v_curves[song_id]).max() <= 1
        if song["kind"] == "clip":
            assert song["n_valence"] == 60
        else:  # full songs: one label per complete 0.5 s segment after 15 s
            assert song["n_valence"] == int((song["n_samples"] / song["sample_rate"] - 15) * 2)
        for dim, curves in (("arousal", a_curves), ("valence", v_curves)):  # averaged = mean over raters
            mean = np.mean(list(rater_curves(corpus, truth, dim, song_id).values()), axis=0)
            np.testing.assert_allclose(curves[song_id], mean, atol=2e-6)
    # shorter songs leave trailing cells empty
    assert min(len(c) for c in a_curves.values()) < len(a_header) - 1


def test_per_rater_and_static_files(corpus, truth):
    for song_id, song in truth["songs"].items():
        for dim in ("arousal", "valence"):
            header, rows = per_rater(corpus, dim, int(song_id))
            named = int(song_id) >= 1001
            assert (header[0] == "WorkerId") == named
            assert header[int(named)] == "sample_15000ms"
            assert len(rows) == len(song["raters"]) and len(header) - named == song[f"n_{dim}"]
            if named:
                assert [r[0] for r in rows] == song["raters"]
    static = corpus / "DEAM_Annotations" / "annotations" / AVG / "song_level"
    header, rows = read_rows(static / "static_annotations_averaged_songs_1_2000.csv")
    assert header == ["song_id", " valence_mean", " valence_std", " arousal_mean", " arousal_std"]
    assert {int(r[0]) for r in rows} == {int(i) for i in truth["songs"] if int(i) <= 2000}
    header, rows = read_rows(static / "static_annotations_averaged_songs_2000_2058.csv")
    assert len(header) == 13 and " arousal_max_std" in header
    assert all(1 <= float(x) <= 9 for r in rows for x in r[1::2])


def test_pdmer_filter_leaves_enough_raters(corpus, truth):
    """DSAML's filter: ids 1001..2000, drop flat curves (MAD < 0.01 over 60 values), keep > 15 songs."""
    kept, flat = Counter(), 0
    for song_id in (int(i) for i in truth["songs"]):
        if 1001 <= song_id <= 2000:
            a = rater_curves(corpus, truth, "arousal", song_id)
            v = rater_curves(corpus, truth, "valence", song_id)
            for rater in a:
                mad = [np.abs(c[:60] - c[:60].mean()).mean() for c in (a[rater], v[rater])]
                flat += min(mad) < 0.01
                kept[rater] += min(mad) >= 0.01
    assert sum(n > 15 for n in kept.values()) >= 4
    n_flat = sum(sum(s["flat"]) for s in truth["songs"].values())
    assert n_flat >= 1 and flat >= 1, "tiny should contain flat (unmoved slider) ratings for the filter"


def test_audio_decodes_as_declared(corpus, truth):
    rates, channels = Counter(), Counter()
    for song_id, song in truth["songs"].items():
        path = corpus / "DEAM_audio" / "MEMD_audio" / f"{song_id}.mp3"
        assert song["audio"] == str(path.relative_to(corpus))
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == song["sample_rate"] and audio.shape == (song["n_samples"], song["channels"])
        assert 0.01 < np.abs(audio).max() < 1.0
        duration = len(audio) / rate
        if song["kind"] == "clip":
            assert 44.6 <= duration <= 45.6
        else:
            assert 50 <= duration <= 70
        rates[rate] += 1
        channels[song["channels"]] += 1
    assert set(rates) == {16000, 22050, 44100, 48000} and set(channels) == {1, 2}
    assert any(s["duration_s"] < 45 for s in truth["songs"].values() if s["kind"] == "clip")


def _frames(x: np.ndarray, size: int) -> np.ndarray:
    return x[: len(x) // size * size].reshape(-1, size)


def _triad_evidence(frames: np.ndarray, rate: int) -> np.ndarray:
    """Per frame: best major-triad chroma weight minus best minor-triad chroma weight (60 Hz..2 kHz)."""
    spec = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[1]), axis=1)) ** 2
    freqs = np.fft.rfftfreq(frames.shape[1], 1 / rate)
    band = (freqs > 60) & (freqs < 2000)
    pitch_class = np.round(12 * np.log2(freqs[band] / 440)).astype(int) % 12
    chroma = np.stack([spec[:, band][:, pitch_class == p].sum(1) for p in range(12)], axis=1)
    chroma /= chroma.sum(1, keepdims=True) + 1e-12
    triad = lambda third: np.stack(
        [chroma[:, [r, (r + third) % 12, (r + 7) % 12]].sum(1) for r in range(12)], 1
    )
    return triad(4).max(1) - triad(3).max(1)


def _pitch_height(frames: np.ndarray, rate: int) -> np.ndarray:
    """Per frame: the strongest pitch between 180 Hz and 1.5 kHz (above the bass), in semitones."""
    spec = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[1]), axis=1)) ** 2
    freqs = np.fft.rfftfreq(frames.shape[1], 1 / rate)
    band = (freqs > 180) & (freqs < 1500)
    return 12 * np.log2(freqs[band][np.argmax(spec[:, band], axis=1)] / 440)


def _onset_rate(x: np.ndarray, rate: int, n_windows: int) -> np.ndarray:
    """Onsets per second in consecutive 2 s windows: peaks of the log-spectral flux (10 ms hop)."""
    hop, size = int(0.01 * rate), 1024
    starts = hop * np.arange((len(x) - size) // hop)
    spec = np.log1p(
        100 * np.abs(np.fft.rfft(x[starts[:, None] + np.arange(size)] * np.hanning(size), axis=1))
    )
    flux = np.maximum(np.diff(spec, axis=0), 0).sum(1)
    local = np.convolve(flux, np.ones(50) / 50, "same")
    peak = (flux[1:-1] > flux[:-2]) & (flux[1:-1] >= flux[2:]) & (flux[1:-1] > 1.5 * local[1:-1])
    times = (np.nonzero(peak)[0] + 1) * 0.01
    return np.histogram(times, bins=np.arange(n_windows + 1) * 2.0)[0] / 2.0


def test_emotion_signal_is_in_the_audio(corpus, truth):
    """Measured on the decoded MP3s, pooled over songs and 0.5 s frames (2 s windows for onsets)."""
    loud, evidence, onsets, arousal, valence, arousal_2s = [], [], [], [], [], []
    height, valence_in_song = [], []  # register: compared within songs (each song has its own key)
    for song in truth["songs"].values():
        x, rate = sf.read(corpus / song["audio"], dtype="float32", always_2d=True)
        x = x.mean(1)
        frames = _frames(x, rate // 2)
        k = len(frames)
        loud.append(10 * np.log10((frames**2).mean(1) + 1e-10))
        evidence.append(_triad_evidence(frames, rate))
        arousal.append(song["arousal"][:k])
        valence.append(song["valence"][:k])
        pitch = _pitch_height(frames, rate)
        height.append(pitch - pitch.mean())
        valence_in_song.append(valence[-1] - np.mean(valence[-1]))
        n_windows = k // 4
        onsets.append(_onset_rate(x, rate, n_windows))
        arousal_2s.append(song["arousal"][: 4 * n_windows].reshape(n_windows, 4).mean(1))
    corr = lambda p, q: np.corrcoef(np.concatenate(p), np.concatenate(q))[0, 1]
    assert corr(loud, arousal) > 0.8
    assert corr(onsets, arousal_2s) > 0.7
    assert corr(evidence, valence) > 0.3
    assert corr(height, valence_in_song) > 0.15, "the register should rise with valence"
    assert abs(corr(loud, valence)) < 0.3, "loudness should follow arousal, not valence"


def _fit(rater: np.ndarray, truth: np.ndarray, lag: int) -> tuple[float, float, float]:
    """Least-squares gain, offset, residual std of rater[i] ~ gain * truth[30 + i - lag] + offset."""
    x = truth[30 - lag : 30 - lag + len(rater)]
    keep = np.abs(rater) < 0.999  # clipped values carry no gain information
    design = np.stack([x[keep], np.ones(keep.sum())], 1)
    (gain, offset), *_ = np.linalg.lstsq(design, rater[keep], rcond=None)
    return gain, offset, float(np.std(rater[keep] - design @ [gain, offset]))


def test_raters_follow_declared_transforms(corpus, truth):
    samples: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for song_id, song in truth["songs"].items():
        for dim in ("arousal", "valence"):
            curves = rater_curves(corpus, truth, dim, int(song_id))
            for rater, flat in zip(song["raters"], song["flat"], strict=True):
                if not flat:
                    samples.setdefault((rater, dim), []).append((curves[rater], song[dim]))
    checked = 0
    for (rater, dim), pairs in samples.items():
        if len(pairs) < 5:
            continue
        declared = truth["raters"][rater][dim]
        fits = {lag: [_fit(r, t, lag) for r, t in pairs] for lag in range(0, 7)}
        best_lag = min(fits, key=lambda lag: np.mean([f[2] for f in fits[lag]]))
        assert best_lag == declared["lag"], (rater, dim)
        gain, offset, resid = np.median(np.array(fits[best_lag]), axis=0)
        assert gain == pytest.approx(declared["gain"], abs=0.12), (rater, dim)
        assert offset == pytest.approx(declared["offset"], abs=0.08), (rater, dim)
        assert resid < 2 * declared["noise"] + 0.02
        checked += 1
    assert checked >= 10
    kinds = Counter(r["kind"] for r in truth["raters"].values())
    assert kinds["typical"] >= 3 and kinds["valence_inverted"] >= 1 and kinds["arousal_damped"] >= 1


def test_personal_curves_beat_the_average_for_idiosyncratic_raters(corpus, truth):
    """A model of the rater (its transform of the truth) predicts its curves better than the song average."""
    _, avg_valence = averaged(corpus, "valence")
    odd = [r for r, p in truth["raters"].items() if p["kind"] == "valence_inverted"]
    personal_err, average_err = [], []
    for song_id, song in truth["songs"].items():
        curves = rater_curves(corpus, truth, "valence", int(song_id))
        for rater, flat in zip(song["raters"], song["flat"], strict=True):
            if rater in odd and not flat:
                p = truth["raters"][rater]["valence"]
                idx = 30 + np.arange(song["n_valence"]) - p["lag"]
                personal = np.clip(p["gain"] * song["valence"][idx] + p["offset"], -1, 1)
                personal_err.append(np.sqrt(np.mean((curves[rater] - personal) ** 2)))
                average_err.append(np.sqrt(np.mean((curves[rater] - avg_valence[int(song_id)]) ** 2)))
    assert personal_err and np.mean(personal_err) < 0.5 * np.mean(average_err)


def test_same_seed_same_corpus_in_either_layout(tmp_path):
    small = {
        **load_preset("tiny").to_dict(),
        "name": "small",
        "n_songs_2013": 1,
        "n_songs_2014": 2,
        "n_songs_2015": 0,
        "share_48k": 0.0,
        "share_22k": 0.0,
        "share_16k": 0.6,
        "share_mono": 0.6,
    }
    nested_sum = generate_corpus(tmp_path / "a", small, seed=5, workers=1, progress=False)
    flat_sum = generate_corpus(tmp_path / "b", small, seed=5, layout="flat", workers=2, progress=False)
    assert (nested_sum.layout, flat_sum.layout) == ("nested", "flat") and nested_sum.n_songs == 3
    nested, flat = tmp_path / "a" / "DEAM_Annotations" / "annotations", tmp_path / "b" / "annotations"
    files = sorted(p.relative_to(nested) for p in nested.rglob("*.csv"))
    assert len(files) == 6 + 2 * 3 and files == sorted(p.relative_to(flat) for p in flat.rglob("*.csv"))
    assert all((nested / f).read_bytes() == (flat / f).read_bytes() for f in files)
    for song_id in load_truth(tmp_path / "a")["songs"]:
        a, rate_a = sf.read(tmp_path / "a" / "DEAM_audio" / "MEMD_audio" / f"{song_id}.mp3")
        b, rate_b = sf.read(tmp_path / "b" / "MEMD_audio" / f"{song_id}.mp3")
        assert rate_a == rate_b
        np.testing.assert_array_equal(a, b)
    config = SynthConfig.from_mapping(small)
    same, other = plan_corpus(config, 5, "flat")[1], plan_corpus(config, 6, "flat")[1]
    assert [s["id"] for s in same] == [int(i) for i in load_truth(tmp_path / "b")["songs"]]
    assert [s["id"] for s in same] != [s["id"] for s in other]


def test_flac_corpus_is_the_rendered_audio_losslessly_and_the_same_in_parallel(tmp_path):
    """audio_format=flac: each file decodes to the rendered samples (within 16-bit quantisation), and a
    corpus rendered by two processes is byte-identical to one rendered in this process."""
    small = {
        **load_preset("tiny").to_dict(),
        "name": "small",
        "n_songs_2013": 1,
        "n_songs_2014": 1,
        "n_songs_2015": 1,
        "full_song_seconds": [60.0, 62.0],
        "share_16k": 0.5,
        "share_mono": 0.5,
        "audio_format": "flac",
    }
    generate_corpus(tmp_path / "one", small, seed=3, workers=1, progress=False)
    generate_corpus(tmp_path / "two", small, seed=3, workers=2, progress=False)
    planned = plan_corpus(SynthConfig.from_mapping(small), 3, "nested")[0]  # curves before JSON rounding
    assert planned["songs"].keys() == load_truth(tmp_path / "one")["songs"].keys()
    for song in planned["songs"].values():
        assert song["audio"].endswith(".flac")
        one, two = (tmp_path / run / song["audio"] for run in ("one", "two"))
        assert one.read_bytes() == two.read_bytes()
        decoded, rate = sf.read(one, always_2d=True)
        args = (song["arousal"], song["valence"], song["n_samples"], song["sample_rate"], song["channels"])
        rendered = render_music(*args, song["audio_seed"])[:, : song["channels"]]
        assert rate == song["sample_rate"] and decoded.shape == rendered.shape
        np.testing.assert_allclose(decoded, rendered, atol=1.0 / 32768)


def test_render_is_deterministic_and_seed_dependent():
    curve = np.linspace(-1, 1, 50)
    first = render_music(curve, -curve, 22050 * 20, 22050, 2, seed=3)
    np.testing.assert_array_equal(first, render_music(curve, -curve, 22050 * 20, 22050, 2, seed=3))
    assert not np.array_equal(first, render_music(curve, -curve, 22050 * 20, 22050, 2, seed=4))


def test_existing_directories_are_protected(corpus, tmp_path):
    reused = generate_corpus(corpus, "tiny", seed=0, progress=False)
    assert reused.reused and reused.n_pdmer_raters >= 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a dsaml-synth corpus"):
        generate_corpus(foreign, "tiny", seed=0, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_different_synth_corpus_is_replaced(tmp_path):
    small = {
        **load_preset("tiny").to_dict(),
        "n_songs_2013": 0,
        "n_songs_2014": 1,
        "n_songs_2015": 0,
        "raters_per_clip": [2, 3],
        "share_16k": 1.0,
        "share_48k": 0.0,
        "share_22k": 0.0,
    }
    generate_corpus(tmp_path, small, seed=0, layout="flat", workers=1, progress=False)
    (tmp_path / "notes.txt").write_text("keep me")
    again = generate_corpus(tmp_path, small, seed=1, workers=1, progress=False)
    assert "different dsaml-synth corpus (preset 'tiny', seed 0, layout 'flat')" in again.replaced
    assert not (tmp_path / "annotations").exists() and (tmp_path / "DEAM_Annotations").is_dir()
    assert load_truth(tmp_path)["seed"] == 1 and (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_songs_2014": -1}, r"n_songs_2014=-1: expected an integer in 0..1000"),
        ({"n_songs_2015": 80}, r"expected an integer in 0..58"),
        ({"raters_per_clip": [5, 99]}, r"1 <= min <= max <= n_raters"),
        ({"mp3_bitrate_mode": "FAST"}, r"mp3_bitrate_mode='FAST' is not one of VARIABLE, CONSTANT, AVERAGE"),
        ({"colour": 1}, r"unknown key\(s\) \['colour'\]; allowed keys"),
    ],
)
def test_bad_config_fails_early_with_allowed_values(change, message, tmp_path):
    values = {**load_preset("tiny").to_dict(), **change}
    with pytest.raises(ConfigError, match=message):
        SynthConfig.from_mapping(values)
    with pytest.raises(ConfigError, match=message):
        generate_corpus(tmp_path / "x", values, progress=False)
    assert not (tmp_path / "x").exists()


def test_unknown_preset_and_run_options(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown synth preset 'huge'; allowed: \[.*'demo'.*'tiny'"):
        generate_corpus(tmp_path, "huge")
    with pytest.raises(ConfigError, match=r"layout='deep' is not one of nested, flat"):
        generate_corpus(tmp_path, "tiny", layout="deep")
    with pytest.raises(ConfigError, match=r"workers=0: expected an integer >= 1 or null"):
        generate_corpus(tmp_path, "tiny", workers=0)
    with pytest.raises(ConfigError, match=r"seed=-1: expected a non-negative integer"):
        generate_corpus(tmp_path, "tiny", seed=-1)
    assert not any(tmp_path.iterdir())


def test_cli_composes_presets_and_reports(corpus, capsys):
    from hydra import compose, initialize_config_dir
    from rich.console import Console

    import dsaml.config
    from dsaml.cli.synth import run

    with initialize_config_dir(config_dir=str(dsaml.config.CONFIG_DIR), version_base="1.3"):
        demo = compose("synth")
        assert demo.synth.name == "demo" and demo.out.endswith("synthetic/demo")
        SynthConfig.from_mapping(demo.synth)  # the demo preset is valid
        cfg = compose("synth", overrides=["synth=tiny", f"out={corpus}", "seed=0"])
    run(cfg, Console(stderr=True))
    out = capsys.readouterr().out
    assert "reused" in out and "tiny / 0" in out and "with > 15 non-flat songs" in out
