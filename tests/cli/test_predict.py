"""dsaml-predict: CSV/JSON/PNG per song, checked against predict_song on a direct log-mel; error cases."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app_fixtures import capture, compose_cli, save_tiny_ckpt, tiny_net, write_audio
from data_fixtures import direct_logmel
from dsaml.cli.predict import run
from dsaml.curve_files import output_names
from dsaml.data.features import FeatureConfig
from dsaml.inference import predict_song
from dsaml.models.checkpoint import load_network, save_network
from dsaml.outputs import RECORD
from dsaml.predictor import DEFAULT_STITCH, DEFAULT_STRIDE, CheckpointError, Predictor


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, Path]:
    """A 20 s 48 kHz mono wav (10 segments: shorter than one window) and a 50 s 44.1 kHz stereo mp3
    (70 segments: sliding windows)."""
    folder = tmp_path_factory.mktemp("songs")
    return {
        "short": write_audio(folder / "short.wav", 20.0, 48000, 1, seed=1),
        "long": write_audio(folder / "long.mp3", 50.0, 44100, 2, seed=2),
    }


def predict(ckpt: Path, inputs: list[str], out: Path, *extra: str) -> tuple[int, str]:
    console, buffer = capture()
    cfg = compose_cli("predict", [f"ckpt={ckpt}", f"inputs=[{','.join(inputs)}]", f"out={out}", *extra])
    return run(cfg, console), buffer.getvalue()


def read_csv(path: Path) -> np.ndarray:
    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["time_s", "arousal", "valence"]
    return np.array(rows[1:], dtype=np.float64)


def test_csv_and_png_match_predict_song(tiny_ckpt, songs, tmp_path):
    code, text = predict(tiny_ckpt, [str(songs["short"]), str(songs["long"])], tmp_path)
    assert code == 0, text
    net, _, _ = load_network(tiny_ckpt)
    for name, n_segments in (("short", 10), ("long", 70)):
        table = read_csv(tmp_path / f"{name}.csv")
        assert len(table) == n_segments  # floor((duration - 15 s) / 0.5 s)
        np.testing.assert_allclose(table[:, 0], 15.0 + 0.5 * np.arange(n_segments))
        # independent log-mel (direct torchaudio computation) -> the model's whole-song prediction
        arousal, valence = predict_song(
            net, direct_logmel(songs[name]), window=60, stride=DEFAULT_STRIDE, stitch=DEFAULT_STITCH
        )
        np.testing.assert_allclose(table[:, 1], arousal.numpy(), atol=2e-5)
        np.testing.assert_allclose(table[:, 2], valence.numpy(), atol=2e-5)
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_folder_input_json_format(tiny_ckpt, songs, tmp_path):
    code, text = predict(tiny_ckpt, [str(songs["long"].parent)], tmp_path, "format=json", "plot=false")
    assert code == 0, text
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD, "long.json", "short.json"]
    payload = json.loads((tmp_path / "short.json").read_text())
    assert payload["song"] == "short" and payload["audio"] == str(songs["short"])
    assert payload["time_s"] == [15.0 + 0.5 * i for i in range(10)]
    assert len(payload["arousal"]) == len(payload["valence"]) == 10


def test_ten_minute_song_uses_sliding_windows(tiny_ckpt):
    """10 minutes = 1170 segments from 15 s: times and values as predict_song with the checkpoint's window."""
    predictor = Predictor.load(tiny_ckpt, device="cpu")
    logmel = np.random.default_rng(0).normal(-5, 2, size=(1170, 51, 128)).astype(np.float32)
    curves = predictor.predict(logmel, stride=4)
    arousal, valence = predict_song(predictor.net, logmel, window=60, stride=4, stitch=DEFAULT_STITCH)
    assert curves.time_s[0] == 15.0 and curves.time_s[-1] == 15.0 + 0.5 * 1169
    np.testing.assert_array_equal(curves.arousal, arousal.numpy())
    np.testing.assert_array_equal(curves.valence, valence.numpy())


def test_bad_songs_are_reported_and_the_rest_written(tiny_ckpt, songs, tmp_path):
    broken = tmp_path / "in" / "broken.mp3"
    broken.parent.mkdir()
    broken.write_bytes(b"this is not an mp3 file")
    too_short = write_audio(tmp_path / "in" / "too_short.wav", 12.0, 22050, 1)
    out = tmp_path / "out"
    code, text = predict(tiny_ckpt, [str(broken), str(too_short), str(songs["short"])], out)
    assert code == 1
    assert "2 song(s) failed" in text
    assert f"{broken}: cannot decode audio" in text
    assert f"{too_short}: audio is 12.00 s long; at least 15.5 s are needed" in text
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "short.csv", "short.png"]


