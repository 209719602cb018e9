"""The batched MAML engine (`task.meta_engine=batched`): every episode of a meta-batch adapted at once.

Each episode's adapted parameters are one slice of tensors stacked along a leading episode axis [E, ...];
the network after its spectrogram CNN is applied to all of them in one call (`torch.func.functional_call`
under `torch.func.vmap`, randomness "different": each episode draws its own dropout masks); the CNN runs
episode by episode with its fused kernels (autograd Functions without vmap rules; vmap through the module
path made the demo-size meta-step 4x slower). The inner gradient of every episode comes from ONE backward
of the summed support losses (episodes share no parameter slice, so d sum / d slice e is episode e's
gradient); first order takes it without a graph, second order with `create_graph`, exactly as
learn2learn's `MAML.adapt`. The sequential learn2learn loop (`meta_backward(engine="sequential")`) is the
reference this engine is tested against (tests/meta/test_batched.py).

The engine applies a *twin*: the same module tree on the "meta" device (no storage; every tensor comes from
the stacked parameters) with each `nn.LSTM` replaced by `MatmulLSTM` (the same recurrence from matmuls:
vmap has no batching rule for the LSTM kernel).

BatchNorm: each episode gets its own copy of the buffers (stacked; `adapt_batched` changes only those).
After a meta-step the network's statistics become the mean over the episodes of each one's statistics (as
`DSAMLModule` averages them over DDP processes). Measured speed and the default engine: docs/meta-engine.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from dsaml.losses import dsaml_loss
from dsaml.meta.adaptation import MetaStepStats, body_batches

META_ENGINES = ("batched", "sequential")
INPUT_KEYS = ("logmel", "global", "arousal", "valence", "encoded", "regularizer", "attention_diagonal")


class MatmulLSTM(nn.LSTM):
    """`nn.LSTM` (one layer, batch_first, uni- or bidirectional, no projection) computed from matmuls and
    pointwise ops, so that `vmap` can batch it over stacked weights. Same parameters, same outputs to float
    rounding: forward(x [B, T, D]) -> (y [B, T, directions * H], None); no initial state."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.num_layers != 1 or not self.batch_first or self.proj_size:
            raise ValueError("MatmulLSTM: one layer, batch_first=True and no projection only")

    def forward(self, x: Tensor, hx: Tensor | None = None) -> tuple[Tensor, None]:  # type: ignore[override]
        if hx is not None:
            raise ValueError("MatmulLSTM: no initial state")
        suffixes = ("", "_reverse") if self.bidirectional else ("",)
        weights = [getattr(self, f"weight_ih_l0{s}") for s in suffixes]
        biases = [getattr(self, f"bias_ih_l0{s}") + getattr(self, f"bias_hh_l0{s}") for s in suffixes]
        recurrent = torch.stack([getattr(self, f"weight_hh_l0{s}").t() for s in suffixes])  # [dirs, H, 4H]
        projected = nn.functional.linear(x, torch.cat(weights), torch.cat(biases))  # [B, T, dirs * 4H]
        inputs = projected.unflatten(-1, (len(suffixes), -1)).movedim(-2, 0)  # [dirs, B, T, 4H]
        if self.bidirectional:  # the reverse direction reads the sequence backwards
            inputs = torch.stack([inputs[0], inputs[1].flip(1)])
        steps = inputs.shape[2]
        h = c = x.new_zeros(len(suffixes), x.shape[0], self.hidden_size)
        outputs = []
        for t in range(steps):
            gates = torch.baddbmm(inputs[:, :, t], h, recurrent)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        y = torch.stack(outputs, dim=2)  # [dirs, B, T, H]
        if self.bidirectional:
            y = torch.cat([y[0], y[1].flip(1)], dim=-1)
        else:
            y = y[0]
        return y, None


