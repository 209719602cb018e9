"""dsaml-personalize: annotation layouts, adaptation on a listener's songs, the adapted checkpoint, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from app_fixtures import capture, compose_cli, save_tiny_ckpt, tiny_net, write_audio
from dsaml.cli.personalize import run
from dsaml.cli.predict import run as run_predict
from dsaml.data.batch import windows_batch
from dsaml.data.features import FeatureConfig
from dsaml.meta import AdaptationConfig, SlidingWindows, batch_loss
from dsaml.meta.calibration import Calibration
from dsaml.meta.listener_prior import LAGS, ListenerPrior, with_listener_readout
from dsaml.models.checkpoint import load_network, save_network
from dsaml.personalize import (
    AnnotatedSong,
    AnnotationError,
    adaptation_for,
    load_listener,
    personalize_listener,
    read_deam_rater,
    read_simple_csv,
    split_holdout,
)
from dsaml.predictor import Predictor
from train_fixtures import SCORE_ROW_KEYS

FEATURES = FeatureConfig()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def listener_curves(seconds: float, rate_hz: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The listener's (time, arousal, valence) from 15 s: slow sinusoids (a made-up, known rating)."""
    time = 15.0 + np.arange(int((seconds - 15.0) * rate_hz)) / rate_hz
    return time, 0.5 * np.sin(2 * np.pi * time / 8), 0.3 + 0.2 * np.cos(2 * np.pi * time / 6)


def write_simple_csv(path: Path, time: np.ndarray, arousal: np.ndarray, valence: np.ndarray) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "arousal", "valence"])
        writer.writerows(zip(time, arousal, valence, strict=True))
    return path


@pytest.fixture(scope="module")
def listener(tmp_path_factory) -> Path:
    """audio/ with three 22.05 kHz mono songs (50, 62 and 50 segments) and curves/ with simple CSVs."""
    root = tmp_path_factory.mktemp("listener")
    (root / "audio").mkdir()
    (root / "curves").mkdir()
    for index, (song, seconds) in enumerate((("s1", 40.0), ("s2", 46.0), ("s3", 40.0))):
        write_audio(root / "audio" / f"{song}.wav", seconds, 22050, 1, seed=index)
        write_simple_csv(root / "curves" / f"{song}.csv", *listener_curves(seconds))
    return root


def test_simple_csv_is_interpolated_onto_the_segment_grid(tmp_path):
    time = np.arange(14.0, 21.0)  # 1 Hz, starting before the first segment
    first, arousal, valence = read_simple_csv(
        write_simple_csv(tmp_path / "a.csv", time, time / 100, -time / 100), FEATURES
    )
    grid = 15.0 + 0.5 * np.arange(11)  # 15.0 .. 20.0 s: inside the annotated range only
    assert first == 0
    np.testing.assert_allclose(arousal, grid / 100, rtol=1e-6)
    np.testing.assert_allclose(valence, -grid / 100, rtol=1e-6)
    late = write_simple_csv(tmp_path / "b.csv", np.array([16.2, 17.0, 18.4]), np.ones(3), np.zeros(3))
    first, arousal, _ = read_simple_csv(late, FEATURES)
    assert first == 3 and len(arousal) == 4  # 16.5, 17.0, 17.5, 18.0 s


def test_simple_csv_errors_name_file_row_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,arousal,valence\n15,0.1,0.2\n15.5,oops,0.2\n")
    with pytest.raises(AnnotationError, match=r"bad.csv, row 3, column 'arousal': 'oops' is not a number"):
        read_simple_csv(bad, FEATURES)
    bad.write_text("t,a,v\n15,0,0\n")
    with pytest.raises(AnnotationError, match="expected columns time"):
        read_simple_csv(bad, FEATURES)