def test_not_a_dsaml_checkpoint(songs, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(tiny_net().state_dict(), bare)
    code, text = predict(bare, [str(songs["short"])], tmp_path / "out")
    assert code == 2 and "is not a dsaml checkpoint" in text and "a bare state_dict" in text
    junk = tmp_path / "notes.ckpt"
    junk.write_text("hello")
    code, text = predict(junk, [str(songs["short"])], tmp_path / "out")
    assert code == 2 and "not a dsaml checkpoint: it is a text file starting 'hello'" in text
    assert not (tmp_path / "out").exists()  # nothing was read or written


def test_precomputed_global_context_cannot_run_on_raw_audio(tmp_path):
    net = tiny_net(global_context="precomputed:imagebind", global_dim=8)
    path = save_network(tmp_path / "ib.ckpt", net, features=FeatureConfig().to_dict())
    with pytest.raises(CheckpointError, match="'precomputed:imagebind'.*external encoder"):
        Predictor.load(path, device="cpu")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("format=xml", "format='xml' is not one of csv, json"),
        ("stitch=median", "stitch='median' is not one of mean, weighted, last, original"),
        ("device=tpu", "device='tpu': expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("stride=0", "stride=0: expected a positive integer"),
    ],
)
def test_configuration_errors(tiny_ckpt, songs, tmp_path, override, message):
    code, text = predict(tiny_ckpt, [str(songs["short"])], tmp_path / "out", override)
    assert code == 2 and message in text
    assert not (tmp_path / "out").exists()


def test_missing_input_and_missing_ckpt(tiny_ckpt, tmp_path):
    code, text = predict(tiny_ckpt, [str(tmp_path / "nothing.mp3")], tmp_path)
    assert code == 2 and "nothing.mp3 is neither a file nor a folder" in text
    console, buffer = capture()
    assert run(compose_cli("predict", [f"out={tmp_path}", "inputs=[a.mp3]"]), console) == 2
    assert "ckpt is required" in buffer.getvalue()


def test_output_names_disambiguate_equal_stems():
    files = [Path("a/song.mp3"), Path("b/song.mp3"), Path("b/song.wav"), Path("c/other.flac")]
    assert list(output_names(files).values()) == ["song", "song_mp3", "song_wav", "other"]


