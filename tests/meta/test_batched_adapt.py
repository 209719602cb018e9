"""Batched test-time adaptation (`task.meta_engine=batched` in the test protocols) against the one-at-a-time
path: each pair's adapted weights, BatchNorm statistics, predictions and scores, for the full and the
head-only inner loop, supports of different sizes (grouped by shape), chunks, and the test stage."""

from __future__ import annotations

import pytest
import torch

from app_fixtures import tiny_net
from dsaml.data.batch import collate
from dsaml.meta import AdaptationConfig, CalibrationPrior, adapt, adapt_head
from dsaml.meta.batched_adapt import adapt_many, groups
from dsaml.training.evaluation import run_protocols_many

STEPS, LR, WINDOW = 3, 0.05, 12
METHODS = pytest.mark.parametrize("method", ["maml", "head"], ids=["full", "head"])


def _song(gen: torch.Generator, n: int) -> dict:
    return {
        "logmel": torch.randn(n, 51, 128, generator=gen) - 5.0,
        "global": None,
        "arousal": (torch.rand(n, generator=gen) - 0.5) * 0.8,
        "valence": (torch.rand(n, generator=gen) - 0.5) * 0.8,
    }


def _support(gen: torch.Generator, clips: int) -> list[dict]:
    """One support: a list of one batch of `clips` windows of WINDOW segments."""
    song = _song(gen, clips * WINDOW)
    return [{k: None if v is None else v.view(clips, WINDOW, *v.shape[1:]) for k, v in song.items()}]


def test_groups_bind_equal_keys_in_chunks():
    assert groups(["a", "b", "a", "a", "b"], None) == [[0, 2, 3], [1, 4]]
    assert groups(["a", "b", "a", "a", "b"], 2) == [[0, 2], [3], [1, 4]]
    assert groups([], 3) == []


@METHODS
def test_each_pair_adapts_as_it_would_alone(method):
    """Five supports of 1, 2 and 1, 1, 2 windows, chunks of two: each pair's adapted network equals `adapt`
    (or `adapt_head`) of its support alone: parameters, BatchNorm running statistics (the copy trains in
    train mode: the statistics move) and eval-mode outputs on a query."""
    net = tiny_net().eval()
    gen = torch.Generator().manual_seed(1)
    supports = [_support(gen, clips) for clips in (1, 2, 1, 1, 2)]
    query = _song(gen, WINDOW)
    adapted = dict(adapt_many(net, supports, method, STEPS, LR, chunk=2))
    assert sorted(adapted) == list(range(5))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run = adapt if method == "maml" else adapt_head
    for index, support in enumerate(supports):
        alone = run(net, support, STEPS, lr=LR, first_order=True).net.eval()
        mine = adapted[index]
        assert not mine.training
        ours, theirs = mine.state_dict(), alone.state_dict()
        assert ours.keys() == theirs.keys()
        moved = 0
        for key, value in theirs.items():
            torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-5, msg=key)
            moved += not torch.equal(value, before[key])
        assert moved > 0  # the adaptation changed weights (and for the full loop, statistics)
        with torch.no_grad():
            out = mine(query["logmel"][None], None)
            ref = alone(query["logmel"][None], None)
        for key in ("arousal", "valence"):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-5)
    for key, value in net.state_dict().items():  # the network itself is never modified
        assert torch.equal(value, before[key]), key


def test_a_nonfinite_support_loss_names_the_pair():
    net = tiny_net().eval()
    gen = torch.Generator().manual_seed(2)
    supports = [_support(gen, 1), _support(gen, 1)]
    supports[1][0]["arousal"][0, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="adapt: support 1: non-finite support loss"):
        list(adapt_many(net, supports, "maml", STEPS, LR))


def _items(gen: torch.Generator) -> list[dict]:
    """Four test items (songs of 30, 36, 30 and 20 segments) whose cross-song supports are whole songs of
    other lengths (1, 2 or 3 windows, so the pairs fall into several groups) or none."""
    lengths, others = (30, 36, 30, 20), ([24], [30, 18], [24], None)
    items = []
    for n, cross in zip(lengths, others, strict=True):
        item = _song(gen, n)
        item["cross_support"] = None if cross is None else [_song(gen, m) for m in cross]
        items.append(item)
    return items


