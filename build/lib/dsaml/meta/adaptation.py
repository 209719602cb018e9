"""MAML inner loop (adaptation to one rater) and the first-order/second-order meta-gradient.

A *batch* is a dict: ``logmel`` [B, T, 51, 128] float32, ``global`` [B, 1 or T, D_g] or None,
``arousal`` / ``valence`` [B, T] in the dataset's label range. A *task* is ``{"support": batch,
"query": batch}`` (one rater). `adapt` is shared by the Lightning module's evaluation protocols and by
`dsaml-personalize`; `meta_backward` is the outer step of PDMER training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dsaml.losses import dsaml_loss
from dsaml.meta.l2l import learn2learn

Batch = Mapping[str, Tensor | None]


def maml_wrap(net: nn.Module, lr: float, first_order: bool = True) -> nn.Module:
    """Wrap `net` in learn2learn's `MAML` (inner SGD learning rate `lr`)."""
    return learn2learn().algorithms.MAML(net, lr=lr, first_order=first_order, allow_unused=True)


def batch_loss(net: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """The spec's loss (section 3) of `net` on one batch -> (scalar loss, per-batch scores)."""
    out = net(batch["logmel"], batch.get("global"))
    return dsaml_loss(out, batch["arousal"], batch["valence"])


@dataclass
class Adaptation:
    """Result of `adapt`: the adapted copy of the network and the support loss before each inner step."""

    learner: nn.Module  # learn2learn MAML clone; call it like the network, `.module` is the adapted net
    losses: list[float] = field(default_factory=list)

    @property
    def net(self) -> nn.Module:
        return self.learner.module


def _isolate_buffers(module: nn.Module) -> None:
    """Give a learn2learn clone its own copies of buffers (BatchNorm statistics), so adapting it
    never changes the network it was cloned from."""
    for sub in module.modules():
        for key, buf in list(sub._buffers.items()):
            if buf is not None:
                sub._buffers[key] = buf.clone()


def _clone(net: nn.Module, lr: float | None, first_order: bool | None) -> nn.Module:
    if isinstance(net, learn2learn().algorithms.MAML):
        learner = net.clone(first_order=first_order)
        if lr is not None:
            learner.lr = lr
        return learner
    if lr is None:
        raise ValueError("adapt: lr is required when net is not a MAML wrapper")
    return maml_wrap(net, lr, True if first_order is None else first_order).clone()


def adapt(
    net: nn.Module,
    support: Batch | Sequence[Batch],
    steps: int,
    lr: float | None = None,
    first_order: bool | None = None,
    train_mode: bool | None = True,
    isolate_buffers: bool = True,
    loss_fn: Callable[[nn.Module, Batch], tuple[Tensor, dict]] = batch_loss,
) -> Adaptation:
    """Adapt a copy of `net` to a support set with `steps` plain SGD steps (MAML's inner loop).

    net: a `DSAMLNet` (wrapped here with learning rate `lr`) or an existing learn2learn `MAML` wrapper
    (cloned; `lr` overrides its rate when given). first_order: None = the wrapper's own setting (first
    order when `net` is wrapped here). support: one batch or a list of batches; each inner step descends
    the mean loss over them. train_mode: mode of the copy during adaptation (True = BatchNorm batch
    statistics and dropout, as in meta-training; None = keep the current mode). isolate_buffers: the
    copy gets its own BatchNorm statistics (True for evaluation/personalisation; meta-training shares them
    like the original). The original network's parameters are never modified. Gradients are enabled here
    even under `torch.no_grad()`; under `torch.inference_mode()` adaptation is impossible and raises.
    """
    if steps < 0:
        raise ValueError(f"adapt: steps={steps}: expected >= 0")
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "adapt() needs gradients but runs under torch.inference_mode(); "
            "use Trainer(inference_mode=False) or torch.no_grad() instead"
        )
    batches = [support] if isinstance(support, Mapping) else list(support)
    if not batches:
        raise ValueError("adapt: the support set is empty")
    with torch.enable_grad(), warnings.catch_warnings():  # the clone is a graph node: made with grad on
        # learn2learn's clone_module / update_module re-flatten the BiLSTM's weights with `_apply`, which
        # reads `.grad` of the (non-leaf) adapted parameters: a harmless warning at every clone and step.
        warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf", UserWarning)
        learner = _clone(net, lr, first_order)
        if isolate_buffers:
            _isolate_buffers(learner.module)
        if train_mode is not None:
            learner.train(train_mode)
        losses: list[float] = []
        for _ in range(steps):
            loss = sum(loss_fn(learner, b)[0] for b in batches) / len(batches)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"adapt: non-finite support loss {loss.item()} at inner step {len(losses)}"
                )
            losses.append(float(loss.detach()))
            if learner.first_order:
                _first_order_step(learner, loss)
            else:
                learner.adapt(loss)
    return Adaptation(learner=learner, losses=losses)


