"""Fused kernels of the spectrogram CNN (`cnn_kernel: fused`): the function of the native blocks
(`dsaml.models.conv_block.ConvBlock`), computed with fewer passes over memory.

Two conv blocks, Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d(2, stride 2, padding 1), then a 1x1 conv to one
channel: a [F=51, M=128] log-mel image becomes 14 x 34 = 476 features. At a training batch (15 clips x 60
segments = 900 images) the blocks' full-resolution activations (200 MB and 100 MB) make the CNN cost more
than the transformer when run op by op (the original's computation: `impl: eager`, or `cnn_kernel: native`).
`cnn_kernel: fused` (the default of `impl: fast`) computes the same function with fewer passes over memory:

- block 1 (one input channel, kernel (3, 1)): the conv output is a linear function of 3 row-shifted copies of
  the input, so BatchNorm's batch mean and variance follow from the input's first and second moments (a 3 x 3
  covariance), BatchNorm folds into the conv weights, and the pooled output is the maximum over the 4
  positions of each pooling window, each a small matmul on a phase-decomposed copy of the input, computed in
  cache-sized chunks: the full-resolution activation is never written (`_PooledTapConv`).
- block 2: channels-last convolution, then BatchNorm (batch statistics) + ReLU + max-pooling as one autograd
  function whose backward is BatchNorm's closed form plus one scatter of the pooled gradient
  (`_BatchNormReluPool`); in eval mode BatchNorm folds into the conv and the pooling comes first.

Both keep BatchNorm's running-statistics update. Measured by experiments/benchmarks/bench_model.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsaml.models.conv_block import ConvBlock

CHUNK_ELEMENTS = 1 << 20  # pre-pooling values per CPU chunk of `_PooledTapConv` (4 MiB: stays in cache)


def first_block(block: ConvBlock, images: Tensor) -> Tensor:
    """Block 1 (one input channel, kernel (kh, 1)) on images [N, F, M] -> [N, C, Hp, Wp] channels-last,
    without writing the full-resolution activation (module docstring)."""
    kh, (ph, pw) = block.conv.kernel_size[0], block.conv.padding
    n, f, m = images.shape
    ho, wo = f + 2 * ph - kh + 1, m + 2 * pw  # conv output size
    hp, wp = block.pooled(ho), block.pooled(wo)
    phases = _phases(images, kh, ph, pw, hp, wp)
    w = block.conv.weight[:, 0, :, 0]  # [C, kh]
    bn = block.bn
    if uses_batch_statistics(bn):
        mean, var = _batch_moments(block, images, w, ho, wo)
        _update_running_stats(bn, mean.detach(), var.detach(), n * ho * wo)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = bn.weight / torch.sqrt(var + bn.eps)
    bias = (block.conv.bias - mean) * scale + bn.bias
    weights = _window_weights(w * scale[:, None], kh)
    invalid = _invalid(ho, wo, hp, wp, images.device)
    out = _PooledTapConv.apply(phases, weights, bias, invalid)
    return _channels_last(out.view(-1, out.shape[-1]), n, hp, wp)


def next_block(block: ConvBlock, x: Tensor) -> Tensor:
    """A later block (block 2) on x [N, C, H, W] channels-last: batch statistics in training, folded running
    statistics in eval mode -> [N, C', Hp, Wp]."""
    return _block_train(block, x) if uses_batch_statistics(block.bn) else _block_eval(block, x)


def uses_batch_statistics(bn: nn.BatchNorm2d) -> bool:
    return bn.training or bn.running_mean is None


def _rows(t: Tensor) -> Tensor:
    """[N, C, H, W] -> [N * H * W, C] (a view when t is channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _channels_last(rows: Tensor, n: int, h: int, w: int) -> Tensor:
    """[N * H * W, C] -> [N, C, H, W] with channels-last memory (a view)."""
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


def _update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What BatchNorm2d does in training mode with batch mean and biased variance over `count` values."""
    if not bn.track_running_stats or bn.running_mean is None:
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
        unbiased = var * (count / max(count - 1, 1))
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)


def _block_eval(block: ConvBlock, x: Tensor) -> Tensor:
    """Eval mode with the normalisation and ReLU after the pooling: per channel, eval BatchNorm is an affine
    map a y + b, and max-pooling commutes with ReLU and with increasing affine maps, so pool(relu(a y + b)) =
    relu(|a| pool(s y) + b) with s = sign(gamma) folded into the convolution: the full-size tensor is written
    once instead of three times."""
    bn = block.bn
    sign = torch.where(bn.weight >= 0, 1.0, -1.0).to(x.dtype)
    y = F.conv2d(
        x, block.conv.weight * sign[:, None, None, None], block.conv.bias * sign, padding=block.conv.padding
    )
    scale = bn.weight * sign / torch.sqrt(bn.running_var + bn.eps)  # |a| >= 0
    shift = bn.bias - bn.running_mean * sign * scale
    return torch.relu(block.pool(y) * scale[:, None, None] + shift[:, None, None])


