"""Test-time adaptation of many listeners at once with the batched engine (`task.meta_engine=batched`).

`adapt_many` adapts several supports (one per (listener, song) pair of a test protocol) together: their
copies of the network (or of its head, for `head`) are slices of parameters stacked along a leading pair
axis, adapted by `dsaml.meta.batched.adapt_batched` (one network call per inner step for all pairs of a
group). Each pair gets what `adapt` / `adapt_head` would give it (tests/meta/test_batched_adapt.py): a copy in
train mode (BatchNorm batch statistics, its own running statistics; dropout), `steps` plain SGD steps on
the mean loss over its support batches, then the adapted network in eval mode. First- and second-order
inner loops adapt to the same weights, so the engine never builds the second-order graph here.

Pairs adapt together only when their support batches have the same shapes (a whole support song of
another length is cut into another number of windows): padding would change the BatchNorm batch
statistics of the inner loop, so pairs are grouped by shape instead, `chunk` at most per call. With
dropout > 0 each pair draws its own masks from one stream per group (`vmap`'s randomness "different"), so
its scores equal the one-at-a-time path's in distribution, not draw for draw.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from dsaml.meta.adaptation import HeadAdaptedNet, body_batches
from dsaml.meta.batched import adapt_batched, head_loss, network_loss, shape_of, stack_batches, stacked, twin
from dsaml.meta.calibration import CalibrationPrior
from dsaml.meta.methods import (
    AUTO,
    ITERATIVE,
    AdaptationConfig,
    Personalized,
    SlidingWindows,
    personalized,
    plan,
)

Batch = Mapping[str, Tensor]


def groups(keys: Sequence[object], chunk: int | None) -> list[list[int]]:
    """Indices of equal keys (first appearance order), split into runs of at most `chunk` (None: no bound)."""
    by_key: dict[object, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    size = chunk or max(len(keys), 1)
    return [members[i : i + size] for members in by_key.values() for i in range(0, len(members), size)]


def adapt_many(
    net: nn.Module,
    supports: Sequence[Sequence[Batch]],
    learner: str,
    steps: int,
    lr: float,
    chunk: int | None = None,
) -> Iterator[tuple[int, nn.Module]]:
    """Adapt a copy of `net` to each support (a list of batches), as `adapt` (learner "maml") or `adapt_head`
    ("head") with `steps` first-order SGD steps at `lr` would -> (index into supports, adapted network in
    eval mode), one group of equal-shaped supports after another (`chunk` at most per call). `net` is never
    modified. Raises FloatingPointError naming the pair whose support loss is NaN/inf."""
    if learner not in ITERATIVE:
        raise ValueError(f"adapt_many: learner={learner!r}: expected one of {', '.join(ITERATIVE)}")
    head = learner == "head"
    if head:  # the body's features, once per support batch, in the network's own mode (as adapt_head)
        supports = [body_batches(net, support) for support in supports]
    module = net.head if head else net
    model = twin(module).train()
    loss = head_loss(model) if head else network_loss(model)
    keys = [tuple(shape_of(batch) for batch in support) for support in supports]
    for group in groups(keys, chunk):

        def nonfinite(index: int, message: str, group: list[int] = group) -> None:
            raise FloatingPointError(f"adapt: support {group[index]}: {message}")

        chosen = [supports[i] for i in group]
        batches = [stack_batches([s[j] for s in chosen]) for j in range(len(chosen[0]))]
        with torch.enable_grad():
            adaptation = adapt_batched(
                loss,
                stacked(dict(module.named_parameters()), len(group), copies=False),
                stacked(dict(module.named_buffers()), len(group), copies=True),
                batches,
                steps,
                lr,
                first_order=True,
                on_nonfinite=nonfinite,
            )
        for slot, index in enumerate(group):
            own = {k: v[slot].detach() for k, v in {**adaptation.params, **adaptation.buffers}.items()}
            copied = copy.deepcopy(module)
            copied.load_state_dict(own)
            yield index, (HeadAdaptedNet(net, copied) if head else copied).eval()


def personalize_many(
    net: nn.Module,
    requests: Sequence[tuple[Sequence[Mapping], Sequence[Batch] | None]],
    config: AdaptationConfig,
    predictor: SlidingWindows,
    prior: CalibrationPrior | None = None,
    chunk: int | None = None,
) -> Iterator[tuple[int, Personalized]]:
    """`personalize_net` of each request (support sequences, inner-loop batches or None) with an inner-loop
    method (maml, head, and their _calibrate variants), the inner loops adapted together (`adapt_many`)
    -> (index into requests, its `Personalized`), in the order the groups finish."""
    if config.method == AUTO or config.learner not in ITERATIVE:
        raise ValueError(f"personalize_many: method={config.method!r}: expected an inner-loop method")
    plans = [plan(support, config, predictor, batches) for support, batches in requests]
    adapting = [i for i, p in enumerate(plans) if p is not None and p[2] > 0]
    for i, p in enumerate(plans):
        if p is None:  # every support song flat: the network as it is
            yield i, Personalized(net)
        elif p[2] == 0:
            yield i, personalized(net, p, config, predictor, prior)
    supports = [plans[i][1] for i in adapting]  # type: ignore[index]
    for slot, adapted in adapt_many(net, supports, config.learner, config.steps, config.lr, chunk):
        index = adapting[slot]
        yield index, personalized(adapted, plans[index], config, predictor, prior)
