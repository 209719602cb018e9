"""The fused spectrogram CNN (`cnn_kernel: fused`) computes the same function as PyTorch's conv / BatchNorm /
pool modules (the original's computation): exactly in float64, to float32 rounding in float32."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dsaml.losses import dsaml_loss
from dsaml.models import DSAMLConfig
from dsaml.models.compat import model_from_original, original_key_to_ours
from dsaml.models.spectrogram import SpectrogramEncoder
from model_fixtures import load_reference


def _encoders(dtype: torch.dtype, seed: int = 0) -> tuple[SpectrogramEncoder, SpectrogramEncoder]:
    """(native, fused) with the same random weights: negative and positive gammas, non-trivial statistics."""
    torch.manual_seed(seed)
    native = SpectrogramEncoder(51, 128, fused=False)
    for block in native.blocks:
        block.bn.weight.data.uniform_(-1.5, 1.5)
        block.bn.bias.data.uniform_(-0.5, 0.5)
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
    fused = SpectrogramEncoder(51, 128, fused=True)
    fused.load_state_dict(native.state_dict())
    return native.to(dtype), fused.to(dtype)


def _logmel_like(n: int, dtype: torch.dtype) -> torch.Tensor:
    """[n, 51, 128] log-mel-like images (mean about -5) with digital silence (log 1e-6, exact ties in every
    pooling window) in some images' leading frames."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 51, 128, generator=gen, dtype=torch.float64) * 3 - 5
    x[::3, :12] = math.log(1e-6)
    return x.to(dtype)


@pytest.mark.parametrize("n", [1, 7, 40])
def test_fused_equals_native_exactly_in_float64(n):
    native, fused = _encoders(torch.float64)
    x = _logmel_like(n, torch.float64)
    weight = torch.randn(n, 476, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outputs = []
    for net in (native, fused):
        out = net.train()(x)
        (out * weight).sum().backward()
        outputs.append((out, {k: p.grad for k, p in net.named_parameters()}, copy.deepcopy(net.state_dict())))
    (out_n, grad_n, state_n), (out_f, grad_f, state_f) = outputs
    torch.testing.assert_close(out_f, out_n, rtol=0, atol=1e-11)
    for name, g in grad_n.items():
        torch.testing.assert_close(grad_f[name], g, rtol=1e-9, atol=1e-11, msg=name)
    for name, value in state_n.items():  # BatchNorm running statistics and batch counters
        torch.testing.assert_close(state_f[name], value, rtol=1e-12, atol=1e-12, msg=name)
    with torch.no_grad():  # eval mode: the running statistics, folded into the convolutions
        torch.testing.assert_close(fused.eval()(x), native.eval()(x), rtol=0, atol=1e-11)


def test_fused_float32_matches_native_to_rounding():
    native, fused = _encoders(torch.float32, seed=3)
    x = _logmel_like(30, torch.float32)
    out_n, out_f = native.train()(x), fused.train()(x)
    assert (out_f - out_n).abs().max() <= 1e-5 * out_n.abs().max()
    with torch.no_grad():
        assert (fused.eval()(x) - native.eval()(x)).abs().max() <= 1e-5 * out_n.abs().max()


def test_fused_keeps_input_gradients_by_falling_back():
    native, fused = _encoders(torch.float64)
    x = _logmel_like(4, torch.float64).requires_grad_()
    (grad_n,) = torch.autograd.grad(native.train()(x).sum(), x)
    (grad_f,) = torch.autograd.grad(fused.train()(x).sum(), x)
    torch.testing.assert_close(grad_f, grad_n, rtol=1e-9, atol=1e-11)


def test_fused_network_against_the_reference_vector():
    """The whole network with the fused CNN on the reference vector: outputs and loss as the original's;
    gradients of the non-CNN parameters within 1e-4 of the original's. The CNN's BatchNorm-conditioned
    gradients differ from the original's float32 values by float32 rounding only, so they are measured against
    the same computation in float64 ("exact"): the original's own float32 values are up to 2.9e-3 (relative to
    the largest entry) off it (first BatchNorm bias); ours must be within twice that error, or 1e-3."""
    ref = load_reference()
    inputs = (ref["inputs"]["log_mel_spectrogram"], ref["inputs"]["global_imagebind_audio_embedding"])

    def run(dtype: torch.dtype, kernel: str):
        net = model_from_original(ref["state_dict"], {**ref["config"], "cnn_kernel": kernel}).to(dtype)
        out = net.train()(*(t.to(dtype) for t in inputs))
        loss, _ = dsaml_loss(out, *(label.to(dtype) for label in ref["labels"]))
        loss.backward()
        return net, loss, {k: p.grad for k, p in net.named_parameters()}

    net, loss, grads = run(torch.float32, "fused")
    assert net.spectrogram.fused
    torch.testing.assert_close(loss, ref["train_loss"], rtol=1e-4, atol=0)
    _, _, exact = run(torch.float64, "native")
    for original_name, reference in ref["train_grads"].items():
        name = original_key_to_ours(original_name)
        truth, bound = reference.double(), 1e-4
        if name.startswith("spectrogram."):
            truth = exact[name].double()
            bound = max(2 * (reference.double() - truth).abs().max().item() / truth.abs().max().item(), 1e-3)
        err = (grads[name].double() - truth).abs().max().item()
        assert err <= bound * truth.abs().max().item() + 1e-6, (name, err)
    fresh = model_from_original(ref["state_dict"], {**ref["config"], "cnn_kernel": "fused"})
    with torch.no_grad():  # the training step above moved `net`'s running statistics
        out = fresh.eval()(*inputs)
    torch.testing.assert_close(out["arousal"], ref["eval_arousal"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["valence"], ref["eval_valence"], rtol=0, atol=1e-5)


def test_cnn_kernel_is_validated():
    with pytest.raises(ValueError, match="cnn_kernel='cudnn' is not one of fused, native"):
        DSAMLConfig(cnn_kernel="cudnn")