def write_deam_rater_files(folder: Path, song: str, ratings: dict[str, np.ndarray]) -> None:
    """DEAM per-rater files: arousal/<song>.csv and valence/<song>.csv, WorkerId + sample_<ms>ms columns;
    valence = -arousal."""
    for dimension, sign in (("arousal", 1), ("valence", -1)):
        (folder / dimension).mkdir(parents=True, exist_ok=True)
        n = max(len(v) for v in ratings.values())
        with (folder / dimension / f"{song}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["WorkerId", *(f"sample_{15000 + 500 * i}ms" for i in range(n))])
            for worker, values in ratings.items():
                writer.writerow([worker, *(sign * values), *[""] * (n - len(values))])


def test_deam_per_rater_layout(tmp_path):
    folder = tmp_path / "annotations per each rater" / "dynamic (per second annotations)"
    write_deam_rater_files(folder, "1001", {"AMINE": np.linspace(0, 1, 20), "AOTHER": np.zeros(30)})
    write_deam_rater_files(folder, "1002", {"AOTHER": np.ones(30)})
    curves = read_deam_rater(folder, "AMINE", FEATURES)
    assert list(curves) == ["1001"]
    first, arousal, valence = curves["1001"]
    assert first == 0
    np.testing.assert_allclose(arousal, np.linspace(0, 1, 20), rtol=1e-6)
    np.testing.assert_allclose(valence, -np.linspace(0, 1, 20), rtol=1e-6)
    with pytest.raises(
        AnnotationError, match=r"rater='ANOBODY' has no curves.*AOTHER \(2 songs\), AMINE \(1"
    ):
        read_deam_rater(folder, "ANOBODY", FEATURES)
    with pytest.raises(AnnotationError, match="rater=<WorkerId> is required"):
        read_deam_rater(folder, None, FEATURES)
    for dimension in ("arousal", "valence"):  # an anonymous file (DEAM's ids below 1001): skipped
        (folder / dimension / "5.csv").write_text("sample_15000ms,sample_15500ms\n0.1,0.2\n")
    assert list(read_deam_rater(folder, "AMINE", FEATURES)) == ["1001"]


def test_deam_layout_uses_the_raters_songs_that_have_audio(tiny_ckpt, tmp_path):
    """A DEAM per-rater folder holds every song of every rater: only those with audio are used."""
    folder = tmp_path / "annotations per each rater" / "dynamic (per second annotations)"
    write_deam_rater_files(folder, "1001", {"AMINE": np.linspace(0, 1, 20)})
    write_deam_rater_files(folder, "1002", {"AMINE": np.ones(30)})
    audio = write_audio(tmp_path / "1002.wav", 40.0, 22050, 1)
    predictor = Predictor.load(tiny_ckpt, device="cpu")
    songs = load_listener(predictor, [str(audio)], [str(folder)], rater="AMINE")
    assert [(s.song, len(s.arousal)) for s in songs] == [("1002", 30)]
    other = write_audio(tmp_path / "7.wav", 40.0, 22050, 1)
    with pytest.raises(AnnotationError, match=r"none of the rater's annotated songs \['1001', '1002'\]"):
        load_listener(predictor, [str(other)], [str(folder)], rater="AMINE")


def _eval_loss(net, songs) -> float:
    with torch.no_grad():
        net.eval()
        return float(sum(batch_loss(net, windows_batch(s.sequence(), 60))[0] for s in songs) / len(songs))


def test_adaptation_reduces_the_support_loss_and_keeps_the_source(tiny_ckpt, listener):
    predictor = Predictor.load(tiny_ckpt, device="cpu")
    songs = load_listener(predictor, [str(listener / "audio")], [str(listener / "curves")])
    assert [(s.song, len(s.arousal)) for s in songs] == [("s1", 50), ("s2", 62), ("s3", 50)]
    batches = [windows_batch(s.sequence(), 60) for s in songs]
    assert [tuple(b["logmel"].shape) for b in batches] == [
        (1, 50, 51, 128),
        (2, 60, 51, 128),
        (1, 50, 51, 128),
    ]
    # the two windows of s2 start at 0 and 2: the last window ends at the song's end
    np.testing.assert_array_equal(batches[1]["arousal"][1].numpy(), songs[1].arousal[2:])
    config = AdaptationConfig(method="maml").resolve(predictor.hparams["task"])
    assert (config.steps, config.lr, config.first_order) == (4, 0.05, True)  # from the checkpoint's task
    source = {k: v.clone() for k, v in predictor.net.state_dict().items()}
    outcome = personalize_listener(predictor.net, songs[:2], config, SlidingWindows(60), None, "cpu")
    assert outcome.chosen == {"method": "maml", "steps": 4} and outcome.candidates == []
    before, after = _eval_loss(predictor.net, songs[:2]), _eval_loss(outcome.model.net, songs[:2])
    assert after < before - 0.01, (before, after)
    for key, value in predictor.net.state_dict().items():
        torch.testing.assert_close(value, source[key], rtol=0, atol=0)


def _cli(tiny_ckpt, listener, out, *overrides):
    return compose_cli(
        "personalize",
        [
            f"ckpt={tiny_ckpt}",
            f"audio=[{listener / 'audio'}]",
            f"annotations=[{listener / 'curves'}]",
            f"out={out}",
            *overrides,
        ],
    )


def test_command_line_run_writes_a_loadable_adapted_checkpoint(tiny_ckpt, listener, tmp_path):
    console, buffer = capture()
    out = tmp_path / "me.ckpt"
    cfg = _cli(tiny_ckpt, listener, out, "holdout=[s3]", "method=maml", "steps=3", "lr=0.05")
    assert run(cfg, console) == 0, buffer.getvalue()
    text = buffer.getvalue()
    assert "method=maml, on 2 song(s)" in text and "steps 3, lr 0.05" in text
    assert "s3: baseline" in text and "s3: personalized" in text
    assert (tmp_path / "me_s3.png").stat().st_size > 10_000
    report = json.loads((tmp_path / "personalize_report.json").read_text())
    assert set(report) == {"holdout", "chosen", "validation", "candidates"}
    assert set(report["holdout"]) == {"baseline", "personalized"}
    assert (
        set(report["holdout"]["baseline"]) == SCORE_ROW_KEYS and report["holdout"]["personalized"]["n"] == 1
    )
    assert report["chosen"] == {"method": "maml", "steps": 3} and report["candidates"] == []
    adapted, _, hparams = load_network(out)  # weights_only=True
    source, _, _ = load_network(tiny_ckpt)
    assert hparams["personalized"]["songs"] == ["s1", "s2"] and hparams["personalized"]["steps"] == 3
    assert hparams["features"] == FEATURES.to_dict()
    changed = [k for k, v in adapted.state_dict().items() if not torch.equal(v, source.state_dict()[k])]
    assert any(k.startswith("head.") for k in changed)
    # dsaml-predict reads the adapted checkpoint
    predict_console, predict_buffer = capture()
    cfg = compose_cli(
        "predict",
        [f"ckpt={out}", f"inputs=[{listener / 'audio' / 's3.wav'}]", f"out={tmp_path}", "plot=false"],
    )
    assert run_predict(cfg, predict_console) == 0, predict_buffer.getvalue()
    assert (tmp_path / "s3.csv").is_file()


def test_auto_chooses_on_the_listeners_songs_and_the_checkpoint_carries_the_map(
    tiny_ckpt, listener, tmp_path
):
    """method=auto (the default) with a calibration prior: candidates validated leave-one-song-out, the chosen
    one refitted; a calibration map travels in the checkpoint and dsaml-predict applies it."""
    console, buffer = capture()
    out = tmp_path / "auto.ckpt"
    cfg = _cli(
        tiny_ckpt,
        listener,
        out,
        "holdout=[s3]",
        "prior=1",
        "auto_steps=[2]",
        "auto_methods=[calibrate,head_calibrate]",
        "plot=false",
    )
    assert run(cfg, console) == 0, buffer.getvalue()
    text = buffer.getvalue()
    how = "leave-one-song-out; kept none unless a candidate validated better"  # no listener_prior candidate
    assert f"method=auto: validation ({how})" in text and "chosen: method=" in text
    report = json.loads((tmp_path / "personalize_report.json").read_text())
    assert report["validation"] == how
    tried = {(c["method"], c["steps"]) for c in report["candidates"]}
    assert tried == {("none", 0), ("calibrate", 0), ("head_calibrate", 2)}
    assert all(len(c["folds"]) == 2 for c in report["candidates"])
    none = next(c for c in report["candidates"] if c["method"] == "none")
    winners = [  # better on average and on both folds (most of 2)
        c for c in report["candidates"] if c["score"] > none["score"] and c["wins"] == 2
    ]
    best = max(winners, key=lambda c: c["score"], default={"method": "none", "steps": 0})
    assert report["chosen"] == {"method": best["method"], "steps": best["steps"]}
    _, _, hparams = load_network(out)
    personal = hparams["personalized"]
    assert personal["method"] == report["chosen"]["method"] and personal["candidates"] == report["candidates"]
    if personal["method"] != "none":
        mine = Predictor.load(out, device="cpu")
        base = Predictor.load(tiny_ckpt, device="cpu")
        logmel = base.logmel(listener / "audio" / "s3.wav")
        assert mine.calibration == Calibration.from_dict(personal["calibration"])
        if personal["method"] == "calibrate":
            expected_a, expected_v = mine.calibration.apply(
                *(torch.from_numpy(c) for c in (base.predict(logmel).arousal, base.predict(logmel).valence))
            )
            np.testing.assert_allclose(mine.predict(logmel).valence, expected_v.numpy(), atol=1e-6)


def test_listener_prior_run_writes_a_checkpoint_that_predicts_with_its_readout(listener, tmp_path):
    """method=listener_prior on a checkpoint holding a listener prior: the read-out travels in the
    checkpoint (beside the unchanged source weights) and dsaml-predict's Predictor applies it."""
    net = tiny_net()
    size = len(LAGS) + net.cfg.hidden_size + 1
    mean = torch.zeros(size, dtype=torch.float64)
    mean[0] = 1.0
    factor = 0.05 * torch.randn(size, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prior = ListenerPrior([mean, mean], [factor, factor], [0.01, 0.01])
    source = save_network(
        tmp_path / "src.ckpt",
        net,
        features=FEATURES.to_dict(),
        task={"support_segments": 60},
        listener_prior=prior.to_dict(),
    )
    console, buffer = capture()
    out = tmp_path / "lp.ckpt"
    cfg = _cli(source, listener, out, "holdout=[s3]", "method=listener_prior", "plot=false")
    assert run(cfg, console) == 0, buffer.getvalue()
    report = json.loads((tmp_path / "personalize_report.json").read_text())
    assert report["chosen"] == {"method": "listener_prior", "steps": 0}
    adapted, _, hparams = load_network(out)  # the source's own weights, weights_only=True
    for key, value in net.state_dict().items():
        torch.testing.assert_close(adapted.state_dict()[key], value, rtol=0, atol=0)
    readout = hparams["personalized"]["listener_readout"]
    assert np.shape(readout["weight"]) == (2, size)
    mine, base = Predictor.load(out, device="cpu"), Predictor.load(source, device="cpu")
    logmel = base.logmel(listener / "audio" / "s3.wav")
    expected = base.predict(logmel, net=with_listener_readout(base.net, readout))
    got = mine.predict(logmel)
    np.testing.assert_allclose(got.arousal, expected.arousal, atol=1e-6)
    assert np.abs(got.valence - base.predict(logmel).valence).max() > 1e-4


def test_label_range_and_time_order_errors_name_file_and_row(tmp_path):
    loud = write_simple_csv(
        tmp_path / "loud.csv", np.array([15.0, 15.5, 16.0]), np.array([0.1, 5.0, 0.2]), np.zeros(3)
    )
    with pytest.raises(
        AnnotationError, match=r"loud.csv, row 3, arousal = 5 is outside the label range \[-1, 1\]"
    ):
        read_simple_csv(loud, FEATURES)
    backwards = write_simple_csv(
        tmp_path / "back.csv", np.array([15.0, 16.0, 15.5]), np.zeros(3), np.zeros(3)
    )
    with pytest.raises(
        AnnotationError, match=r"back.csv, row 4: time 15.5 s is not after the previous row's 16 s"
    ):
        read_simple_csv(backwards, FEATURES)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["holdout=[s9]"], "holdout=['s9']: not among the annotated songs"),
        (["holdout=[s1,s2,s3]"], "every annotated song is held out"),
        (["lr=-1"], "adaptation.lr=-1: expected a positive number or null"),
        (["method=bogus"], "adaptation.method='bogus' is not one of none, calibrate"),
        (["method=calibrate"], "adaptation.prior=auto: this checkpoint holds no calibration prior"),
        (["method=listener_prior"], "adaptation.method=listener_prior: this model holds no listener prior"),
    ],
)
def test_errors_before_any_adaptation(tiny_ckpt, listener, tmp_path, overrides, message):
    console, buffer = capture()
    cfg = compose_cli(
        "personalize",
        [
            f"ckpt={tiny_ckpt}",
            f"audio=[{listener / 'audio'}]",
            f"annotations=[{listener / 'curves'}]",
            f"out={tmp_path / 'x.ckpt'}",
            *overrides,
        ],
    )
    assert run(cfg, console) == 2
    assert message in buffer.getvalue()
    assert not (tmp_path / "x.ckpt").exists()


