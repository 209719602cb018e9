"""The per-segment spectrogram CNN (docs/method.md, "Network"): two conv blocks, then a 1x1 conv.

Each block is Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d(2, stride 2, padding 1) (`ConvBlock` of
`dsaml.models.conv_block`, PyTorch's modules: the original's computation); a [F=51, M=128] log-mel image
becomes 14 x 34 = 476 features. With `fused=True` the same function is computed by the kernels of
`dsaml.models.fused_cnn` (the default of the fast path: the blocks' full-resolution activations are never
written).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dsaml.models import fused_cnn
from dsaml.models.conv_block import ConvBlock


class SpectrogramEncoder(nn.Module):
    """Per-segment CNN: [N, F, M] log-mel images -> [N, out_features] (14 x 34 = 476 for 51 x 128).

    fused: compute the blocks with `dsaml.models.fused_cnn` (same function; used unless the input needs a
    gradient, which the fused kernels do not return)."""

    def __init__(self, n_frames: int = 51, n_mels: int = 128, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused
        self.blocks = nn.ModuleList([ConvBlock(1, 8, (3, 1), (2, 1)), ConvBlock(8, 16, (3, 3), (1, 1))])
        self.conv1x1 = nn.Conv2d(16, 1, 1)
        pooled = ConvBlock.pooled
        self.out_features = pooled(pooled(n_frames + 2)) * pooled(pooled(n_mels + 2))

    def forward(self, images: Tensor) -> Tensor:
        if not self.fused or images.requires_grad:  # the fused kernels return no input gradient
            x = images[:, None]
            for block in self.blocks:
                x = block(x)
            return self.conv1x1(x).flatten(1)
        with torch.autocast(images.device.type, enabled=False):  # float32: memory-bound, bf16 gains nothing
            first, second = self.blocks
            x = fused_cnn.first_block(first, images.float() if images.dtype == torch.bfloat16 else images)
            return self.conv1x1(fused_cnn.next_block(second, x)).flatten(1)