@pytest.mark.slow  # runs dsaml-predict in a process of its own
def test_command_line(tiny_ckpt, songs, tmp_path):
    """The installed entry point parses Hydra overrides and writes the files."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsaml.cli.predict",
            f"ckpt={tiny_ckpt}",
            f"inputs=[{songs['short']}]",
            f"out={tmp_path}",
            "format=json",
            "device=cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "short.json").read_text())["arousal"]) == 10
    assert (tmp_path / "short.png").is_file()


def test_a_20_segment_model_is_predicted_with_20_segment_windows(songs, tmp_path):
    """The checkpoint owns its window: a model trained on 20-segment clips (PMEmo) gets 20-segment windows
    from dsaml-predict, as dsaml-eval scores it, not 60."""
    ckpt = save_tiny_ckpt(tmp_path / "pmemo.ckpt", window=20)
    predictor = Predictor.load(ckpt, device="cpu")
    assert predictor.window == 20
    code, text = predict(
        ckpt, [str(songs["long"])], tmp_path / "out", "plot=false", "stride=1", "stitch=mean"
    )
    assert code == 0, text
    table = read_csv(tmp_path / "out" / "long.csv")
    logmel = direct_logmel(songs["long"])
    for window, same in ((20, True), (60, False)):
        arousal, valence = predict_song(predictor.net, logmel, window=window, stride=1, stitch="mean")
        assert np.allclose(table[:, 1], arousal.numpy(), atol=2e-5) is same, window
        assert np.allclose(table[:, 2], valence.numpy(), atol=2e-5) is same, window


def test_the_window_comes_from_the_checkpoint_or_it_is_refused(tmp_path):
    features = FeatureConfig().to_dict()
    converted = save_network(tmp_path / "c.ckpt", tiny_net(), features=features, converted_from="original")
    assert Predictor.load(converted, device="cpu").window == 60  # the original's procedure
    bare = save_network(tmp_path / "b.ckpt", tiny_net(), features=features, task={"inner_steps": 4})
    with pytest.raises(CheckpointError, match="records no window length.*task.support_segments"):
        Predictor.load(bare, device="cpu")
    bad = save_network(tmp_path / "x.ckpt", tiny_net(), features=features, task={"support_segments": 0})
    with pytest.raises(CheckpointError, match="task.support_segments=0 is not a positive integer"):
        Predictor.load(bad, device="cpu")


def test_progress_advances_per_window_batch(tiny_ckpt):
    predictor = Predictor.load(tiny_ckpt, device="cpu")
    logmel = np.random.default_rng(0).normal(-5, 2, size=(200, 51, 128)).astype(np.float32)
    calls = []
    predictor.predict(
        logmel, stride=1, batch_size=50, progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(50, 141), (100, 141), (141, 141)]  # 200 - 60 + 1 windows


def test_an_annotation_folder_is_never_overwritten_by_predictions(tiny_ckpt, songs, tmp_path):
    """Predictions into the folder of a listener's hand-made curves (same names, same columns as the
    predictions) are refused before any audio is read; overwrite=true is the explicit opt-in."""
    curves = tmp_path / "curves"
    curves.mkdir()
    handmade = curves / "short.csv"
    handmade.write_text("time,arousal,valence\n15.0,0.5,0.5\n")
    code, text = predict(tiny_ckpt, [str(songs["short"])], curves)
    assert code == 2, text
    assert "short.csv' exists and is not a dsaml-predict output; pass overwrite=true" in text
    assert handmade.read_text() == "time,arousal,valence\n15.0,0.5,0.5\n"
    assert sorted(p.name for p in curves.iterdir()) == ["short.csv"]  # nothing written, not even the plot
    code, text = predict(tiny_ckpt, [str(songs["short"])], curves, "overwrite=true")
    assert code == 0, text
    assert len(read_csv(handmade)) == 10


def test_an_output_may_not_be_an_input(tiny_ckpt, songs, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    audio = folder / "song.png"  # an audio file whose name is the plot's name
    audio.write_bytes(songs["short"].read_bytes())
    code, text = predict(tiny_ckpt, [str(audio)], folder, "overwrite=true")
    assert code == 2 and "is also the input inputs (song.png)" in text
    assert audio.read_bytes() == songs["short"].read_bytes()


def test_a_stride_longer_than_the_window_is_refused(tiny_ckpt, songs, tmp_path):
    """Stride 100 with a 60-segment window: windows at 0, 100, 140 of a 200-segment song leave segments
    60..99 in no window (they were NaN, and the JSON invalid). Refused for every song, before any audio."""
    code, text = predict(tiny_ckpt, [str(songs["long"])], tmp_path / "out", "stride=100")
    assert code == 2
    assert "stride=100 is longer than the model's window (60 segments)" in text
    assert not (tmp_path / "out").exists()
    net, _, _ = load_network(tiny_ckpt)
    with pytest.raises(ValueError, match="stride=100 > window=60"):
        predict_song(net, np.zeros((200, 51, 128), np.float32), window=60, stride=100, stitch="mean")
    code, text = predict(tiny_ckpt, [str(songs["long"])], tmp_path / "out", "stride=60", "format=json")
    assert code == 0, text
    payload = json.loads((tmp_path / "out" / "long.json").read_text())  # strict JSON: no NaN
    assert len(payload["arousal"]) == 70 and np.isfinite(payload["arousal"]).all()


def test_a_second_model_replaces_every_output_of_the_song(tiny_ckpt, songs, tmp_path):
    """A second run with another checkpoint and plot=false must not leave the first model's plot beside the
    second model's curves."""
    other = save_network(
        tmp_path / "other.ckpt",
        tiny_net(seed=1),
        features=FeatureConfig().to_dict(),
        task={"support_segments": 60},
    )
    out = tmp_path / "out"
    assert predict(tiny_ckpt, [str(songs["short"])], out)[0] == 0
    assert (out / "short.png").is_file()
    code, text = predict(other, [str(songs["short"])], out, "plot=false")
    assert code == 0, text
    assert "replacing every output of 1 song(s)" in text and "short" in text
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "short.csv"]
    net, _, _ = load_network(other)
    arousal, _ = predict_song(net, direct_logmel(songs["short"]), window=60, stride=10, stitch="weighted")
    np.testing.assert_allclose(read_csv(out / "short.csv")[:, 1], arousal.numpy(), atol=2e-5)


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    from dsaml.outputs import atomic_output

    target = tmp_path / "model.ckpt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]