def test_audio_and_annotations_must_match(tiny_ckpt, listener, tmp_path):
    predictor = Predictor.load(tiny_ckpt, device="cpu")
    with pytest.raises(AnnotationError, match=r"audio but no annotations: \['s3'\]"):
        load_listener(
            predictor,
            [str(listener / "audio")],
            [str(listener / "curves" / "s1.csv"), str(listener / "curves" / "s2.csv")],
        )
    with pytest.raises(AnnotationError, match=r"annotated but no audio: \['s2', 's3'\]"):
        load_listener(predictor, [str(listener / "audio" / "s1.wav")], [str(listener / "curves")])


def test_split_holdout_names_what_cannot_be_held_out() -> None:
    songs = [
        AnnotatedSong(name, Path(f"{name}.wav"), np.zeros((2, 51, 128), np.float32), np.zeros(2), np.zeros(2))
        for name in ("a", "b", "c")
    ]
    support, heldout = split_holdout(songs, ["b"])
    assert [s.song for s in support] == ["a", "c"] and [s.song for s in heldout] == ["b"]
    with pytest.raises(
        AnnotationError, match=r"holdout=\['d'\]: not among the annotated songs \['a', 'b', 'c'\]"
    ):
        split_holdout(songs, ["d", "a"])
    with pytest.raises(AnnotationError, match="every annotated song is held out"):
        split_holdout(songs, ["a", "b", "c"])