def twin(module: nn.Module) -> nn.Module:
    """The vmap-able twin of `module` (see the module docstring): same tree, parameter and buffer names and
    train/eval modes, tensors on the "meta" device; call it through `functional_call` only."""
    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    copied = copy.deepcopy(module, memo)
    for sub in list(copied.modules()):
        for child_name, child in list(sub.named_children()):
            if type(child) is nn.LSTM:
                replacement = MatmulLSTM(
                    child.input_size,
                    child.hidden_size,
                    batch_first=True,
                    bidirectional=child.bidirectional,
                    bias=child.bias,
                    device="meta",
                )
                replacement.train(child.training)
                setattr(sub, child_name, replacement)
    return copied


def stack_batches(batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Batches of equal shapes -> one mapping of the same keys, stacked along a leading episode axis."""
    keys = [k for k in INPUT_KEYS if batches[0].get(k) is not None]
    return {k: torch.stack([b[k] for b in batches]) for k in keys}


def shape_of(batch: Mapping[str, Tensor]) -> tuple:
    """What must agree for batches to stack: each input's shape."""
    return tuple((k, tuple(batch[k].shape)) for k in INPUT_KEYS if batch.get(k) is not None)


# loss(params, buffers, batch), all stacked [E, ...] -> (losses [E], scores {name: [E]})
EpisodeLoss = Callable[[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]], tuple[Tensor, dict]]


