"""dsaml-eval: re-test checkpoints, as their own task or another (a DMER model under the PDMER protocols),
with protocol and task overrides; the results equal those of the training run's own test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsaml.models.checkpoint import load_network, save_network
from dsaml.training.run import evaluate, run
from train_fixtures import DMER_TINY, compose_config, train_config

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out


def eval_config(store: Path, out: Path, ckpt: Path, *overrides: str):
    base = [f"ckpt_path={ckpt}", "data=synthetic", f"paths.store={store}"]
    return compose_config("eval", [*base, "trainer.enable_progress_bar=false", *overrides], output_dir=out)


@pytest.fixture(scope="module")
def dmer_run(tiny_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dmer")
    run(train_config(tiny_store, out, [*DMER_TINY, "callbacks.model_checkpoint.save_top_k=0"]))
    return out


def _rows(results: dict) -> dict[str, dict]:
    return {row["protocol"]: row for row in results["rows"]}


def test_retest_equals_the_training_runs_test(dmer_run, tiny_store, tmp_path):
    trained = json.loads((dmer_run / "results.json").read_text())
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    results = evaluate(eval_config(tiny_store, tmp_path, ckpt))
    assert _rows(results)["dmer"] == pytest.approx(_rows(trained)["dmer"], abs=1e-6)
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == results["rows"]


def test_a_dmer_model_under_the_pdmer_protocols(dmer_run, tiny_store, tmp_path):
    """task=pdmer (the config group) + overrides: adaptation settings reach the protocols."""
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    cfg = eval_config(
        tiny_store,
        tmp_path,
        ckpt,
        "task=pdmer",
        "protocols=[pdmer_unadapted,pdmer_within_song]",
        "+overrides.eval_inner_steps=0",
    )
    results = evaluate(cfg)
    rows = _rows(results)
    assert set(rows) == {"pdmer_unadapted", "pdmer_within_song"} and rows["pdmer_unadapted"]["n"] >= 1
    # zero adaptation steps: the adapted model is the model itself
    for key, value in rows["pdmer_unadapted"].items():
        if key != "protocol":
            assert rows["pdmer_within_song"][key] == pytest.approx(value, abs=1e-6), key
    assert {r["protocol"] for r in results["per_rater"]} == {"pdmer_unadapted", "pdmer_within_song"}


def test_adaptation_methods_reach_the_protocols(dmer_run, tiny_store, tmp_path):
    """adaptation=<method> (conf/adaptation/): none and an identity-strength calibration give the unadapted
    scores; the checkpoint carries the calibration prior, estimated from the trained network's own predictions
    on held-out songs, that calibrate uses by default."""
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    _, _, hparams = load_network(ckpt)
    prior = hparams["calibration_prior"]
    # estimated from the trained network's predictions on the validation songs (their raters' curves)
    assert prior["source"] == "model" and prior["raters"] >= 2
    assert all(v > 0 for key in ("offset_tau2", "gain_tau2") for v in prior[key])
    base = ["task=pdmer", "protocols=[pdmer_unadapted,pdmer_within_song]"]
    for i, method in enumerate((["adaptation=none"], ["adaptation=calibrate", "adaptation.prior=1e12"])):
        rows = _rows(evaluate(eval_config(tiny_store, tmp_path / f"identity{i}", ckpt, *base, *method)))
        for key in ("arousal_ccc", "valence_rmse", "average"):
            assert rows["pdmer_within_song"][key] == pytest.approx(rows["pdmer_unadapted"][key], abs=1e-5)
    for method in ("calibrate", "head_calibrate"):
        overrides = [*base, f"adaptation={method}", "adaptation.steps=2"]
        cfg = eval_config(tiny_store, tmp_path / method, ckpt, *overrides)
        rows = _rows(evaluate(cfg))
        assert rows["pdmer_within_song"]["n"] == rows["pdmer_unadapted"]["n"]
        assert rows["pdmer_within_song"]["average"] != rows["pdmer_unadapted"]["average"]
    with pytest.raises(ValueError, match=r"adaptation.method='bogus' is not one of none, calibrate"):
        evaluate(eval_config(tiny_store, tmp_path, ckpt, *base, "+adaptation.method=bogus"))


def test_the_checkpoint_carries_the_listener_prior_of_its_weights(dmer_run, tiny_store, tmp_path):
    """dsaml-train stores the listener prior of the weights it saves (the same as re-estimating it from those
    weights and the store's training raters), `load_network` attaches it, and adaptation=listener_prior
    reaches the protocols (every item adapted, the scores moved)."""
    from dsaml.data.datamodule import StoreReader
    from dsaml.data.store import FeatureStore
    from dsaml.meta.listener_prior import LAGS
    from dsaml.training.evaluation import estimate_training_listener_prior

    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    net, cfg, hparams = load_network(ckpt)
    prior = net.listener_prior
    assert prior is not None and prior.raters >= 3 and all(s > 0 for s in prior.noise)
    assert prior.mean[0].shape == (len(LAGS) + cfg.hidden_size + 1,)
    window = hparams["task"]["support_segments"]
    again = estimate_training_listener_prior(net, StoreReader(FeatureStore(tiny_store), None), window)
    for d in (0, 1):
        torch.testing.assert_close(again.mean[d], prior.mean[d], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(again.factor[d], prior.factor[d], rtol=1e-5, atol=1e-7)
    base = ["task=pdmer", "protocols=[pdmer_unadapted,pdmer_within_song]"]
    rows = _rows(evaluate(eval_config(tiny_store, tmp_path, ckpt, *base, "adaptation=listener_prior")))
    assert rows["pdmer_within_song"]["n"] == rows["pdmer_unadapted"]["n"] >= 1
    assert rows["pdmer_within_song"]["average"] != rows["pdmer_unadapted"]["average"]


def test_errors_name_the_problem(dmer_run, tiny_store, tmp_path):
    net, _, _ = load_network(dmer_run / "checkpoints" / "last.ckpt")
    no_task = save_network(tmp_path / "converted.ckpt", net)  # like dsaml-convert output: no task recorded
    with pytest.raises(ValueError, match=r"records no task .*pass task=dmer or task=pdmer"):
        evaluate(eval_config(tiny_store, tmp_path, no_task))
    with pytest.raises(ValueError, match=r"pdmer_cross_song' is not one of dmer"):
        evaluate(eval_config(tiny_store, tmp_path, no_task, "task=dmer", "protocols=[pdmer_cross_song]"))


def test_command_line(dmer_run, tiny_store, tmp_path):
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", "data=synthetic", f"paths.store={tiny_store}"]
    args.append(f"paths.output_dir={tmp_path}")
    done = subprocess.run(
        [sys.executable, "-m", "dsaml.cli.evaluate", *args, "task=pdmer", "protocols=[pdmer_unadapted]"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [row["protocol"] for row in json.loads((tmp_path / "results.json").read_text())["rows"]] == [
        "pdmer_unadapted"
    ]


def test_the_tested_weights_bring_their_own_calibration_prior(dmer_run):
    """The prior is re-estimated after every validation epoch, so the module in memory holds the last
    epoch's; the test stage (best checkpoint) and a resumed run take the one stored with their weights."""
    from dsaml.training.module import DSAMLModule
    from dsaml.training.run import load_tested_weights

    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    _, _, hparams = load_network(ckpt)
    stale = {**hparams["calibration_prior"], "offset_tau2": [9.0, 9.0]}
    module = DSAMLModule(hparams["model"], hparams["task"], calibration_prior=stale)
    load_tested_weights(module, ckpt)
    assert module.hparams.calibration_prior == hparams["calibration_prior"]
    module.hparams.calibration_prior = stale
    module.on_load_checkpoint({"hyper_parameters": hparams})
    assert module.calibration_prior.offset_tau2 == tuple(hparams["calibration_prior"]["offset_tau2"])


def test_cross_song_support_is_a_clip_or_the_whole_song():
    """run_protocols on hand-made sequences: the support song's listener curve is the model's curve for its
    first 60 segments (one clip) and the model's + 0.5 for the next 60. Plain least squares (prior 0) on the
    clip gives offset 0; on the whole song offset 0.25 (the tiny network's arousal is flat, so no gain, only
    the offset mean(y - x)), which predicts a song heard at model + 0.25 exactly."""
    import torch

    from app_fixtures import tiny_net
    from dsaml.data.batch import collate
    from dsaml.meta import AdaptationConfig, CalibrationPrior, SlidingWindows
    from dsaml.training.evaluation import run_protocols

    net = tiny_net().eval()
    predictor = SlidingWindows(window=60)
    gen = torch.Generator().manual_seed(3)

    def song(n: int) -> dict:
        seq = {"logmel": torch.randn(n, 51, 128, generator=gen) - 5.0, "global": None}
        seq["arousal"], seq["valence"] = predictor(net, {**seq, "arousal": torch.zeros(n)})
        return seq

    support, target = song(120), song(80)
    assert float(support["arousal"].var()) < 1e-4  # offset only, as the docstring says
    support["arousal"] = support["arousal"] + torch.cat([torch.zeros(60), torch.full((60,), 0.5)])
    target["arousal"] = target["arousal"] + 0.25
    config = AdaptationConfig(method="calibrate", prior=0.0)
    prior = CalibrationPrior.uniform(0)
    kwargs = dict(window=60, adaptation=config, stitch="mean", batch_size=8, prior=prior)
    clip = {k: support[k][:60] for k in ("logmel", "arousal", "valence")}
    whole = run_protocols(net, {**target, "cross_support": [support]}, ["pdmer_cross_song"], **kwargs)
    clipped = run_protocols(
        net, {**target, "cross_support": collate([{**clip, "song": "s"}])}, ["pdmer_cross_song"], **kwargs
    )
    predicted = whole["pdmer_cross_song"][1][0]
    torch.testing.assert_close(predicted, target["arousal"], atol=1e-5, rtol=0)
    # the clip alone is predicted without the rest of the song's context: its curve differs by ~1e-3
    torch.testing.assert_close(clipped["pdmer_cross_song"][1][0], target["arousal"] - 0.25, atol=5e-3, rtol=0)


def test_step_seeds_differ_by_run_seed_in_what_torch_keeps():
    """torch's CPU generator keeps only the low 32 bits of a seed: the seeds of two runs' step 5 (and of a
    training step and a test item) must draw different numbers."""
    import torch

    from dsaml.training.resume import TEST_ITEM, step_seed

    def draws(seed: int) -> list[float]:
        torch.manual_seed(seed)
        return torch.rand(3).tolist()

    seeds = [step_seed(0, 5), step_seed(1, 5), step_seed(0, 5, stream=TEST_ITEM)]
    assert len({tuple(draws(s)) for s in seeds}) == 3 and len({s % 2**32 for s in seeds}) == 3
    assert step_seed(0, 5) == step_seed(0, 5) and 0 <= step_seed(7, 2**40) < 2**62


def test_a_protocols_dropout_draws_do_not_depend_on_the_other_protocols():
    """The test-time inner loop runs in train mode (dropout). Within-song scores are the same whether the
    cross-song protocol (whole support songs: many more draws) runs before it or not, and differ with the
    RNG state the item starts from (so the draws are real, and reseeded per item by StepSeed)."""
    import torch

    from app_fixtures import tiny_net
    from dsaml.meta import AdaptationConfig
    from dsaml.training.evaluation import run_protocols

    net = tiny_net(dropout=0.5)
    gen = torch.Generator().manual_seed(5)

    def song(n: int) -> dict:
        return {
            "logmel": torch.randn(n, 51, 128, generator=gen) - 5.0,
            "global": None,
            "arousal": torch.rand(n, generator=gen) - 0.5,
            "valence": torch.rand(n, generator=gen) - 0.5,
        }

    item = {**song(100), "cross_support": [song(90)]}
    config = AdaptationConfig(method="maml", steps=3, lr=0.05, first_order=True)
    kwargs = dict(window=60, adaptation=config, stitch="mean", batch_size=8)

    def within(protocols: list[str], seed: int) -> dict:
        torch.manual_seed(seed)
        return run_protocols(net, item, protocols, **kwargs)["pdmer_within_song"][0]

    alone = within(["pdmer_within_song"], 1)
    assert within(["pdmer_cross_song", "pdmer_within_song"], 1) == alone
    assert within(["pdmer_within_song"], 2) != alone


def test_dsaml_eval_adapts_on_whole_support_songs(dmer_run, tiny_store, tmp_path):
    """+overrides.cross_support=song: the test items carry the rater's other songs whole (every labelled
    segment), the protocol runs on them, and a bad value fails before any work with the allowed values."""
    from dsaml.data.datamodule import DSAMLDataModule
    from dsaml.data.store import FeatureStore

    module = DSAMLDataModule(str(tiny_store), task="pdmer", cross_support="song")
    pairs, support = module.test_pairs()
    index = next(i for i, songs in enumerate(support) if songs)
    item = module.test_dataloader().dataset[index]
    store = FeatureStore(str(tiny_store))
    lengths = [min(len(store.curves(s, pairs[index][1])[0]), store.n_segments(s)) for s in support[index]]
    assert [len(seq["arousal"]) for seq in item["cross_support"]] == lengths
    assert max(lengths) > store.segments_per_clip  # longer than the clip the default adapts on
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    base = ["task=pdmer", "protocols=[pdmer_cross_song]", "adaptation=calibrate", "adaptation.prior=0"]
    clip = _rows(evaluate(eval_config(tiny_store, tmp_path / "clip", ckpt, *base)))["pdmer_cross_song"]
    song = _rows(
        evaluate(eval_config(tiny_store, tmp_path / "song", ckpt, *base, "+overrides.cross_support=song"))
    )["pdmer_cross_song"]
    assert song["n"] == clip["n"] and song["average"] != clip["average"]
    with pytest.raises(ValueError, match=r"cross_support='half' is not one of clip, song"):
        evaluate(eval_config(tiny_store, tmp_path / "bad", ckpt, *base, "+overrides.cross_support=half"))


def test_eval_refuses_a_store_of_another_dataset(tiny_store, tmp_path):
    """dsaml-eval data=pmemo on the synthetic store used to run and label the run pmemo."""
    from app_fixtures import save_tiny_ckpt
    from dsaml.config import ConfigError

    ckpt = save_tiny_ckpt(tmp_path / "m.ckpt")
    cfg = compose_config(
        "eval", [f"ckpt_path={ckpt}", "task=dmer", "data=pmemo", f"paths.store={tiny_store}"], tmp_path / "e"
    )
    with pytest.raises(
        ConfigError, match=r"holds the dataset 'synthetic', not data=pmemo: pass data=synthetic"
    ):
        evaluate(cfg)
    assert not (tmp_path / "e" / "results.json").exists()


def test_dsaml_eval_batched_engine_scores_as_the_sequential_one(dmer_run, tiny_store, tmp_path):  # noqa: F811
    """+overrides.meta_engine=batched: the test stage runs the within-song and cross-song protocols of its
    items in groups (meta_chunk=2: two items, pairs of equal support shapes together) and writes the same
    scores, per protocol and per rater, as the sequential engine (the tiny network has no dropout)."""
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    base = [
        "task=pdmer",
        "protocols=[pdmer_within_song,pdmer_cross_song]",
        "adaptation=maml",
        "adaptation.steps=2",
        "+overrides.cross_support=song",
    ]
    results = {
        engine: evaluate(
            eval_config(tiny_store, tmp_path / engine, ckpt, *base, f"+overrides.meta_engine={engine}", *more)
        )
        for engine, more in (("sequential", []), ("batched", ["+overrides.meta_chunk=2"]))
    }
    sequential, batched = results["sequential"], results["batched"]
    assert [r["protocol"] for r in batched["rows"]] == ["pdmer_within_song", "pdmer_cross_song"]
    unadapted = _rows(evaluate(eval_config(tiny_store, tmp_path / "none", ckpt, *base, "adaptation=none")))
    for part in ("rows", "per_rater"):
        assert len(batched[part]) == len(sequential[part])
        for ours, theirs in zip(batched[part], sequential[part], strict=True):
            assert ours["n"] == theirs["n"] >= 1 and ours.keys() == theirs.keys()
            for key, value in theirs.items():
                if isinstance(value, str):  # protocol, rater
                    assert ours[key] == value
                else:
                    assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    # the adaptation is real: the adapted scores are not the unadapted ones
    assert _rows(batched)["pdmer_within_song"]["average"] != unadapted["pdmer_within_song"]["average"]
