"""The DSAML training loss (spec section 3): 1 - average score + attention regulariser."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dsaml.metrics import average_score, sequence_scores

LOCAL_DIAGONAL_TARGET = 0.9
GLOBAL_DIAGONAL_TARGET = 0.1


def attention_regularizer(
    diagonal: Tensor,
    local_target: float = LOCAL_DIAGONAL_TARGET,
    global_target: float = GLOBAL_DIAGONAL_TARGET,
) -> Tensor:
    """diagonal [B, 2, T] (head-averaged attention diagonal of layer L-1 and of the last layer, as returned by
    `DSAMLNet`) -> MSE(batch-mean diagonal of layer L-1, 0.9) + MSE(batch-mean diagonal of the last, 0.1)."""
    mean = diagonal.mean(dim=0)
    return F.mse_loss(mean[0], mean[0].new_full(mean[0].shape, local_target)) + F.mse_loss(
        mean[1], mean[1].new_full(mean[1].shape, global_target)
    )


def dsaml_loss(
    out: dict[str, Tensor], arousal: Tensor, valence: Tensor, regularize: bool = True
) -> tuple[Tensor, dict[str, Tensor]]:
    """out: the network's output mapping; arousal, valence: labels [B, T].

    Returns (loss, scores): scores holds the six batch-averaged per-sequence scores (`SCORE_NAMES`), the
    "average" score and "attention_reg" (0-dim tensors; the loss is differentiable). The regulariser needs
    out["attention_diagonal"]; pass regularize=False to leave it out.
    """
    per_seq = sequence_scores(out["arousal"], out["valence"], arousal, valence)
    scores = {k: v.mean() for k, v in per_seq.items()}
    scores["average"] = average_score(scores)
    loss = 1 - scores["average"]
    if regularize:
        if "attention_diagonal" not in out:
            raise KeyError(
                "dsaml_loss: out has no 'attention_diagonal' (call the network with return_diagonal=True "
                "or pass regularize=False)"
            )
        scores["attention_reg"] = attention_regularizer(out["attention_diagonal"])
        loss = loss + scores["attention_reg"]
    return loss, scores
