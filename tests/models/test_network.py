"""DSAMLNet: config validation, ablations (fast path == eager path), learned global context, input errors."""

from __future__ import annotations

import inspect

import pytest
import torch

from dsaml.data.vector_file import load_vector_file
from dsaml.losses import dsaml_loss
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.models.attention import DualScaleEncoder
from dsaml.models.global_context import LearnedGlobalContext
from dsaml.models.network import EmotionHead
from model_fixtures import assert_grads_close

# wider than TINY_MODEL on purpose: two layers and four heads exercise the layer stack and the head split
TINY = dict(hidden_size=32, num_heads=4, num_layers=2, ffn_size=64, dropout=0.0)


def test_config_defaults_are_the_papers_and_validation_names_allowed_values():
    cfg = DSAMLConfig()
    assert (cfg.hidden_size, cfg.num_heads, cfg.num_layers, cfg.ffn_size) == (1024, 16, 3, 2048)
    assert (cfg.local_radius, cfg.global_radius, cfg.max_positions, cfg.dropout) == (5, 30, 512, 0.1)
    assert DSAMLConfig(position="absolute").position == "none"  # the original's "absolute" = no positions
    with pytest.raises(ValueError, match="dual, local, global, full"):
        DSAMLConfig(attention="both")
    with pytest.raises(ValueError, match="precomputed:<name>"):
        DSAMLConfig(global_context="imagebind")
    with pytest.raises(ValueError, match="divisible by model.num_heads"):
        DSAMLConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match=r"model: unknown key\(s\) \['hiden_size'\]"):
        DSAMLConfig.from_dict({"hidden_size": 32, "hiden_size": 3})


def test_paper_parameter_count():
    cfg = DSAMLConfig(global_context="precomputed:imagebind")
    assert sum(p.numel() for p in DSAMLNet(cfg).parameters()) / 1e6 == pytest.approx(29.69, abs=0.005)


def test_blocks_take_named_arguments_and_fix_the_path_at_construction():
    """DSAMLNet builds its blocks from the config as a stand-alone block built with named arguments; the
    fast/eager choice is made once, when the blocks are built."""
    torch.manual_seed(2)
    net = DSAMLNet(DSAMLConfig(**TINY, attention="local", position="relative_key_query", impl="eager"))
    assert not net.spectrogram.fused and not net.encoder.fast
    assert not any(layer.attention.fast for layer in net.encoder.layers)
    encoder = DualScaleEncoder(
        hidden_size=32,
        num_heads=4,
        num_layers=2,
        ffn_size=64,
        dropout=0.0,
        position="relative_key_query",
        attention="local",
        fast=False,
    )
    encoder.load_state_dict(net.encoder.state_dict())  # the same parameters under the same names
    head = EmotionHead(hidden_size=32, dropout=0.0)
    head.load_state_dict(net.head.state_dict())
    h = torch.randn(2, 12, 32)
    ours = net.predict_encoded(h.clone())
    theirs = encoder(h, return_diagonal=True)
    torch.testing.assert_close(ours["attention_diagonal"], theirs["attention_diagonal"], rtol=0, atol=0)
    torch.testing.assert_close(ours["arousal"], head(theirs["encoded"])[..., 0], rtol=0, atol=0)
    assert encoder.radii == (5,)
    paper = DSAMLConfig()  # the blocks' defaults are the paper's, as the config's
    for block in (DualScaleEncoder, EmotionHead):
        for name, parameter in inspect.signature(block).parameters.items():
            if name != "fast":
                assert parameter.default == getattr(paper, name), (block.__name__, name)


@pytest.mark.parametrize(
    "options",
    [
        dict(attention="local"),
        dict(attention="global"),
        dict(attention="full"),
        dict(position="none"),
        dict(position="relative_key_query", attention="global"),
        dict(fusion=False),
        dict(global_context="none"),
        dict(global_context="learned"),
        dict(global_context="precomputed:clap", global_dim=24),
    ],
)
def test_ablations_fast_path_equals_eager_path(options):
    cfg = {**TINY, "global_context": "precomputed:x", **options}
    torch.manual_seed(1)
    eager = DSAMLNet(DSAMLConfig(**cfg, impl="eager"))
    fast = DSAMLNet(DSAMLConfig(**cfg, impl="fast"))
    fast.load_state_dict(eager.state_dict())
    net_cfg = fast.cfg
    x = torch.randn(2, 20, 51, 128)
    g = torch.randn(2, 20, net_cfg.global_input_dim) if net_cfg.global_store_name else None
    labels = torch.rand(2, 20), torch.rand(2, 20)
    outs = []
    for net in (eager, fast):
        out = net(x, g, return_attention=True)
        loss, _ = dsaml_loss(out, *labels)
        loss.backward()
        outs.append((out, loss, {k: p.grad for k, p in net.named_parameters()}))
    (oe, le, ge), (of, lf, gf) = outs
    assert of["attention_maps"].shape == (2, net_cfg.passes * 2, 4, 20, 20)
    assert of["attention_diagonal"].shape == (2, 2, 20)
    for key in ("arousal", "valence", "attention_maps", "attention_diagonal"):
        torch.testing.assert_close(of[key], oe[key], rtol=0, atol=1e-5)
    torch.testing.assert_close(lf, le, rtol=1e-5, atol=0)
    assert_grads_close(gf, ge)


