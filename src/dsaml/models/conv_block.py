"""One block of the spectrogram CNN, PyTorch's modules (the original's computation).

`dsaml.models.spectrogram` builds the CNN from these blocks; `dsaml.models.fused_cnn` computes the same
function from a block's parameters. Both import this module, so neither imports the other's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d(2, stride 2, padding 1) on [N, C, H, W] (the original's)."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], padding: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=padding)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool = nn.MaxPool2d(2, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))

    @staticmethod
    def pooled(size: int) -> int:
        """Length after the block's MaxPool2d(kernel 2, stride 2, padding 1)."""
        return size // 2 + 1
