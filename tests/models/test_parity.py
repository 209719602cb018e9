"""Parity with the original implementation (reference vector), for the eager and the fast path."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from dsaml.inference import ORIGINAL_WINDOW, predict_song
from dsaml.losses import dsaml_loss
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.models.compat import (
    config_to_original,
    model_from_original,
    original_key_to_ours,
    state_dict_to_original,
)
from model_fixtures import assert_grads_close, load_reference

IMPLS = ["eager", "fast"]


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def _net(ref, impl):
    return model_from_original(ref["state_dict"], {**ref["config"], "impl": impl})


def _inputs(ref, key="inputs"):
    return ref[key]["log_mel_spectrogram"], ref[key]["global_imagebind_audio_embedding"]


def _grads_by_original_name(net, names):
    params = dict(net.named_parameters())
    return {name: params[original_key_to_ours(name)].grad for name in names}


@pytest.mark.parametrize("impl", IMPLS)
def test_eval_outputs_and_attention_maps(ref, impl):
    net = _net(ref, impl).eval()
    with torch.no_grad():
        out = net(*_inputs(ref), return_attention=True)
    torch.testing.assert_close(out["arousal"], ref["eval_arousal"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["valence"], ref["eval_valence"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["attention_maps"], ref["eval_attention_maps"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_train_loss_scores_and_gradients(ref, impl):
    net = _net(ref, impl).train()
    loss, scores = dsaml_loss(net(*_inputs(ref)), *ref["labels"])
    loss.backward()
    torch.testing.assert_close(loss, ref["train_loss"], rtol=1e-4, atol=0)
    for name, value in ref["train_score"].items():  # the original's names (arousal_CCC) are ours lower-cased
        assert scores[name.lower()].item() == pytest.approx(value, rel=1e-4, abs=1e-7), name
    assert_grads_close(_grads_by_original_name(net, ref["train_grads"]), ref["train_grads"])


# learn2learn's clone re-applies the LSTM's flat weights through Module._apply, which reads .grad of the
# cloned (non-leaf) parameters: a harmless torch warning
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("impl", IMPLS)
def test_first_order_maml_through_learn2learn(ref, impl):
    with contextlib.redirect_stderr(io.StringIO()):  # learn2learn's import prints a gym banner
        import learn2learn as l2l
    net = _net(ref, impl).train()
    x, g = _inputs(ref)
    arousal, valence = ref["labels"]
    learner = l2l.algorithms.MAML(net, lr=ref["maml_inner_lr"], first_order=True).clone()
    adapt_losses = []
    for _ in range(ref["maml_adapt_steps"]):
        loss, _ = dsaml_loss(learner(x[:1], g[:1]), arousal[:1], valence[:1])
        adapt_losses.append(loss.detach())
        learner.adapt(loss)
    query_loss, _ = dsaml_loss(learner(x[1:], g[1:]), arousal[1:], valence[1:])
    query_loss.backward()
    torch.testing.assert_close(torch.stack(adapt_losses), ref["maml_adapt_losses"], rtol=1e-4, atol=0)
    torch.testing.assert_close(query_loss.detach(), ref["maml_query_loss"], rtol=1e-4, atol=0)
    assert_grads_close(_grads_by_original_name(net, ref["maml_grads"]), ref["maml_grads"])


@pytest.mark.parametrize("impl", IMPLS)
def test_long_song_sliding_windows_with_original_stitching(ref, impl):
    x, g = _inputs(ref, "long_inputs")
    arousal, valence = predict_song(
        _net(ref, impl), x[0], g[0], window=ORIGINAL_WINDOW, stride=1, stitch="original"
    )
    torch.testing.assert_close(arousal, ref["long_arousal"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(valence, ref["long_valence"][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "shape",
    [
        dict(hidden_size=48, num_heads=3, num_layers=3, position="relative_key_query"),
        dict(hidden_size=32, num_heads=8, num_layers=1, max_positions=70),
    ],
)
def test_any_shape_parity_fast_vs_eager_through_original_key_names(shape):
    """Our weights -> original key names -> back: identical tensors; the fast path equals the eager path
    (the original's computation) on outputs, maps, loss and every gradient at other (D, H, L)."""
    cfg = DSAMLConfig(**shape, ffn_size=96, dropout=0.0, global_context="precomputed:imagebind")
    ours = DSAMLNet(cfg)
    for p in ours.parameters():  # non-trivial BatchNorm affine / biases
        p.data.normal_(0, 0.2) if p.ndim == 1 else None
    original = state_dict_to_original(ours)
    n_encoder = sum(k.startswith("multi_scale_attention.") for k in original)
    assert n_encoder == 3 * sum(
        k.startswith("encoder.") for k in ours.state_dict()
    )  # under all three prefixes
    assert all(
        k.startswith(
            (
                "multi_scale_attention.",
                "spectrogram_feature_extractor.",
                "fusion_model.",
                "sequence_predict_model.",
            )
        )
        for k in original
    )
    options = {**config_to_original(cfg), "ffn_size": cfg.ffn_size}  # the original always had 2048
    eager = model_from_original(original, {**options, "impl": "eager"})
    fast = model_from_original(original, {**options, "impl": "fast"})
    for key, value in ours.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key
    x = torch.randn(3, 45, 51, 128)
    g = torch.randn(3, 1, cfg.hidden_size)
    labels = torch.rand(3, 45), torch.rand(3, 45)
    results = []
    for net in (eager, fast):
        net.eval()
        with torch.no_grad():
            maps = net(x, g, return_attention=True)["attention_maps"]
        net.train()
        loss, _ = dsaml_loss(net(x, g), *labels)
        loss.backward()
        results.append((maps, loss, {k: p.grad for k, p in net.named_parameters()}))
    (maps_e, loss_e, grads_e), (maps_f, loss_f, grads_f) = results
    assert maps_e.shape == (3, 2 * cfg.num_layers, cfg.num_heads, 45, 45)
    torch.testing.assert_close(maps_f, maps_e, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=0)
    assert_grads_close(grads_f, grads_e)