def _block_train(block: ConvBlock, x: Tensor) -> Tensor:
    """Training mode (batch statistics), x channels-last -> channels-last output."""
    y = block.conv(x.contiguous(memory_format=torch.channels_last))
    out, mean, var = _BatchNormReluPool.apply(y, block.bn.weight, block.bn.bias, block.bn.eps)
    _update_running_stats(block.bn, mean, var, y.shape[0] * y.shape[2] * y.shape[3])
    return out


class _BatchNormReluPool(torch.autograd.Function):
    """relu(max_pool2d(batch_norm(y, batch statistics), 2, 2, 1)) for y [N, C, H, W] (channels-last).

    forward(y, gamma [C], beta [C], eps) -> (out [N, C, Hp, Wp] channels-last, mean [C], biased var [C]);
    mean and var are returned for the running-statistics update and carry no gradient. Backward: with
    g_x = gamma / std * g at the pooled maxima (zero elsewhere), BatchNorm's input gradient is
    gamma / std * (g_x' - mean(g_x') - xhat mean(g_x' xhat)), whose dense part is an affine function of y per
    channel (one pass) plus a scatter of the pooled gradient onto the maxima.
    """

    @staticmethod
    def forward(ctx, y: Tensor, gamma: Tensor, beta: Tensor, eps: float):  # type: ignore[override]
        rows = _rows(y)
        count = rows.shape[0]
        mean = rows.sum(0) / count  # PyTorch's cascade summation: ~1e-7 relative even over millions of values
        var = (rows - mean).pow_(2).sum(0) / count
        inv_std = torch.rsqrt(var + eps)
        negative = gamma < 0
        flip = bool(negative.any())
        sign = torch.where(negative, -1.0, 1.0).to(y.dtype)
        # max-pool commutes with increasing maps: pool s * y with s = sign(gamma), then normalise
        pooled, index = F.max_pool2d(y * sign[:, None, None] if flip else y, 2, 2, 1, return_indices=True)
        xhat = ((_rows(pooled) * sign if flip else _rows(pooled)) - mean) * inv_std  # [N * Hp * Wp, C]
        out = torch.relu(xhat * gamma + beta)
        ctx.save_for_backward(y, index, xhat, out, gamma, mean, inv_std)
        n, _, hp, wp = pooled.shape
        return _channels_last(out, n, hp, wp), mean, var

    @staticmethod
    def backward(ctx, grad: Tensor, _mean_grad: Tensor, _var_grad: Tensor):  # type: ignore[override]
        y, index, xhat, out, gamma, mean, inv_std = ctx.saved_tensors
        n, c, h, w = y.shape
        count = n * h * w
        g = torch.where(out > 0, _rows(grad), 0.0)
        grad_beta = g.sum(0)
        grad_gamma = (g * xhat).sum(0)
        k = gamma * inv_std
        slope = -k * grad_gamma * inv_std / count  # dense part: slope * (y - mean) - k * grad_beta / count
        grad_y = torch.addcmul(-k * grad_beta / count, _rows(y) - mean, slope)
        grad_y.view(n, h * w, c).scatter_add_(1, _rows(index).view(n, -1, c), (g * k).view(n, -1, c))
        return _channels_last(grad_y, n, h, w), grad_gamma, grad_beta, None


