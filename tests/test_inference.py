"""Sliding-window prediction: stitching rules, per-song encoding, short songs, window length, progress."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dsaml.inference import edge_weights, predict_song, stitch_windows, window_starts
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.training.smoke import TINY_MODEL


class PositionNet(nn.Module):
    """A model whose outputs are known functions of the absolute position: the "segment encoding" carries the
    segment's index, and the outputs are f(index) (the window around it does not matter)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def encode_segments(self, logmel, global_vectors=None, song=False, chunk=None):
        return logmel[..., 0, :1]  # [B, T, 1]: the test writes the index into the log-mel

    def predict_encoded(self, h, return_attention=False, return_diagonal=True):
        position = h[..., 0]
        return {"arousal": torch.sin(position / 7.0), "valence": position**2 / 1000.0}

    def song_cache(self, h):
        return ()

    def predict_windows(self, h, index, cache):
        return self.predict_encoded(h[index])


def _position_song(length):
    logmel = torch.zeros(length, 51, 128)
    logmel[:, 0, 0] = torch.arange(length, dtype=torch.float32)
    return logmel


@pytest.mark.parametrize(("length", "stride"), [(100, 1), (183, 1), (150, 7), (61, 4)])
def test_default_stitching_recovers_a_function_of_position(length, stride):
    position = torch.arange(length, dtype=torch.float32)
    for rule in ("mean", "weighted", "last"):
        arousal, valence = predict_song(
            PositionNet(), _position_song(length), window=60, stride=stride, stitch=rule
        )
        torch.testing.assert_close(arousal, torch.sin(position / 7.0), rtol=0, atol=1e-6)
        torch.testing.assert_close(valence, position**2 / 1000.0, rtol=1e-6, atol=1e-6)


def test_original_stitching_shifts_arousal_by_one_after_position_59():
    length = 100
    arousal, valence = predict_song(
        PositionNet(), _position_song(length), window=60, stride=1, stitch="original"
    )
    position = torch.arange(length, dtype=torch.float32)
    torch.testing.assert_close(valence, position**2 / 1000.0, rtol=0, atol=1e-6)  # valence is aligned
    source = torch.cat([torch.arange(60), torch.arange(61, 96), torch.arange(95, 100)]).float()
    torch.testing.assert_close(arousal, torch.sin(source / 7.0), rtol=0, atol=1e-6)  # 60 skipped, 95 twice


def test_original_arousal_rule_matches_the_documented_rule_for_every_remainder():
    for length in range(60, 80):
        n = length - 59
        outputs = torch.arange(n)[:, None] + torch.arange(60)[None]  # window w, slot j -> position w + j
        picked = stitch_windows(outputs.float(), list(range(n)), length, "original", "arousal")
        expected = list(range(60)) + [p for w in range(6, n, 5) for p in range(w + 55, w + 60)]
        short = length - len(expected)
        assert short == ((n - 1) % 5 or 5) or n == 1
        expected += list(range(length - short, length)) if short else []
        assert picked.long().tolist() == expected


def test_window_starts_cover_the_song_and_end_at_its_end():
    assert window_starts(100, 60, 1) == list(range(41))
    assert window_starts(100, 60, 15) == [0, 15, 30, 40]


def test_prediction_equals_plain_forwards_of_each_window():
    torch.manual_seed(0)
    net = DSAMLNet(DSAMLConfig(**TINY_MODEL, global_context="precomputed:x")).eval()
    logmel, g = torch.randn(75, 51, 128), torch.randn(75, TINY_MODEL["hidden_size"])
    arousal, valence = predict_song(net, logmel, g, window=60, stride=1, stitch="mean", batch_size=4)
    with torch.no_grad():
        windows = [net(logmel[None, s : s + 60], g[None, s : s + 60]) for s in range(16)]
    position_sum = torch.zeros(75)
    for s, out in enumerate(windows):
        position_sum[s : s + 60] += out["valence"][0]
    count = torch.zeros(75)
    for s in range(16):
        count[s : s + 60] += 1
    torch.testing.assert_close(valence, position_sum / count, rtol=0, atol=1e-5)
    assert arousal.shape == (75,) and net.training is False
    short_a, _ = predict_song(net, logmel[:40], g[:40], window=60, stride=1, stitch="mean")  # one forward
    with torch.no_grad():
        torch.testing.assert_close(
            short_a, net(logmel[None, :40], g[None, :40])["arousal"][0], rtol=0, atol=1e-6
        )