def _first_order_step(learner: nn.Module, loss: Tensor) -> None:
    """learn2learn's `MAML.adapt` for first order, with the update p - lr g as one fused op per parameter
    (learn2learn computes -lr g, then p + that: two passes over the 30 M parameters; measured 59 -> 14 ms per
    inner step at the paper size). The adapted parameters stay graph nodes of the clone's, so the query loss
    still backpropagates to the un-adapted network (first order: d adapted / d original = identity)."""
    module = learner.module
    params = [p for p in module.parameters() if p.requires_grad]  # frozen ones stay (allow_nograd)
    grads = torch.autograd.grad(loss, params, allow_unused=learner.allow_unused)
    adapted = {
        id(p): torch.add(p, g, alpha=-learner.lr) for p, g in zip(params, grads, strict=True) if g is not None
    }
    for sub in module.modules():
        for key, param in sub._parameters.items():
            if param is not None and id(param) in adapted:
                sub._parameters[key] = adapted[id(param)]
        if hasattr(
            sub, "flatten_parameters"
        ):  # as learn2learn's update_module: re-point the RNN's flat weights
            sub._apply(lambda x: x)


@dataclass
class MetaStepStats:
    """What one outer step saw: mean query loss/scores over this process's tasks, the inner losses."""

    query_loss: float
    query_scores: dict[str, float]
    adapt_losses: list[list[float]]


def meta_backward(
    maml: nn.Module,
    tasks: Sequence[Mapping[str, Batch]],
    steps: int,
    n_total_tasks: int,
    backward: Callable[[Tensor], None] = Tensor.backward,
    loss_fn: Callable[[nn.Module, Batch], tuple[Tensor, dict]] = batch_loss,
    on_nonfinite: Callable[[int, str], None] | None = None,
) -> MetaStepStats:
    """Accumulate the meta-gradient of `tasks` into the `.grad` of `maml`'s parameters.

    For each task: clone, adapt `steps` inner steps on the support, then backpropagate
    query_loss / n_total_tasks to the un-adapted parameters (first or second order as `maml` is set up).
    With several processes each passes its share of the meta-batch and the same `n_total_tasks`; the
    caller then sums the gradients over processes. `backward` lets Lightning's `manual_backward` be used.
    on_nonfinite(task_index, message) is called (and should raise) when a support or query loss is NaN/inf.
    """
    q_losses: list[float] = []
    q_scores: list[dict[str, Tensor]] = []
    inner: list[list[float]] = []
    for index, task in enumerate(tasks):
        try:
            adaptation = adapt(
                maml, task["support"], steps, train_mode=None, isolate_buffers=False, loss_fn=loss_fn
            )
            loss, scores = loss_fn(adaptation.learner, task["query"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite query loss {loss.item()}")
        except FloatingPointError as error:
            if on_nonfinite is not None:
                on_nonfinite(index, str(error))
            raise FloatingPointError(f"meta_backward: task {index}: {error}") from error
        backward(loss / n_total_tasks)
        q_losses.append(float(loss.detach()))
        q_scores.append({k: float(v.detach()) for k, v in scores.items()})
        inner.append(adaptation.losses)
    n = max(len(q_losses), 1)
    mean_scores = {k: sum(s[k] for s in q_scores) / n for k in (q_scores[0] if q_scores else {})}
    return MetaStepStats(query_loss=sum(q_losses) / n, query_scores=mean_scores, adapt_losses=inner)