class _PooledTapConv(torch.autograd.Function):
    """max over the 4 positions of each pooling window of z_o = phases @ weights[o], then + bias, ReLU.

    forward(phases [N, P, R], weights [4, R, C], bias [C], invalid: 4 index tensors) -> [N, P, C]: weights[o]
    gives the pre-pooling value at window position o; invalid[o] lists the windows P whose position o lies
    outside the conv output (max-pool padding), excluded from the maximum. Chunked over N so that the values
    stay in cache. The backward recomputes z_o chunk by chunk and sends each window's gradient to the first
    position equal to the maximum (max_pool2d's choice on ties); it returns gradients for weights and bias
    only (the input is data). Masks are made with float arithmetic: PyTorch's boolean CPU kernels are 5-30x
    slower.
    """

    @staticmethod
    def forward(ctx, phases: Tensor, weights: Tensor, bias: Tensor, invalid: tuple[Tensor, ...]):  # type: ignore[override]
        n, p, _ = phases.shape
        best = phases.new_empty(n, p, bias.shape[0])  # max over the window, before the bias
        step = _chunk(phases, bias.shape[0])
        for s in range(0, n, step):
            peak = best[s : s + step]
            for o in range(4):
                z = _window_values(phases[s : s + step], weights, invalid, o)
                if o == 0:
                    peak.copy_(z)
                else:
                    torch.maximum(peak, z, out=peak)
        ctx.invalid = invalid
        ctx.save_for_backward(phases, weights, bias, best)
        return torch.relu(best + bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        phases, weights, bias, best = ctx.saved_tensors
        n, p, c = best.shape
        r = phases.shape[2]
        grad = grad.reshape(n, p, c)
        grad_weights = torch.zeros_like(weights)
        grad_bias = phases.new_zeros(c)
        step = _chunk(phases, c)
        for s in range(0, n, step):
            chunk = phases[s : s + step]
            peak = best[s : s + step]
            remaining = grad[s : s + step] * torch.sign(torch.relu(peak + bias))  # ReLU gate
            grad_bias += remaining.sum(dim=(0, 1))
            rows = chunk.reshape(-1, r).t()
            for o in range(4):
                z = _window_values(chunk, weights, ctx.invalid, o)
                taken = remaining * (1.0 - torch.sign(peak - z))  # where z_o is the maximum
                grad_weights[o] += rows @ taken.view(-1, c)
                remaining = remaining - taken
        return None, grad_weights, grad_bias, None


def _chunk(phases: Tensor, c: int) -> int:
    """Images per chunk: cache-sized on CPU; on accelerators the whole batch (fewer, larger kernels)."""
    n, p, _ = phases.shape
    return max(1, CHUNK_ELEMENTS // (p * c)) if phases.device.type == "cpu" else n


def _window_values(phases: Tensor, weights: Tensor, invalid: tuple[Tensor, ...], o: int) -> Tensor:
    """[n, P, C] pre-pooling values at window position o, -inf where it lies in the pooling padding."""
    return torch.matmul(phases, weights[o]).index_fill_(1, invalid[o], float("-inf"))


def _phases(images: Tensor, kh: int, ph: int, pw: int, hp: int, wp: int) -> Tensor:
    """[N, F, M] -> [N, Hp * Wp, 2 (kh + 1)]: entry (i, j, 2 a + b) = input row 2 i + a - ph - 1, column
    2 j + b - pw - 1 (zero outside): every tap of every pooling-window position is one of these phases."""
    n, f, m = images.shape
    rows, cols = 2 * hp + kh - 1, 2 * wp
    padded = F.pad(images, (pw + 1, cols - m - pw - 1, ph + 1, rows - f - ph - 1))
    views = [padded[:, a : a + 2 * hp : 2, b : b + 2 * wp : 2] for a in range(kh + 1) for b in range(2)]
    return torch.stack(views, dim=-1).view(n, hp * wp, 2 * (kh + 1))


def _window_weights(w: Tensor, kh: int) -> Tensor:
    """w [C, kh] -> [4, 2 (kh + 1), C]: window position o = 2 dr + dc reads phase 2 (dr + k) + dc with
    weight w[:, k]."""
    zero = torch.zeros_like(w[:, 0])
    positions = []
    for dr in range(2):
        for dc in range(2):
            taps = {2 * (dr + k) + dc: w[:, k] for k in range(kh)}
            positions.append(torch.stack([taps.get(r, zero) for r in range(2 * (kh + 1))]))
    return torch.stack(positions)


def _invalid(ho: int, wo: int, hp: int, wp: int, device: torch.device) -> tuple[Tensor, ...]:
    """Per window position o = 2 dr + dc: the flat windows (i Wp + j) where that position lies in the
    pooling padding (row 2 i + dr - 1 outside [0, ho) or column 2 j + dc - 1 outside [0, wo))."""
    i = torch.arange(hp, device=device)[:, None]
    j = torch.arange(wp, device=device)[None, :]
    return tuple(
        (
            ((2 * i + dr - 1) < 0)
            | ((2 * i + dr - 1) >= ho)
            | ((2 * j + dc - 1) < 0)
            | ((2 * j + dc - 1) >= wo)
        )
        .flatten()
        .nonzero()
        .flatten()
        for dr in range(2)
        for dc in range(2)
    )


def _batch_moments(block: ConvBlock, images: Tensor, w: Tensor, ho: int, wo: int) -> tuple[Tensor, Tensor]:
    """BatchNorm's batch mean and biased variance of the conv output per channel, from the input's
    moments: the output at a position is b + w . t with t the kh row-shifted input values (zero in the
    padding). Moments are accumulated in float64; the result is differentiable in the conv parameters."""
    kh, ph = w.shape[1], block.conv.padding[0]
    f = images.shape[1]
    count = images.shape[0] * ho * wo
    with torch.no_grad():
        # lag[d][r] = sum over images and columns of x[r] x[r + d], padded to rows of the padded input
        row_sums = F.pad(images.sum(dim=(0, 2), dtype=torch.float64), (ph, ph))
        lags = [
            F.pad((images[:, : f - d] * images[:, d:]).sum(dim=(0, 2), dtype=torch.float64), (ph, ph))
            for d in range(kh)
        ]
        first = torch.stack([row_sums[k : k + ho].sum() for k in range(kh)]) / count
        second = (
            torch.stack(
                [
                    torch.stack([lags[abs(k - q)][min(k, q) : min(k, q) + ho].sum() for q in range(kh)])
                    for k in range(kh)
                ]
            )
            / count
        )
        covariance = second - first[:, None] * first[None, :]
    wd = w.double()
    mean = wd @ first + block.conv.bias.double()
    var = torch.einsum("ck,kl,cl->c", wd, covariance, wd)
    return mean.to(w.dtype), var.to(w.dtype)