def test_band_masks_confine_attention():
    net = DSAMLNet(DSAMLConfig(**TINY, global_context="none")).eval()
    maps = net(torch.randn(1, 70, 51, 128), return_attention=True)["attention_maps"][0]  # [2L, H, T, T]
    dist = (torch.arange(70)[:, None] - torch.arange(70)[None]).abs()
    assert maps[:2, :, dist > 5].max() == 0 and maps[2:, :, dist > 30].max() == 0
    assert maps[2:, :, (dist > 5) & (dist <= 30)].min() > 0


def test_eval_fast_cnn_with_trained_batchnorm_equals_eager():
    torch.manual_seed(2)
    eager = DSAMLNet(DSAMLConfig(**TINY, global_context="none", impl="eager"))
    for block in eager.spectrogram.blocks:  # negative and positive gammas, non-trivial running statistics
        block.bn.weight.data.uniform_(-1, 1)
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
    fast = DSAMLNet(DSAMLConfig(**TINY, global_context="none", impl="fast"))
    fast.load_state_dict(eager.state_dict())
    x = torch.randn(2, 8, 51, 128) * 3
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x)["arousal"], eager.eval()(x)["arousal"], rtol=0, atol=1e-5)


def test_learned_context_song_windows_equal_direct_recomputation():
    torch.manual_seed(3)
    context = LearnedGlobalContext(n_mels=128, hidden_size=16, window=60)
    logmel = torch.randn(1, 150, 51, 128) * 2 + 1
    song = context.song(logmel)  # running sums
    assert song.shape == (1, 150, 16)
    for i in (0, 10, 29, 30, 75, 119, 120, 149):  # window of segment i: i - 30 .. i + 29 clipped to the song
        direct = context.clip(logmel[:, max(0, i - 30) : min(150, i + 30)])[:, 0]
        torch.testing.assert_close(song[:, i], direct, rtol=1e-4, atol=1e-5)
    clip = logmel[:, :60]  # a 60-segment clip: the per-clip vector equals the middle segment's window
    torch.testing.assert_close(context.clip(clip)[:, 0], context.song(clip)[:, 30], rtol=1e-4, atol=1e-5)


def test_inputs_are_checked_with_clear_errors():
    net = DSAMLNet(DSAMLConfig(**TINY, global_context="precomputed:imagebind"))
    with pytest.raises(ValueError, match=r"expected \[B, T, 51, 128\]"):
        net(torch.randn(2, 10, 128, 51), torch.randn(2, 1, 32))
    with pytest.raises(ValueError, match="needs the global vectors 'imagebind'"):
        net(torch.randn(2, 10, 51, 128))
    with pytest.raises(ValueError, match=r"expected \[2, 1 or 10, 32\]"):
        net(torch.randn(2, 10, 51, 128), torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match="takes no global vectors"):
        DSAMLNet(DSAMLConfig(**TINY))(torch.randn(1, 4, 51, 128), torch.randn(1, 1, 32))
    with pytest.raises(ValueError, match="max_positions=16"):
        DSAMLNet(DSAMLConfig(**{**TINY, "max_positions": 16}, global_context="none"))(
            torch.randn(1, 20, 51, 128)
        )


def test_import_global_vectors_from_npz_and_h5(tmp_path):
    import h5py
    import numpy as np

    vectors = {"1001": np.arange(8, dtype=np.float32), "2001": np.ones((5, 8), dtype=np.float32)}
    np.savez(tmp_path / "g.npz", **vectors)
    with h5py.File(tmp_path / "g.h5", "w") as handle:
        for key, value in vectors.items():
            handle[key] = value
    for name in ("g.npz", "g.h5"):
        loaded = load_vector_file(tmp_path / name)
        assert loaded["1001"].shape == (1, 8) and loaded["2001"].shape == (5, 8)
        np.testing.assert_array_equal(loaded["1001"][0], vectors["1001"])
    with pytest.raises(ValueError, match="expected a .npz, .h5 or .hdf5"):
        (tmp_path / "g.txt").write_text("x")
        load_vector_file(tmp_path / "g.txt")