def test_learned_context_song_prediction_uses_centred_windows():
    torch.manual_seed(0)
    net = DSAMLNet(DSAMLConfig(**TINY_MODEL)).train()
    arousal, valence = predict_song(net, torch.randn(90, 51, 128), window=60, stride=1, stitch="mean")
    assert arousal.shape == valence.shape == (90,) and torch.isfinite(arousal).all()
    assert net.training  # mode restored


def test_bad_arguments_fail_with_allowed_values():
    net = PositionNet()
    with pytest.raises(ValueError, match="mean, weighted, last, original"):
        predict_song(net, _position_song(70), window=60, stride=1, stitch="median")
    with pytest.raises(ValueError, match="stride-1 rule"):
        predict_song(net, _position_song(70), window=60, stitch="original", stride=2)
    with pytest.raises(ValueError, match=r"expected \[T, 51, 128\]"):
        predict_song(net, torch.zeros(1, 70, 51, 128), window=60, stride=1, stitch="mean")
    with pytest.raises(ValueError, match="window=0"):
        predict_song(net, _position_song(70), window=0, stride=1, stitch="mean")
    with pytest.raises(TypeError, match="window"):  # no silent default window
        predict_song(net, _position_song(70), stride=1, stitch="mean")


def test_weighted_stitching_by_hand():
    """window 4 (weights 1, 2, 2, 1), windows at 0 and 2 of a 6-position song: positions 2 and 3 are covered
    by window 0 (slots 2, 3: weights 2, 1) and window 1 (slots 0, 1: weights 1, 2)."""
    torch.testing.assert_close(edge_weights(4), torch.tensor([1.0, 2.0, 2.0, 1.0]))
    torch.testing.assert_close(edge_weights(5), torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0]))
    outputs = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    stitched = stitch_windows(outputs, [0, 2], 6, "weighted", "arousal")
    expected = [1.0, 2.0, (2 * 3 + 1 * 10) / 3, (1 * 4 + 2 * 20) / 3, 30.0, 40.0]
    torch.testing.assert_close(stitched, torch.tensor(expected))
    mean = stitch_windows(outputs, [0, 2], 6, "mean", "arousal")
    torch.testing.assert_close(mean, torch.tensor([1.0, 2.0, 6.5, 12.0, 30.0, 40.0]))


class WindowSpy(PositionNet):
    """PositionNet that records the windows it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[torch.Tensor] = []

    def predict_windows(self, h, index, cache):
        self.windows.append(index)
        return super().predict_windows(h, index, cache)


def test_window_length_is_the_callers_and_progress_counts_window_batches():
    """A 20-segment model (PMEmo's clip length): 70 segments at stride 10 are windows 0, 10, ..., 50 of 20
    segments, in batches of 4; progress reports (done, total) after each batch."""
    net, calls = WindowSpy(), []
    arousal, _ = predict_song(
        net,
        _position_song(70),
        window=20,
        stride=10,
        stitch="mean",
        batch_size=4,
        progress=lambda done, total: calls.append((done, total)),
    )
    index = torch.cat(net.windows)
    assert index.shape == (6, 20) and index[:, 0].tolist() == [0, 10, 20, 30, 40, 50]
    assert calls == [(4, 6), (6, 6)]
    torch.testing.assert_close(arousal, torch.sin(torch.arange(70.0) / 7.0), rtol=0, atol=1e-6)
    calls.clear()
    predict_song(
        net, _position_song(15), window=20, stride=1, stitch="mean", progress=lambda *a: calls.append(a)
    )
    assert calls == [(1, 1)]  # shorter than a window: one forward
