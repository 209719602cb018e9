"""Loss and metrics against hand-computed values and torchmetrics (where definitions match)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional import concordance_corrcoef, mean_squared_error, pearson_corrcoef

from dsaml.losses import attention_regularizer, dsaml_loss
from dsaml.metrics import ccc, mean_scores, pcc, rmse, scores_of


def test_hand_computed_values():
    p, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 2.0, 4.0, 4.0])
    # means 2.5 / 3; population var 1.25 / 1; cov = mean((p-2.5)(y-3)) = (1.5 + 0.5 + 0.5 + 1.5) / 4 = 1
    assert ccc(p, y).item() == pytest.approx(2 * 1.0 / (1.25 + 1.0 + 0.25))
    assert pcc(p, y).item() == pytest.approx(4.0 / (5.0**0.5 * 2.0 + 1e-8))
    assert rmse(p, y).item() == pytest.approx((2.0 / 4) ** 0.5)
    assert pcc(torch.ones(5), torch.arange(5.0)).item() == 0.0  # the epsilon keeps a flat curve finite


def test_against_torchmetrics_where_definitions_match_and_differ():
    torch.manual_seed(0)
    p, y = torch.randn(3, 40), torch.randn(3, 40)
    torch.testing.assert_close(
        rmse(p, y), torch.stack([mean_squared_error(a, b, squared=False) for a, b in zip(p, y, strict=True)])
    )
    tm_pcc = torch.stack([pearson_corrcoef(a, b) for a, b in zip(p, y, strict=True)])
    torch.testing.assert_close(pcc(p, y), tm_pcc, rtol=1e-5, atol=1e-6)  # same up to the 1e-8 epsilon
    tm_ccc = torch.stack([concordance_corrcoef(a, b).reshape(()) for a, b in zip(p, y, strict=True)])
    n = 40  # torchmetrics: unbiased (n-1) cov/var with a plain (mean difference)^2 term -> differs from ours
    assert not torch.allclose(ccc(p, y), tm_ccc, rtol=1e-6, atol=0)
    mp, my = p.mean(-1), y.mean(-1)
    unbiased = (
        2
        * torch.stack([torch.cov(torch.stack([a, b]))[0, 1] for a, b in zip(p, y, strict=True)])
        / (p.var(-1) + y.var(-1) + (mp - my) ** 2)
    )
    torch.testing.assert_close(tm_ccc, unbiased, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        ccc(p, y),
        2
        * ((p - mp[:, None]) * (y - my[:, None])).sum(-1)
        / n
        / (p.var(-1, unbiased=False) + y.var(-1, unbiased=False) + (mp - my) ** 2),
    )


def test_loss_is_one_minus_average_score_plus_regulariser():
    torch.manual_seed(0)
    out = {
        "arousal": torch.rand(4, 30, requires_grad=True),
        "valence": torch.rand(4, 30),
        "attention_diagonal": torch.rand(4, 2, 30),
    }
    a, v = torch.rand(4, 30), torch.rand(4, 30)
    loss, scores = dsaml_loss(out, a, v)
    average = (
        ccc(out["arousal"], a).mean()
        + pcc(out["arousal"], a).mean()
        + 1
        - rmse(out["arousal"], a).mean()
        + ccc(out["valence"], v).mean()
        + pcc(out["valence"], v).mean()
        + 1
        - rmse(out["valence"], v).mean()
    ) / 6
    diag = out["attention_diagonal"].mean(0)
    reg = ((diag[0] - 0.9) ** 2).mean() + ((diag[1] - 0.1) ** 2).mean()
    assert reg.item() == pytest.approx(attention_regularizer(out["attention_diagonal"]).item())
    assert loss.item() == pytest.approx((1 - average + reg).item(), rel=1e-6)
    loss.backward()
    assert out["arousal"].grad.abs().sum() > 0
    with pytest.raises(KeyError, match="attention_diagonal"):
        dsaml_loss({"arousal": a, "valence": v}, a, v)
    assert dsaml_loss({"arousal": a, "valence": v}, a, v, regularize=False)[0].item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_mean_of_per_sequence_scores_over_sequences_of_any_length():
    torch.manual_seed(0)
    preds = [torch.rand(50), torch.rand(80)]
    labels = [torch.rand(50), torch.rand(80)]
    summary = mean_scores([scores_of(p, p, y, y) for p, y in zip(preds, labels, strict=True)])
    assert summary["n"] == 2
    assert summary["arousal_ccc"] == pytest.approx(
        (ccc(preds[0], labels[0]) + ccc(preds[1], labels[1])).item() / 2
    )
    assert summary["average"] == pytest.approx(
        (2 * summary["arousal_ccc"] + 2 * summary["arousal_pcc"] + 2 - 2 * summary["arousal_rmse"]) / 6,
        rel=1e-6,
    )
