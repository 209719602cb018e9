"""The DSAML training loss (docs/method.md, "Loss and metrics"): 1 - average score + attention regulariser."""

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
    """The attention regulariser: pulls the local layer's diagonal up and the global layer's down.

    Args:
        diagonal (Tensor): [B, 2, T] the head-averaged attention diagonal of layer L - 1 and of the last
            layer (`DSAMLNet.forward`'s "attention_diagonal").
        local_target (float): target of layer L - 1's diagonal (0.9).
        global_target (float): target of the last layer's diagonal (0.1).

    Returns:
        Tensor: 0-dim, MSE(batch-mean diagonal of layer L - 1, local_target) + MSE(batch-mean diagonal of
        the last layer, global_target), each MSE averaged over the T positions.
    """
    mean = diagonal.mean(dim=0)
    return F.mse_loss(mean[0], mean[0].new_full(mean[0].shape, local_target)) + F.mse_loss(
        mean[1], mean[1].new_full(mean[1].shape, global_target)
    )


def dsaml_loss(
    out: dict[str, Tensor], arousal: Tensor, valence: Tensor, regularize: bool = True
) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of a batch: 1 - average score (+ the attention regulariser).

    Args:
        out (dict[str, Tensor]): the network's outputs: "arousal", "valence" [B, T] and, with regularize,
            "attention_diagonal" [B, 2, T].
        arousal (Tensor): arousal labels [B, T].
        valence (Tensor): valence labels [B, T].
        regularize (bool): add `attention_regularizer`; False leaves it out.

    Returns:
        (loss, scores): loss a differentiable 0-dim tensor; scores the six batch-averaged per-sequence
        scores (`METRIC_KEYS`), "average" and, with regularize, "attention_reg" (0-dim tensors).

    Raises:
        KeyError: regularize and out has no "attention_diagonal".
        ValueError: a prediction's shape differs from its labels'.
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