def test_adaptation_for_leaves_calibrate_out_only_without_any_prior() -> None:
    task = {"inner_steps": 4, "inner_lr": 0.01, "first_order": True}
    no_prior = SimpleNamespace(hparams={"task": task}, net=SimpleNamespace(listener_prior=None))
    config, prior, narrowed = adaptation_for(no_prior, AdaptationConfig(method="auto"))
    assert narrowed and prior is None and (config.steps, config.lr) == (4, 0.01)
    assert config.auto_methods == ("head", "maml") and config.auto_single == ()
    config, prior, narrowed = adaptation_for(no_prior, AdaptationConfig(method="auto", prior=1))
    assert not narrowed and prior is not None and "calibrate" in config.auto_methods


def test_out_may_not_be_the_checkpoint_it_reads(listener, tmp_path):
    """out=ckpt used to replace the meta-trained model with its personalisation (naming itself as source)."""
    victim = save_tiny_ckpt(tmp_path / "victim.ckpt")
    before = victim.read_bytes()
    console, buffer = capture()
    assert run(_cli(victim, listener, victim, "method=none", "overwrite=true"), console) == 2
    assert "out=" in buffer.getvalue() and "is also the input ckpt" in buffer.getvalue()
    assert victim.read_bytes() == before


def test_out_may_not_replace_an_unrelated_file(tiny_ckpt, listener, tmp_path):
    """An existing file that is not a dsaml-personalize checkpoint is refused before any work (a meta-trained
    checkpoint too); a personalised checkpoint of an earlier run is replaced; overwrite=true opts in."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    other_model = save_tiny_ckpt(tmp_path / "other.ckpt")
    for target in (notes, other_model):
        before = target.read_bytes()
        console, buffer = capture()
        assert run(_cli(tiny_ckpt, listener, target, "method=none"), console) == 2
        assert "exists and is not a dsaml-personalize checkpoint; pass overwrite=true" in buffer.getvalue()
        assert target.read_bytes() == before
    out = tmp_path / "me.ckpt"
    for _ in range(2):  # the second run replaces the first's checkpoint
        console, buffer = capture()
        assert run(_cli(tiny_ckpt, listener, out, "method=none"), console) == 0, buffer.getvalue()
    console, buffer = capture()
    assert run(_cli(tiny_ckpt, listener, notes, "method=none", "overwrite=true"), console) == 0
    assert load_network(notes)[2]["personalized"]["method"] == "none"


def test_an_unwritable_out_is_found_before_any_work(tiny_ckpt, listener, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    console, buffer = capture()
    assert run(_cli(tiny_ckpt, listener, blocker / "me.ckpt", "method=maml", "steps=50"), console) == 2
    text = buffer.getvalue()
    assert (
        "file' is an existing file; expected a folder" in text
        and "personalising" not in text
        and "chosen" not in text
    )


def test_negative_times_are_refused(tmp_path):
    """Times from -5 s used to be accepted and interpolated as given (a curve offset from its audio)."""
    early = write_simple_csv(tmp_path / "early.csv", np.arange(-5.0, 30.0, 0.5), np.zeros(70), np.zeros(70))
    with pytest.raises(AnnotationError, match=r"early.csv, row 2: time -5 s is negative; times are seconds"):
        read_simple_csv(early, FEATURES)
