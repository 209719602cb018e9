"""MAML inner loop (adaptation to one rater), its head-only variant (ANIL) and the meta-gradient.

A *batch* (`dsaml.data.batch.ClipBatch`): ``logmel`` [B, T, 51, 128] float32, ``global`` [B, 1 or T, D_g]
or None, ``arousal`` / ``valence`` [B, T] in the dataset's label range. An *episode*
(`dsaml.data.batch.Episode`) is ``{"support": batch, "query": batch}`` of one rater. `adapt` is shared by
the Lightning module's evaluation protocols and by `dsaml-personalize`; `adapt_head` adapts only the head
(BiLSTM + regressor) on body features computed once per support batch (Raghu et al., ICLR 2020);
`meta_backward` is the outer step of PDMER training (full, head-only or closed-form read-out inner loop).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dsaml.data.batch import ClipBatch
from dsaml.losses import attention_regularizer, dsaml_loss
from dsaml.meta.l2l import learn2learn
from dsaml.models.network import DSAMLNet

Batch = ClipBatch
# how `meta_backward` adapts a meta-batch's episodes (task.meta_engine): all at once with per-episode
# parameters stacked (dsaml.meta.batched) or one after another with learn2learn (the reference). Default:
# sequential, as fast on a 2-core CPU at the paper's network size with 1/4 of the memory
# (experiments/benchmarks/RESULTS.md)
META_ENGINES = ("batched", "sequential")
DEFAULT_META_ENGINE = "sequential"


def maml_wrap(net: nn.Module, lr: float, first_order: bool = True) -> nn.Module:
    """Wrap `net` in learn2learn's `MAML` (with allow_unused=True).

    Args:
        net (nn.Module): the network to meta-train (a `DSAMLNet`, or its head for the head-only inner loop).
        lr (float): the inner SGD learning rate.
        first_order (bool): first-order MAML (no second derivatives through the inner steps).

    Returns:
        nn.Module: the learn2learn `MAML` wrapper of `net` (shares its parameters).
    """
    return learn2learn().algorithms.MAML(net, lr=lr, first_order=first_order, allow_unused=True)


def batch_loss(net: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """The DSAML loss (docs/method.md, "Loss and metrics") of `net` on one batch.

    Args:
        net (nn.Module): a `DSAMLNet` (or a wrapper or adapted copy called like one).
        batch (ClipBatch): ``logmel`` [B, T, 51, 128], ``global`` [B, 1 or T, D_g] or None, ``arousal`` /
            ``valence`` [B, T].

    Returns:
        (loss, scores): the differentiable 0-dim loss and the batch scores (`dsaml.losses.dsaml_loss`:
        the per-sequence scores averaged over the batch, "average" and "attention_reg", 0-dim tensors).
    """
    out = net(batch["logmel"], batch.get("global"))
    return dsaml_loss(out, batch["arousal"], batch["valence"])


@dataclass
class Adaptation:
    """Result of `adapt` / `adapt_head`: the adapted copy of the network and the support loss before each
    inner step.

    Args:
        learner (nn.Module): the learn2learn `MAML` clone (or the `HeadAdaptedNet`); call it like the network.
        losses (list[float]): the mean support loss before each inner step (``steps`` values).
        adapted (nn.Module or None): the adapted network when it is not ``learner.module``.

    Attributes:
        net (nn.Module): the adapted network (``adapted``, else ``learner.module``), called like a `DSAMLNet`.
    """

    learner: nn.Module  # learn2learn MAML clone (or HeadAdaptedNet); call it like the network
    losses: list[float] = field(default_factory=list)
    adapted: nn.Module | None = None  # the adapted network when it is not `learner.module`

    @property
    def net(self) -> nn.Module:
        return self.adapted if self.adapted is not None else self.learner.module


class HeadAdaptedNet(DSAMLNet):
    """A `DSAMLNet` whose head is an adapted copy; every other submodule IS the original network's (shared,
    so gradients reach the original body).

    `train()`/`eval()` switch only the head: the body keeps the original network's mode (eval at
    test/personalisation time, train during meta-training). Called like `DSAMLNet` (same shapes).

    Args:
        net (DSAMLNet): the original network (its config and every submodule but the head are shared).
        head (nn.Module): the adapted copy of ``net.head`` (an `EmotionHead`: [B, T, D] -> [B, T, 2]).
    """

    def __init__(self, net: DSAMLNet, head: nn.Module) -> None:
        nn.Module.__init__(self)
        self.cfg = net.cfg
        for name, module in net.named_children():
            self._modules[name] = head if name == "head" else module
        self.training = head.training

    def train(self, mode: bool = True) -> HeadAdaptedNet:
        self.training = mode
        self.head.train(mode)
        return self


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
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> Adaptation:
    """Adapt a copy of `net` to a support set with `steps` plain SGD steps (MAML's inner loop).

    The original network's parameters are never modified. Gradients are enabled here even under
    `torch.no_grad()`; under `torch.inference_mode()` adaptation is impossible and raises RuntimeError.

    Args:
        net (nn.Module): a `DSAMLNet` (wrapped here with learning rate `lr`) or an existing learn2learn
            `MAML` wrapper (cloned; `lr` overrides its rate when given).
        support (ClipBatch or Sequence[ClipBatch]): one batch or a list of batches (``logmel``
            [B, T, 51, 128], labels [B, T]); each inner step descends the mean loss over them.
        steps (int): inner SGD steps (>= 0; 0 returns an unadapted copy).
        lr (float or None): inner learning rate; required when `net` is not a `MAML` wrapper.
        first_order (bool or None): None = the wrapper's own setting (first order when `net` is wrapped here).
        train_mode (bool or None): mode of the copy during adaptation (True = BatchNorm batch statistics and
            dropout, as in meta-training; None = keep the current mode).
        isolate_buffers (bool): the copy gets its own BatchNorm statistics (True for
            evaluation/personalisation; meta-training shares them like the original).
        loss_fn (callable): (network, batch) -> (loss, scores); default `batch_loss`.
        on_step (callable or None): on_step(k, adapted network) is called after inner step k = 1 .. steps
            (e.g. to score it after each step).

    Returns:
        Adaptation: the adapted copy (``.net``, ``.learner``) and the support loss before each step.

    Raises:
        ValueError: steps < 0, an empty support set, or no `lr` for a plain network.
        FloatingPointError: a non-finite support loss.
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
            if on_step is not None:
                on_step(len(losses), learner.module)
    return Adaptation(learner=learner, losses=losses)


def body_batches(net: DSAMLNet, support: Batch | Sequence[Batch]) -> list[dict[str, Tensor]]:
    """Support batches -> the body's features, computed once without gradient in the network's current mode:
    {"encoded" [B, T, D], "regularizer" (the attention regulariser, a constant for the head), labels}."""
    batches = [support] if isinstance(support, Mapping) else list(support)
    out = []
    with torch.no_grad():
        for batch in batches:
            body = net.body(batch["logmel"], batch.get("global"))
            out.append(
                {
                    "encoded": body["encoded"],
                    "regularizer": attention_regularizer(body["attention_diagonal"]),
                    "arousal": batch["arousal"],
                    "valence": batch["valence"],
                }
            )
    return out


def adapt_head(
    net: DSAMLNet,
    support: Batch | Sequence[Batch],
    steps: int,
    lr: float | None = None,
    first_order: bool | None = None,
    head: nn.Module | None = None,
    train_mode: bool | None = True,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> Adaptation:
    """The inner loop over the head only (ANIL, Raghu et al., ICLR 2020).

    The body's features of each support batch are computed once (no gradient, `net`'s current mode), then
    `steps` SGD steps adapt a copy of the head on them with the same loss as `adapt` (the attention
    regulariser is a constant here). `net` is never modified.

    Args:
        net (DSAMLNet): the network whose head is adapted.
        support (ClipBatch or Sequence[ClipBatch]): one batch or a list of batches (``logmel``
            [B, T, 51, 128], labels [B, T]).
        steps (int): inner SGD steps (>= 0).
        lr (float or None): inner learning rate; required when `head` is None.
        first_order (bool or None): as in `adapt`.
        head (nn.Module or None): a learn2learn wrapper of ``net.head`` (meta-training) or None (wrapped
            here with `lr`).
        train_mode (bool or None): mode of the head copy during adaptation (as in `adapt`).
        on_step (callable or None): on_step(k, adapted network) after inner step k = 1 .. steps.

    Returns:
        Adaptation: the adapted network (a `HeadAdaptedNet`) as ``.net`` and ``.learner``, and the support
        loss before each step.
    """
    features = body_batches(net, support)

    def head_loss(learner: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        out = net.emotions(batch["encoded"], head=learner)
        loss, scores = dsaml_loss(out, batch["arousal"], batch["valence"], regularize=False)
        return loss + batch["regularizer"], scores

    holder: dict[str, HeadAdaptedNet] = {}

    def adapted_net(head_copy: nn.Module) -> HeadAdaptedNet:
        if "net" not in holder:  # the clone's module object stays the same across steps
            holder["net"] = HeadAdaptedNet(net, head_copy)
        return holder["net"]

    adaptation = adapt(
        net.head if head is None else head,
        features,
        steps,
        lr=lr,
        first_order=first_order,
        train_mode=train_mode,
        loss_fn=head_loss,
        on_step=None if on_step is None else lambda k, head_copy: on_step(k, adapted_net(head_copy)),
    )
    result = adapted_net(adaptation.learner.module)
    return Adaptation(learner=result, losses=adaptation.losses, adapted=result)


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
    """What one outer step (`meta_backward`) saw, over this process's episodes.

    Args:
        query_loss (float): the mean query loss over the episodes.
        query_scores (dict[str, float]): the mean query scores (keys of `batch_loss`'s scores).
        adapt_losses (list[list[float]]): per episode, the support loss before each inner step (empty for
            the read-out inner loop).
    """

    query_loss: float
    query_scores: dict[str, float]
    adapt_losses: list[list[float]]


def meta_backward(
    maml: nn.Module,
    episodes: Sequence[Mapping[str, Batch]],
    steps: int,
    episodes_in_meta_batch: int,
    backward: Callable[[Tensor], None] = Tensor.backward,
    loss_fn: Callable[[nn.Module, Batch], tuple[Tensor, dict]] = batch_loss,
    on_nonfinite: Callable[[int, str], None] | None = None,
    net: DSAMLNet | None = None,
    engine: str = DEFAULT_META_ENGINE,
    chunk: int | None = None,
    readout_strength: float | None = None,
) -> MetaStepStats:
    """Accumulate the meta-gradient of `episodes` into the `.grad` of `maml`'s parameters.

    For each episode: clone, adapt `steps` inner steps on the support, then backpropagate
    query_loss / episodes_in_meta_batch to the un-adapted parameters (first or second order as `maml` is set
    up). With several processes each passes its share of the meta-batch and the same
    `episodes_in_meta_batch`; the caller then sums the gradients over processes.

    Args:
        maml (nn.Module): the learn2learn `MAML` wrapper of the network (or of its head when `net` is given;
            the plain network with `readout_strength`).
        episodes (Sequence[Episode]): ``{"support": batch, "query": batch}`` of one rater each (batches as
            in `batch_loss`: ``logmel`` [B, T, 51, 128], labels [B, T]).
        steps (int): inner SGD steps per episode.
        episodes_in_meta_batch (int): episodes in the whole meta-batch (over all processes): the divisor of
            each query loss.
        backward (callable): called on each scaled query loss (Lightning's `manual_backward`; default
            `Tensor.backward`).
        loss_fn (callable): (network, batch) -> (loss, scores); default `batch_loss`.
        on_nonfinite (callable or None): on_nonfinite(episode_index, message) is called (and should raise)
            when a support or query loss is NaN/inf.
        net (DSAMLNet or None): the whole network when `maml` wraps only its head (head-only inner loop,
            `adapt_head`): the query loss then reaches the body directly and the head through its adapted
            copy.
        engine (str): "sequential" (one episode after another, learn2learn) or "batched" (`chunk` episodes
            at a time with stacked per-episode parameters: `dsaml.meta.batched`; the DSAML loss only).
        chunk (int or None): episodes per batched pass (None = all); batched engine only.
        readout_strength (float or None): the read-out inner loop (task.inner_loop=readout; `maml` is then
            the plain network, `steps` and `loss_fn` are not used): per episode the head's read-out is
            refitted in closed form on the support with this prior strength in songs
            (`dsaml.meta.readout.readout_episode_loss`) and the query loss backpropagates through the solve
            into the whole network, the trained read-out (the prior) included. Sequential engine only.

    Returns:
        MetaStepStats: the mean query loss and scores over `episodes` and each episode's inner losses.

    Raises:
        ValueError: an unknown engine, or an option the engine does not support.
        FloatingPointError: a non-finite support or query loss (naming the episode).
    """
    if engine not in META_ENGINES:
        raise ValueError(f"meta_backward: engine={engine!r}: expected one of {', '.join(META_ENGINES)}")
    if readout_strength is not None and engine != "sequential":
        raise ValueError(
            "meta_backward: task.inner_loop=readout runs on the sequential engine only "
            f"(task.meta_engine=sequential, not {engine})"
        )
    if engine == "batched":
        if loss_fn is not batch_loss:
            raise ValueError("meta_backward: the batched engine computes the DSAML loss only (loss_fn)")
        from dsaml.meta.batched import batched_meta_backward  # it builds on this module

        return batched_meta_backward(
            maml, episodes, steps, episodes_in_meta_batch, backward, on_nonfinite, net, chunk
        )
    q_losses: list[float] = []
    q_scores: list[dict[str, Tensor]] = []
    inner: list[list[float]] = []
    for index, episode in enumerate(episodes):
        try:
            if readout_strength is not None:
                from dsaml.meta.readout import readout_episode_loss  # it builds on this module

                loss, scores = readout_episode_loss(maml, episode, readout_strength)
                inner_losses: list[float] = []
            else:
                if net is None:
                    adaptation = adapt(
                        maml,
                        episode["support"],
                        steps,
                        train_mode=None,
                        isolate_buffers=False,
                        loss_fn=loss_fn,
                    )
                else:
                    adaptation = adapt_head(net, episode["support"], steps, head=maml, train_mode=None)
                loss, scores = loss_fn(adaptation.learner, episode["query"])
                inner_losses = adaptation.losses
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite query loss {loss.item()}")
        except FloatingPointError as error:
            if on_nonfinite is not None:
                on_nonfinite(index, str(error))
            raise FloatingPointError(f"meta_backward: episode {index}: {error}") from error
        backward(loss / episodes_in_meta_batch)
        q_losses.append(float(loss.detach()))
        q_scores.append({k: float(v.detach()) for k, v in scores.items()})
        inner.append(inner_losses)
    n = max(len(q_losses), 1)
    mean_scores = {k: sum(s[k] for s in q_scores) / n for k in (q_scores[0] if q_scores else {})}
    return MetaStepStats(query_loss=sum(q_losses) / n, query_scores=mean_scores, adapt_losses=inner)
