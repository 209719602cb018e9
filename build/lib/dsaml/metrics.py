"""Per-sequence emotion-regression scores (spec section 3): CCC, PCC, RMSE over the time axis.

All functions take predictions and targets [..., T] and return one value per sequence [...]; they are
differentiable (the training loss is built from them). Reported metrics average them over sequences.

Relation to torchmetrics (checked against the spec, see tests/test_model_metrics.py):
- CCC: `torchmetrics.functional.concordance_corrcoef` uses the unbiased (n - 1) covariance and variances
  (a ratio of n - 1 terms, while the (mean_p - mean_y)^2 term carries no n - 1 factor), so it differs from
  the spec's population-statistics CCC; we keep ours.
- PCC: `torchmetrics.functional.pearson_corrcoef` has no 1e-8 in the denominator (and clamps/warns on
  constant inputs) so it differs for (near-)constant sequences; we keep ours (the original's epsilon).
- RMSE: identical to `torchmetrics.functional.mean_squared_error(squared=False)` per sequence; we use it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional import mean_squared_error

PCC_EPS = 1e-8
SCORE_NAMES = ("arousal_CCC", "arousal_PCC", "arousal_RMSE", "valence_CCC", "valence_PCC", "valence_RMSE")


def ccc(pred: Tensor, target: Tensor) -> Tensor:
    """CCC = 2 cov / (var_p + var_y + (mean_p - mean_y)^2), population statistics, no epsilon."""
    mp, my = pred.mean(-1, keepdim=True), target.mean(-1, keepdim=True)
    dp, dy = pred - mp, target - my
    cov = (dp * dy).mean(-1)
    return 2 * cov / (dp.square().mean(-1) + dy.square().mean(-1) + (mp - my).squeeze(-1).square())


def pcc(pred: Tensor, target: Tensor) -> Tensor:
    """Pearson correlation sum(dp dy) / (sqrt(sum dp^2) sqrt(sum dy^2) + 1e-8)."""
    dp, dy = pred - pred.mean(-1, keepdim=True), target - target.mean(-1, keepdim=True)
    return (dp * dy).sum(-1) / (dp.square().sum(-1).sqrt() * dy.square().sum(-1).sqrt() + PCC_EPS)


def rmse(pred: Tensor, target: Tensor) -> Tensor:
    """Root mean squared error over time, one value per sequence."""
    flat_p, flat_y = pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])
    n = flat_p.shape[0]
    per_seq = mean_squared_error(flat_p.t(), flat_y.t(), squared=False, num_outputs=n).reshape(n)
    return per_seq.view(pred.shape[:-1])


def sequence_scores(
    arousal_pred: Tensor, valence_pred: Tensor, arousal: Tensor, valence: Tensor
) -> dict[str, Tensor]:
    """The six per-sequence scores, each [...] (one value per sequence), keyed by `SCORE_NAMES`."""
    scores = {}
    for name, pred, target in (("arousal", arousal_pred, arousal), ("valence", valence_pred, valence)):
        if pred.shape != target.shape:
            raise ValueError(
                f"{name}: prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}"
            )
        scores[f"{name}_CCC"], scores[f"{name}_PCC"], scores[f"{name}_RMSE"] = (
            ccc(pred, target),
            pcc(pred, target),
            rmse(pred, target),
        )
    return scores


def average_score(scores: dict[str, Tensor]) -> Tensor:
    """Mean of {CCC_a, PCC_a, 1 - RMSE_a, CCC_v, PCC_v, 1 - RMSE_v}."""
    return sum((1 - scores[k]) if k.endswith("RMSE") else scores[k] for k in SCORE_NAMES) / len(SCORE_NAMES)


def summarize(
    arousal_pred: list[Tensor], valence_pred: list[Tensor], arousal: list[Tensor], valence: list[Tensor]
) -> dict[str, float]:
    """Reported metrics over sequences of any lengths (songs or song-rater pairs): each score per sequence,
    then averaged over sequences; plus "average" (spec section 3). Inputs: lists of [T_i] tensors."""
    if not arousal_pred:
        raise ValueError("summarize: no sequences to score")
    per_seq = [
        sequence_scores(*items) for items in zip(arousal_pred, valence_pred, arousal, valence, strict=True)
    ]
    result = {k: float(torch.stack([s[k] for s in per_seq]).double().mean()) for k in SCORE_NAMES}
    result["average"] = float(average_score({k: torch.tensor(v) for k, v in result.items()}))
    return result