class AfterCNN(nn.Module):
    """What of a `DSAMLNet` follows the spectrogram CNN, as a module to `functional_call` (parameter names
    prefixed "net."): forward(features [B, T, 476], logmel, global vectors) -> the network's outputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: Tensor, logmel: Tensor, global_vectors: Tensor | None) -> dict[str, Tensor]:
        return self.net.predict_encoded(self.net.fuse(features, logmel, global_vectors))


def network_loss(net: nn.Module) -> EpisodeLoss:
    """The DSAML loss of each episode's copy of `net` (a twin) on its batch. The spectrogram CNN runs episode
    by episode on its slice of the parameters (the fused kernels: vmap would need the slower module path,
    4x the meta-step at the demo's size); the rest of the network is vmapped over the episodes."""
    rest = AfterCNN(net)

    def after_cnn(params: dict, buffers: dict, features: Tensor, batch: dict) -> tuple[Tensor, dict]:
        # the math attention kernel, as outside vmap (whose attention rule would pick the CPU flash kernel,
        # which returns no gradient for the learned relative-position bias)
        with sdpa_kernel(SDPBackend.MATH):
            inputs = (features, batch["logmel"], batch.get("global"))
            out = functional_call(rest, (prefixed(params), prefixed(buffers)), inputs)
        return dsaml_loss(out, *labels(batch))

    batched = vmap(after_cnn, randomness="different")

    def loss(params: dict, buffers: dict, batch: dict) -> tuple[Tensor, dict]:
        return batched(params, buffers, cnn_features(net, params, buffers, batch), batch)

    return loss


def prefixed(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"net.{k}": v for k, v in tensors.items()}


def cnn_features(net: nn.Module, params: dict, buffers: dict, batch: Mapping[str, Tensor]) -> Tensor:
    """The spectrogram CNN of each episode on its own batch: logmel [E, B, T, F, M] -> [E, B, T, 476]."""
    logmel = batch["logmel"]
    features = []
    for index in range(len(logmel)):
        net._check_inputs(logmel[index], None if batch.get("global") is None else batch["global"][index])
        own = {k[len("spectrogram.") :]: v[index] for k, v in params.items() if k.startswith("spectrogram.")}
        own_buffers = {
            k[len("spectrogram.") :]: v[index] for k, v in buffers.items() if k.startswith("spectrogram.")
        }
        images = logmel[index].flatten(0, 1)
        out = functional_call(net.spectrogram, (own, own_buffers), (images,))
        features.append(out.view(*logmel.shape[1:3], -1))
    return torch.stack(features)


def head_loss(head: nn.Module) -> EpisodeLoss:
    """The head-only inner loop's loss on body features {"encoded", "regularizer", labels}: the DSAML loss
    of the head's outputs plus the (constant) attention regulariser of the support's body pass; on a query
    ({"encoded", "attention_diagonal", labels}: the body ran with gradient) the DSAML loss with it."""

    def loss(params: dict, buffers: dict, batch: dict) -> tuple[Tensor, dict]:
        emotions = functional_call(head, (params, buffers), (batch["encoded"],))
        out = {"arousal": emotions[..., 0], "valence": emotions[..., 1]}
        if "attention_diagonal" in batch:
            return dsaml_loss({**out, "attention_diagonal": batch["attention_diagonal"]}, *labels(batch))
        value, scores = dsaml_loss(out, *labels(batch), regularize=False)
        return value + batch["regularizer"], scores

    return vmap(loss, randomness="different")


def labels(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    return batch["arousal"], batch["valence"]


def stacked(tensors: Mapping[str, Tensor], episodes: int, copies: bool) -> dict[str, Tensor]:
    """Each tensor repeated along a new leading axis of `episodes`: views (`expand`: the parameters, whose
    gradients then sum back to the original) or independent copies (buffers updated in place)."""
    return {
        k: (v.unsqueeze(0).repeat(episodes, *[1] * v.ndim) if copies else v.expand(episodes, *v.shape))
        for k, v in tensors.items()
    }


@dataclass
class BatchedAdaptation:
    """Result of `adapt_batched`: the adapted parameters [E, ...] by name, the buffers [E, ...] after
    adaptation, and losses [steps, E] (the support loss before each inner step)."""

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    losses: Tensor


def adapt_batched(
    loss: EpisodeLoss,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    support: dict[str, Tensor] | Sequence[dict[str, Tensor]],
    steps: int,
    lr: float,
    first_order: bool,
    on_nonfinite: Callable[[int, str], None] | None = None,
    first: int = 0,
) -> BatchedAdaptation:
    """`steps` SGD steps of every episode at once: params / buffers [E, ...] by name (`stacked`), support a
    stacked batch [E, ...] or a list of them (each step descends the mean loss over the list, as `adapt`).
    loss(params, buffers, batch): every episode's loss (`network_loss`). The adapted
    parameters stay graph nodes of `params` (first order: d adapted / d params = identity; second order:
    the inner gradients are differentiated too). Raises FloatingPointError naming the first episode whose
    support loss is NaN/inf (after on_nonfinite(first + episode, message))."""
    batches = [support] if isinstance(support, Mapping) else list(support)
    losses = []
    for step in range(steps):
        values = sum(loss(params, buffers, batch)[0] for batch in batches) / len(batches)
        check_finite(values, f"non-finite support loss at inner step {step}", on_nonfinite, first)
        losses.append(values.detach())
        names = [k for k, v in params.items() if v.requires_grad]
        grads = torch.autograd.grad(
            values.sum(), [params[k] for k in names], create_graph=not first_order, allow_unused=True
        )
        params = dict(params)
        for name, grad in zip(names, grads, strict=True):
            if grad is not None:
                params[name] = torch.add(params[name], grad, alpha=-lr)
    empty = torch.zeros(0, len(next(iter(batches[0].values()))))
    return BatchedAdaptation(params, buffers, torch.stack(losses) if losses else empty)


def check_finite(
    values: Tensor, what: str, on_nonfinite: Callable[[int, str], None] | None, first: int = 0
) -> None:
    """values [E] of episodes first, first + 1, ...: raise FloatingPointError("episode i: what value") for
    the first non-finite one (after on_nonfinite(i, message))."""
    bad = (~torch.isfinite(values.detach())).nonzero()
    if len(bad):
        index = first + int(bad[0])
        message = f"{what} {float(values[index - first].detach())}"
        if on_nonfinite is not None:
            on_nonfinite(index, message)
        raise FloatingPointError(f"meta_backward: episode {index}: {message}")


def runs(episodes: Sequence[Mapping], chunk: int | None) -> list[range]:
    """Index ranges of at most `chunk` consecutive episodes (None: no bound) whose batches stack."""
    out: list[range] = []
    start = 0
    for i in range(1, len(episodes) + 1):
        full = chunk is not None and i - start == chunk
        if i == len(episodes) or full or _episode_shape(episodes[i]) != _episode_shape(episodes[start]):
            out.append(range(start, i))
            start = i
    return out


def _episode_shape(episode: Mapping) -> tuple:
    return shape_of(episode["support"]), shape_of(episode["query"])


def batched_meta_backward(
    maml: nn.Module,
    episodes: Sequence[Mapping[str, Mapping[str, Tensor]]],
    steps: int,
    episodes_in_meta_batch: int,
    backward: Callable[[Tensor], None] = Tensor.backward,
    on_nonfinite: Callable[[int, str], None] | None = None,
    net: nn.Module | None = None,
    chunk: int | None = None,
) -> MetaStepStats:
    """`meta_backward` with the episodes adapted together, `chunk` at a time (None: all; episodes whose
    batches differ in shape go in separate calls). Same arguments and result as the sequential engine;
    the loss is the DSAML loss (`batch_loss`). One backward per chunk of sum(query losses) /
    episodes_in_meta_batch."""
    inner = maml.module
    model = twin(inner)
    originals = dict(inner.named_parameters())
    buffers = dict(inner.named_buffers())
    loss = network_loss(model) if net is None else head_loss(model)
    q_losses: list[float] = []
    q_scores: list[dict[str, float]] = []
    inner_losses: list[list[float]] = []
    final_buffers: list[dict[str, Tensor]] = []
    for run in runs(episodes, chunk):
        chosen = [episodes[i] for i in run]
        if net is None:
            support = stack_batches([e["support"] for e in chosen])
            query = stack_batches([e["query"] for e in chosen])
        else:  # the body's features: support without gradient, query with (it reaches the body)
            support = stack_batches([body_batches(net, e["support"])[0] for e in chosen])
            query = stack_batches([query_features(net, e["query"]) for e in chosen])
        adaptation = adapt_batched(
            loss,
            stacked(originals, len(run), copies=False),
            stacked(buffers, len(run), copies=True),
            support,
            steps,
            maml.lr,
            maml.first_order,
            on_nonfinite,
            run.start,
        )
        values, scores = loss(adaptation.params, adaptation.buffers, query)
        check_finite(values, "non-finite query loss", on_nonfinite, run.start)
        backward(values.sum() / episodes_in_meta_batch)
        q_losses.extend(values.detach().tolist())
        per_episode = {k: v.detach().tolist() for k, v in scores.items()}
        q_scores.extend({k: v[i] for k, v in per_episode.items()} for i in range(len(run)))
        inner_losses.extend(adaptation.losses.t().tolist() if steps else [[] for _ in run])
        final_buffers.append(adaptation.buffers)
    merge_buffers(buffers, final_buffers)
    n = max(len(q_losses), 1)
    mean_scores = {k: sum(s[k] for s in q_scores) / n for k in (q_scores[0] if q_scores else {})}
    return MetaStepStats(query_loss=sum(q_losses) / n, query_scores=mean_scores, adapt_losses=inner_losses)


def query_features(net: nn.Module, query: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The body's pass over a query batch (with gradient): {"encoded", "attention_diagonal", labels}."""
    body = net.body(query["logmel"], query.get("global"))
    return {**body, "arousal": query["arousal"], "valence": query["valence"]}


def merge_buffers(buffers: dict[str, Tensor], episodes: list[dict[str, Tensor]]) -> None:
    """Write the episodes' buffers [E, ...] (several runs) back into the network's: floating ones (BatchNorm
    running statistics) as the mean over the episodes, counters as the original plus every episode's count."""
    if not episodes:
        return
    with torch.no_grad():
        for name, buffer in buffers.items():
            values = torch.cat([run[name] for run in episodes])
            if buffer.is_floating_point():
                buffer.copy_(values.mean(0))
            else:
                buffer.add_((values - buffer).sum(0))