@pytest.mark.parametrize("method", ["maml", "head", "maml_calibrate"], ids=["full", "head", "full_calibrate"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_batched_protocols_score_as_the_sequential_ones(method, chunk):
    """Within-song and cross-song (whole support songs) on four items: the batched engine's predictions and
    scores equal the one-at-a-time path's, protocol by protocol."""
    net = tiny_net().eval()
    items = _items(torch.Generator().manual_seed(3))
    config = AdaptationConfig(method=method, steps=STEPS, lr=LR, first_order=True, prior=1.0)
    protocols = ["pdmer_unadapted", "pdmer_within_song", "pdmer_cross_song"]
    kwargs = dict(window=WINDOW, adaptation=config, stitch="mean", batch_size=8, seeds=[1, 2, 3, 4])
    kwargs["prior"] = CalibrationPrior.uniform(1.0)
    sequential = run_protocols_many(net, items, protocols, **kwargs)
    batched = run_protocols_many(net, items, protocols, **kwargs, engine="batched", chunk=chunk)
    assert [list(r) for r in batched] == [list(r) for r in sequential]
    assert [len(r) for r in sequential] == [3, 3, 3, 2]  # the last item has no other song
    for ours, theirs in zip(batched, sequential, strict=True):
        for protocol, (scores, curves) in theirs.items():
            for mine, reference in zip(ours[protocol][1], curves, strict=True):
                torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5)
            assert ours[protocol][0] == pytest.approx(scores, rel=1e-4, abs=1e-5), protocol


def test_batched_cross_song_on_clips_scores_as_the_sequential_one():
    """Cross-song support given as first clips (one inner-loop batch of the rater's other songs)."""
    net = tiny_net().eval()
    gen = torch.Generator().manual_seed(4)
    items = []
    for shots in (1, 2, 1):
        item = _song(gen, 30)
        clips = [{**_song(gen, WINDOW), "song": f"s{i}"} for i in range(shots)]
        clips = [{k: v for k, v in clip.items() if k != "global"} for clip in clips]  # as collate expects
        item["cross_support"] = collate(clips)
        items.append(item)
    config = AdaptationConfig(method="maml", steps=STEPS, lr=LR, first_order=True)
    kwargs = dict(window=WINDOW, adaptation=config, stitch="mean", batch_size=8, seeds=[5, 6, 7])
    sequential = run_protocols_many(net, items, ["pdmer_cross_song"], **kwargs)
    batched = run_protocols_many(net, items, ["pdmer_cross_song"], **kwargs, engine="batched")
    for ours, theirs in zip(batched, sequential, strict=True):
        scores, curves = theirs["pdmer_cross_song"]
        for mine, reference in zip(ours["pdmer_cross_song"][1], curves, strict=True):
            torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5)
        assert ours["pdmer_cross_song"][0] == pytest.approx(scores, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("inner_loop", ["full", "head"])
def test_validation_with_the_batched_engine_scores_as_the_sequential_one(inner_loop):
    """PDMER validation (held-out raters' episodes): with task.meta_engine=batched and meta_chunk=2 the
    module adapts two episodes together, the third at the epoch's end, and its rows equal the sequential
    engine's, episode by episode."""
    from dsaml.training.module import DSAMLModule
    from dsaml.training.smoke import TINY_MODEL

    gen = torch.Generator().manual_seed(6)
    episodes = []
    for index in range(3):
        support = _support(gen, 1 + index % 2)[0]
        query = {**_support(gen, 2)[0], "songs": ["a", "b"]}
        episodes.append({"support": support, "query": query, "index": index})
    rows = {}
    for engine in ("sequential", "batched"):
        task = dict(name="pdmer", inner_steps=STEPS, inner_lr=LR, inner_loop=inner_loop, meta_engine=engine)
        protocols = ["pdmer_within_song"]
        module = DSAMLModule(TINY_MODEL, {**task, "meta_chunk": 2, "test_protocols": protocols})
        torch.manual_seed(0)
        module.net.load_state_dict(tiny_net().state_dict())
        module.eval()
        module.on_validation_epoch_start()
        for index, episode in enumerate(episodes):
            module.validation_step(episode, index)
        assert len(module._eval_rows) == (6 if engine == "sequential" else 4)  # 2 episodes wait, then run
        module._validate_waiting()
        rows[engine] = module._eval_rows
    assert [r["id"] for r in rows["batched"]] == [r["id"] for r in rows["sequential"]]
    assert len(rows["batched"]) == 6
    for ours, theirs in zip(rows["batched"], rows["sequential"], strict=True):
        for key, value in theirs.items():
            if key != "id":
                assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
