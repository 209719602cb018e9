"""Per-sequence emotion-regression scores (docs/method.md, "Loss and metrics"): CCC, PCC, RMSE over time.

All functions take predictions and targets [..., T] and return one value per sequence [...]; they are
differentiable (the training loss is built from them). Reported metrics average them over sequences.
`METRIC_KEYS` is the one tuple of score names (logged, written to results.json, printed); `scores_of`
scores one sequence as plain floats (the evaluation protocols, dsaml-personalize).

Relation to torchmetrics (checked against docs/method.md, see tests/test_metrics.py):
- CCC: `torchmetrics.functional.concordance_corrcoef` uses the unbiased (n - 1) covariance and variances
  (a ratio of n - 1 terms, while the (mean_p - mean_y)^2 term carries no n - 1 factor), so it differs from
  the population-statistics CCC of docs/method.md; we keep ours.
- PCC: `torchmetrics.functional.pearson_corrcoef` has no 1e-8 in the denominator (and clamps/warns on
  constant inputs) so it differs for (near-)constant sequences; we keep ours (the original's epsilon).
- RMSE: identical to `torchmetrics.functional.mean_squared_error(squared=False)` per sequence; we use it.
"""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional import mean_squared_error

PCC_EPS = 1e-8
METRIC_KEYS = ("arousal_ccc", "arousal_pcc", "arousal_rmse", "valence_ccc", "valence_pcc", "valence_rmse")
REPORTED = METRIC_KEYS + ("average",)  # what is logged and written per protocol


def ccc(pred: Tensor, target: Tensor) -> Tensor:
    """Concordance correlation over time: 2 cov / (var_p + var_y + (mean_p - mean_y)^2).

    Population statistics (divided by T), no epsilon (NaN for two constant, equal sequences).

    Args:
        pred (Tensor): predictions [..., T].
        target (Tensor): targets [..., T].

    Returns:
        Tensor: [...] one CCC per sequence.
    """
    mp, my = pred.mean(-1, keepdim=True), target.mean(-1, keepdim=True)
    dp, dy = pred - mp, target - my
    cov = (dp * dy).mean(-1)
    return 2 * cov / (dp.square().mean(-1) + dy.square().mean(-1) + (mp - my).squeeze(-1).square())


def pcc(pred: Tensor, target: Tensor) -> Tensor:
    """Pearson correlation over time: sum(dp dy) / (sqrt(sum dp^2) sqrt(sum dy^2) + 1e-8).

    dp, dy: deviations from each sequence's mean; the epsilon (PCC_EPS) makes a constant sequence score 0.

    Args:
        pred (Tensor): predictions [..., T].
        target (Tensor): targets [..., T].

    Returns:
        Tensor: [...] one PCC per sequence.
    """
    dp, dy = pred - pred.mean(-1, keepdim=True), target - target.mean(-1, keepdim=True)
    return (dp * dy).sum(-1) / (dp.square().sum(-1).sqrt() * dy.square().sum(-1).sqrt() + PCC_EPS)


def rmse(pred: Tensor, target: Tensor) -> Tensor:
    """Root mean squared error over time.

    Args:
        pred (Tensor): predictions [..., T].
        target (Tensor): targets [..., T], the same shape.

    Returns:
        Tensor: [...] one RMSE per sequence (in label units).
    """
    flat_p, flat_y = pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])
    n = flat_p.shape[0]
    per_seq = mean_squared_error(flat_p.t(), flat_y.t(), squared=False, num_outputs=n).reshape(n)
    return per_seq.view(pred.shape[:-1])


def sequence_scores(
    arousal_pred: Tensor, valence_pred: Tensor, arousal: Tensor, valence: Tensor
) -> dict[str, Tensor]:
    """The six per-sequence scores of both dimensions.

    Args:
        arousal_pred (Tensor): predicted arousal [..., T].
        valence_pred (Tensor): predicted valence [..., T].
        arousal (Tensor): arousal labels, the shape of arousal_pred.
        valence (Tensor): valence labels, the shape of valence_pred.

    Returns:
        dict[str, Tensor]: CCC, PCC and RMSE of each dimension, keyed by `METRIC_KEYS`, each [...] (one
        value per sequence).

    Raises:
        ValueError: a prediction's shape differs from its labels'.
    """
    scores = {}
    for name, pred, target in (("arousal", arousal_pred, arousal), ("valence", valence_pred, valence)):
        if pred.shape != target.shape:
            raise ValueError(
                f"{name}: prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}"
            )
        scores[f"{name}_ccc"], scores[f"{name}_pcc"], scores[f"{name}_rmse"] = (
            ccc(pred, target),
            pcc(pred, target),
            rmse(pred, target),
        )
    return scores


def average_score(scores: dict[str, Tensor]) -> Tensor:
    """The average score: mean of {CCC_a, PCC_a, 1 - RMSE_a, CCC_v, PCC_v, 1 - RMSE_v}.

    Args:
        scores (dict[str, Tensor]): at least the `METRIC_KEYS`, each [...] (e.g. `sequence_scores`).

    Returns:
        Tensor: [...] the average, elementwise.
    """
    return sum((1 - scores[k]) if k.endswith("rmse") else scores[k] for k in METRIC_KEYS) / len(METRIC_KEYS)


def scores_of(
    arousal_pred: Tensor, valence_pred: Tensor, arousal: Tensor, valence: Tensor
) -> dict[str, float]:
    """Scores of one sequence as floats (computed in float32).

    Args:
        arousal_pred (Tensor): predicted arousal [T].
        valence_pred (Tensor): predicted valence [T].
        arousal (Tensor): arousal labels [T].
        valence (Tensor): valence labels [T].

    Returns:
        dict[str, float]: `METRIC_KEYS` plus "average" (the `REPORTED` keys).

    Raises:
        ValueError: a prediction's shape differs from its labels'.
    """
    raw = sequence_scores(arousal_pred.float(), valence_pred.float(), arousal.float(), valence.float())
    out = {key: float(value) for key, value in raw.items()}
    out["average"] = float(average_score(raw))
    return out


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of per-sequence scores over sequences.

    Args:
        rows (list[dict[str, float]]): one row per sequence with at least the `REPORTED` keys
            (`scores_of`).

    Returns:
        dict[str, float]: the mean of each `REPORTED` key, plus "n" (the number of rows, an int).

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("mean_scores: no sequences to average")
    return {**{k: sum(r[k] for r in rows) / len(rows) for k in REPORTED}, "n": len(rows)}
