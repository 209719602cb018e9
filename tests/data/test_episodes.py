"""Episode sampling and held-out splits on a fake catalogue of ids (no store needed)."""

from __future__ import annotations

import pytest

from dsaml.data.episodes import EpisodeSampler, holdout, shard

CATALOGUE = {f"r{i}": [str(1000 + 10 * i + j) for j in range(20 if i % 2 else 6)] for i in range(8)}


def test_meta_batch_shape_distinct_raters_and_own_songs():
    sampler = EpisodeSampler(CATALOGUE, episodes=5, shots=1, queries=15, seed=3)
    for step in range(20):
        batch = sampler.meta_batch(step)
        assert len(batch) == 5 and len({t.rater for t in batch}) == 5
        for task in batch:
            songs = set(CATALOGUE[task.rater])
            assert len(task.support) == 1 and len(task.query) == 15
            assert set(task.support) <= songs and set(task.query) <= songs
            assert not set(task.support) & set(task.query)  # query = other clips of the same rater
            if len(songs) >= 16:  # enough songs: no repeats
                assert len(set(task.query)) == 15
            else:  # too few: drawn with replacement from the 5 others
                assert set(task.query) <= songs - set(task.support)


def test_deterministic_per_seed_and_step():
    a = EpisodeSampler(CATALOGUE, 4, 2, 3, seed=0)
    b = EpisodeSampler(dict(reversed(list(CATALOGUE.items()))), 4, 2, 3, seed=0)
    assert [a.meta_batch(s) for s in range(5)] == [b.meta_batch(s) for s in range(5)]
    assert a.meta_batch(0) != a.meta_batch(1)
    assert a.meta_batch(0) != EpisodeSampler(CATALOGUE, 4, 2, 3, seed=1).meta_batch(0)
    assert a.fixed_episodes(6) == a.fixed_episodes(6)


def test_too_few_raters_names_the_fix():
    with pytest.raises(ValueError, match="task.episodes"):
        EpisodeSampler(CATALOGUE, episodes=9, shots=1, queries=3)


def test_shard_splits_every_task_once():
    tasks = list(range(16))
    parts = [shard(tasks, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == tasks


def test_holdout_is_disjoint_deterministic_and_order_free():
    ids = [str(i) for i in range(50)]
    kept, held = holdout(ids, 0.2, seed=0)
    assert len(held) == 10 and not set(kept) & set(held) and sorted(kept + held) == sorted(ids)
    assert holdout(list(reversed(ids)), 0.2, seed=0) == (kept, held)
    assert holdout(ids, 0.2, seed=1)[1] != held
    assert holdout(ids, 0.0, seed=0) == (sorted(ids), [])
