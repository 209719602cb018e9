"""The data of a listener prior (`ListenerPrior`): what a checkpoint stores and `DSAMLNet.listener_prior`
holds. The method that estimates and uses it is `dsaml.meta.listener_prior`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

LAGS = (0, 2, 4)  # delays of the network's prediction among the features, in segments
SMOOTH = 5  # moving-average length of the body features, in segments


@dataclass
class ListenerPrior:
    """The prior over read-outs (see the module docstring), per dimension (arousal, valence).

    Args:
        mean (list[Tensor]): mu [P] per dimension.
        factor (list[Tensor]): L [P, R] per dimension (R = training raters - 1).
        noise (list[float]): s = sigma2 * tau per dimension, in squared label units.
        lags (tuple[int, ...]): the features' lags (see `design`).
        smooth (int): the features' smoothing (see `design`).
        raters (int): training raters it was estimated from.
    """

    mean: list[Tensor]
    factor: list[Tensor]
    noise: list[float]
    lags: tuple[int, ...] = LAGS
    smooth: int = SMOOTH
    raters: int = 0

    def to_dict(self) -> dict:
        """Plain lists and numbers (checkpoint hyper-parameters)."""
        return {
            "mean": [m.tolist() for m in self.mean],
            "factor": [f.tolist() for f in self.factor],
            "noise": list(self.noise),
            "lags": list(self.lags),
            "smooth": self.smooth,
            "raters": self.raters,
        }

    @classmethod
    def from_dict(cls, values: Mapping, width: int | None = None) -> ListenerPrior:
        """The inverse of `to_dict`; ValueError when the parts do not fit each other (or the body's
        `width` D, when given)."""
        prior = cls(
            [torch.tensor(m, dtype=torch.float64) for m in values["mean"]],
            [torch.tensor(f, dtype=torch.float64) for f in values["factor"]],
            [float(s) for s in values["noise"]],
            tuple(int(lag) for lag in values["lags"]),
            int(values["smooth"]),
            int(values.get("raters", 0)),
        )
        if width is not None:
            size = len(prior.lags) + width + 1
        else:
            size = len(prior.mean[0]) if prior.mean else 0
        fits = (
            len(prior.mean) == len(prior.factor) == len(prior.noise) == 2
            and all(m.shape == (size,) for m in prior.mean)
            and all(f.ndim == 2 and f.shape[0] == size for f in prior.factor)
            and all(s > 0 for s in prior.noise)
            and 0 in prior.lags
            and prior.smooth >= 1
        )
        if not fits:
            raise ValueError(
                f"expected 2 dimensions of mean [{size}], factor [{size}, R], noise > 0, lags with 0 and "
                f"smooth >= 1 (got lags {list(prior.lags)}, smooth {prior.smooth}, mean "
                f"{[tuple(m.shape) for m in prior.mean]})"
            )
        return prior
