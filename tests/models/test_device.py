"""The CUDA-relevant checks, on the device named by DSAML_TEST_DEVICE (default: cuda when available, else the
module is skipped): float32 parity with the original on that device, the fused CNN against PyTorch's native
kernels there, and whole-song prediction there against the CPU. `make gpu-check` runs them on CUDA; its dry
mode (tests/e2e/test_gpu_check.py) runs them with DSAML_TEST_DEVICE=cpu, so they never rot."""

from __future__ import annotations

import os

import pytest
import torch

from dsaml.inference import ORIGINAL_WINDOW, predict_song
from dsaml.losses import dsaml_loss
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.models.compat import model_from_original
from dsaml.models.spectrogram import SpectrogramEncoder
from dsaml.training.smoke import TINY_MODEL
from model_fixtures import load_reference

DEVICE = os.environ.get("DSAML_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
if not DEVICE:
    pytest.skip(
        "no CUDA device (set DSAML_TEST_DEVICE to run these on another device)", allow_module_level=True
    )


@pytest.fixture(autouse=True)
def _exact_float32():
    """float32 means float32: no TF32 in matmuls or cuDNN convolutions while these tests run."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("impl", ["eager", "fast"])
def test_float32_parity_with_the_original_on_the_device(impl):
    ref = load_reference()
    net = model_from_original(ref["state_dict"], {**ref["config"], "impl": impl}).to(DEVICE)
    x, g = (ref["inputs"][k].to(DEVICE) for k in ("log_mel_spectrogram", "global_imagebind_audio_embedding"))
    with torch.no_grad():
        out = net.eval()(x, g, return_attention=True)
    torch.testing.assert_close(out["arousal"].cpu(), ref["eval_arousal"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["valence"].cpu(), ref["eval_valence"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["attention_maps"].cpu(), ref["eval_attention_maps"], rtol=0, atol=1e-5)
    long_x, long_g = (
        ref["long_inputs"][k] for k in ("log_mel_spectrogram", "global_imagebind_audio_embedding")
    )
    arousal, valence = predict_song(
        net, long_x[0].to(DEVICE), long_g[0].to(DEVICE), window=ORIGINAL_WINDOW, stride=1, stitch="original"
    )
    torch.testing.assert_close(arousal, ref["long_arousal"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(valence, ref["long_valence"][0], rtol=0, atol=1e-5)
    # last: a training-mode forward moves the BatchNorm running statistics the eval-mode checks use
    loss, _ = dsaml_loss(net.train()(x, g), *(label.to(DEVICE) for label in ref["labels"]))
    torch.testing.assert_close(loss.cpu(), ref["train_loss"], rtol=1e-4, atol=0)


def test_fused_cnn_equals_the_native_kernels_on_the_device():
    """Forward (train and eval mode) and input/weight gradients of the fused CNN against PyTorch's native
    conv / BatchNorm / pool on the device, float32, same weights."""
    torch.manual_seed(0)
    native = SpectrogramEncoder(51, 128, fused=False)
    for block in native.blocks:
        block.bn.weight.data.uniform_(-1.5, 1.5)
        block.bn.running_var.uniform_(0.5, 2)
    fused = SpectrogramEncoder(51, 128, fused=True)
    fused.load_state_dict(native.state_dict())
    native, fused = native.to(DEVICE), fused.to(DEVICE)
    x = (torch.randn(24, 51, 128) * 3 - 5).to(DEVICE)
    out_n, out_f = native.train()(x), fused.train()(x)
    scale = out_n.abs().max()
    assert (out_f - out_n).abs().max() <= 1e-5 * scale
    out_n.square().sum().backward()
    out_f.square().sum().backward()
    for block_n, block_f in zip(native.blocks, fused.blocks, strict=True):
        # measured against the block's largest gradient: a convolution bias before training-mode BatchNorm
        # has gradient 0 in exact arithmetic (the batch mean removes it), so it holds rounding only
        scale = max(p.grad.abs().max() for p in block_n.parameters())
        for (name, p_n), p_f in zip(block_n.named_parameters(), block_f.parameters(), strict=True):
            err = (p_f.grad - p_n.grad).abs().max()
            assert err <= 1e-3 * scale, (name, float(err), float(scale))
    with torch.no_grad():
        assert (fused.eval()(x) - native.eval()(x)).abs().max() <= 1e-5 * scale


def test_whole_song_prediction_on_the_device_equals_the_cpu():
    torch.manual_seed(0)
    net = DSAMLNet(DSAMLConfig(**TINY_MODEL)).eval()
    logmel = torch.randn(150, 51, 128) - 5
    expected = predict_song(net, logmel, window=60, stride=5, stitch="weighted")
    got = predict_song(net.to(DEVICE), logmel.to(DEVICE), window=60, stride=5, stitch="weighted")
    for ours, cpu in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, cpu, rtol=0, atol=1e-5)
