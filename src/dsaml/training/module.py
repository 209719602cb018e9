"""`DSAMLModule`: the LightningModule for DMER (plain training) and PDMER (first/second-order MAML).

The network lives in `self.net` (checkpoints hold ``state_dict["net.*"]`` and ``hyper_parameters["model"]``,
``["features"]``, ``["task"]``, as `dsaml.models.checkpoint.load_network` expects). PDMER uses manual
optimisation: per meta-batch, each task's query gradient is accumulated (divided by the meta-batch size),
summed over DDP processes by hand (`sync_gradients_manually`; the network is not wrapped in
DistributedDataParallel, see learnables/learn2learn#170), and one Adam step is taken.
Logged: ``{train,val,test}/loss`` and ``/{arousal,valence}_{ccc,pcc,rmse}``, ``/average``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from dsaml import __version__ as dsaml_version
from dsaml.data.batch import ClipBatch, Episode, MetaBatch, SongItem, as_batch, clips_of
from dsaml.losses import dsaml_loss
from dsaml.meta import (
    AdaptationConfig,
    CalibrationPrior,
    SlidingWindows,
    adapt,
    adapt_head,
    batch_loss,
    maml_wrap,
    meta_backward,
)
from dsaml.meta.adaptation import DEFAULT_META_ENGINE
from dsaml.meta.batched_adapt import adapt_many
from dsaml.meta.listener_prior import ListenerPrior
from dsaml.meta.readout import adapt_readout
from dsaml.metrics import REPORTED, mean_scores, scores_of
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.models.checkpoint import FORMAT as CHECKPOINT_FORMAT
from dsaml.training.config import PROTOCOLS, TaskConfig
from dsaml.training.evaluation import (
    estimate_calibration_prior,
    estimate_model_prior,
    estimate_training_listener_prior,
    run_protocols_many,
)

# test items whose protocols the batched engine runs together when task.meta_chunk is null (bounds the items
# held in memory; the pairs of equal support shapes among them adapt in one call)
TEST_GROUP = 16


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message names the step and the batch's songs."""


def _metric_dict(scores: dict[str, Tensor | float]) -> dict[str, float]:
    """dsaml_loss's scores -> floats of the REPORTED keys (the regulariser left out)."""
    return {
        key: float(value.detach()) if isinstance(value, Tensor) else float(value)
        for key, value in scores.items()
        if key in REPORTED
    }


class DSAMLModule(L.LightningModule):
    """The LightningModule training and testing a `DSAMLNet` (``self.net``) for DMER or PDMER.

    Batches are the datamodule's (`dsaml.data.datamodule`): DMER `ClipBatch`es (logmel [B, T, 51, 128],
    arousal / valence [B, T]), PDMER `MetaBatch`es (training) and `Episode`s (validation), and one
    `SongItem` (a whole test song) per test step.

    Args:
        model (dict): a `DSAMLConfig` dict.
        task (dict): a `TaskConfig` dict (its name, "dmer" or "pdmer", picks plain training or MAML).
        features (dict or None): the store's feature config (saved for `Predictor`).
        calibration_prior (dict or None): the calibration prior (`CalibrationPrior.to_dict()`; when None,
            estimated at setup from the training raters' curves vs the averaged ones, then after every
            validation epoch from the network's own predictions on the held-out songs or raters; saved with
            every checkpoint).
        adaptation (dict or None): how the test protocols adapt (an `AdaptationConfig` dict, the
            `adaptation` group; None: its defaults).
        listener_prior (dict or None): the prior over listeners' read-outs (`ListenerPrior.to_dict()`, for
            the method listener_prior); estimated after every validation epoch from the training raters'
            songs when the store has per-rater curves; saved with every checkpoint and attached to
            ``self.net.listener_prior``.

    Raises:
        ConfigError: an invalid model, task or adaptation config.
    """

    def __init__(
        self,
        model: dict[str, Any],
        task: dict[str, Any],
        features: dict[str, Any] | None = None,
        calibration_prior: dict[str, Any] | None = None,
        adaptation: dict[str, Any] | None = None,
        listener_prior: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model_cfg = DSAMLConfig.from_dict(dict(model))
        self.task_cfg = TaskConfig.from_dict(dict(task))
        self.adaptation_cfg = AdaptationConfig.from_dict(adaptation)
        self.save_hyperparameters(
            {
                "model": self.model_cfg.to_dict(),
                "task": self.task_cfg.to_dict(),
                "adaptation": self.adaptation_cfg.to_dict(),
                "features": dict(features or {}),
                "calibration_prior": calibration_prior,
                "listener_prior": listener_prior,
            }
        )
        self.net = DSAMLNet(self.model_cfg)
        self.set_listener_prior(listener_prior)
        self.meta = self.task_cfg.name == "pdmer"
        self.automatic_optimization = not self.meta
        self.head_only = self.meta and self.task_cfg.inner_loop == "head"
        self.readout = self.meta and self.task_cfg.inner_loop == "readout"  # closed form: no wrapper
        if self.meta and not self.readout:  # not a registered submodule: the weights stay under "net." only
            inner = self.net.head if self.head_only else self.net
            self.__dict__["maml"] = maml_wrap(inner, self.task_cfg.inner_lr, self.task_cfg.first_order)
        self._eval_rows: list[dict[str, Any]] = []
        self.test_results: dict[str, list[dict[str, Any]]] | None = None
        self.examples: list[dict[str, Any]] = []  # a few (song, protocol, curves) for plots

    @property
    def sync_gradients_manually(self) -> bool:
        """PDMER reduces gradients itself; `MetaDDPStrategy` then leaves the module unwrapped."""
        return self.meta

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Mark the file as a dsaml checkpoint (read by `dsaml.models.checkpoint.load_network`)."""
        checkpoint["dsaml"] = {"format": CHECKPOINT_FORMAT, "version": dsaml_version}
        stored = checkpoint.setdefault("hyper_parameters", {})
        stored["calibration_prior"] = self.hparams.calibration_prior
        stored["listener_prior"] = self.hparams.get("listener_prior")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run continues with the priors of the weights it resumes from."""
        stored = checkpoint.get("hyper_parameters", {})
        if stored.get("calibration_prior") is not None:
            self.hparams.calibration_prior = stored["calibration_prior"]
        if stored.get("listener_prior") is not None:
            self.set_listener_prior(stored["listener_prior"])

    def set_listener_prior(self, values: dict[str, Any] | None) -> None:
        """Keep the listener prior (`ListenerPrior.to_dict()` or None) in the hyper-parameters and on
        ``self.net.listener_prior``."""
        self.hparams.listener_prior = values
        self.net.listener_prior = None if values is None else ListenerPrior.from_dict(values)

    def setup(self, stage: str) -> None:
        """Estimate the calibration prior from the training raters of the datamodule's store (once; kept
        when the module was built with one)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.hparams.calibration_prior is None and datamodule is not None:
            prior = estimate_calibration_prior(datamodule.reader.store)
            self.hparams.calibration_prior = None if prior is None else prior.to_dict()

    @property
    def calibration_prior(self) -> CalibrationPrior | None:
        """The current calibration prior (from ``hparams.calibration_prior``), or None."""
        stored = self.hparams.calibration_prior
        return None if stored is None else CalibrationPrior.from_dict(dict(stored))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the network's parameters with task.lr and task.weight_decay."""
        return torch.optim.Adam(
            self.net.parameters(), lr=self.task_cfg.lr, weight_decay=self.task_cfg.weight_decay
        )

    # ------------------------------------------------------------------ training
    def _nonfinite(self, what: str, songs: list[str], where: str) -> None:
        raise NonFiniteLossError(
            f"{what} at global step {self.global_step} (epoch {self.current_epoch}, {where}); "
            f"songs in the batch: {', '.join(map(str, songs))}. Lower task.lr/task.inner_lr or check these "
            "songs' features and labels in the store"
        )

    def training_step(self, batch: ClipBatch | MetaBatch, batch_idx: int) -> Tensor | None:
        """One training step; logs train/loss and the scores.

        Args:
            batch (ClipBatch or MetaBatch): DMER: B clips (logmel [B, T, 51, 128], arousal / valence
                [B, T], songs); PDMER: this rank's episodes of one meta-step.
            batch_idx (int): the batch's index in the epoch.

        Returns:
            Tensor or None: DMER: the loss (0-dim; Lightning steps the optimiser); PDMER: None (one
            meta-step taken here: the inner loops, the query gradients, one Adam step).

        Raises:
            NonFiniteLossError: a NaN / inf loss (naming the step and the batch's songs).
        """
        if self.meta:
            return self._meta_step(batch)  # type: ignore[arg-type]
        loss, scores = batch_loss(self.net, batch)
        if not torch.isfinite(loss):
            self._nonfinite(f"non-finite training loss {loss.item()}", batch["songs"], "DMER batch")
        self._log_split("train", float(loss.detach()), _metric_dict(scores), len(batch["songs"]))
        return loss

    def _meta_step(self, batch: MetaBatch) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        episodes = batch["episodes"]

        def nonfinite(index: int, message: str) -> None:
            episode = episodes[index]
            self._nonfinite(
                message, episode["songs"], f"meta-step {batch['step']}, episode of rater {episode['rater']}"
            )

        stats = meta_backward(
            self.net if self.readout else self.maml,
            episodes,
            self.task_cfg.inner_steps,
            int(batch["episodes_per_step"]),
            backward=self.manual_backward,
            on_nonfinite=nonfinite,
            net=self.net if self.head_only else None,
            engine=self.task_cfg.meta_engine,
            chunk=self.task_cfg.meta_chunk,
            readout_strength=self.task_cfg.readout_strength if self.readout else None,
        )
        if self.trainer.world_size > 1:
            self._all_reduce_gradients()
        optimizer.step()
        if self.trainer.world_size > 1:
            self._average_buffers()
        metrics = _metric_dict(stats.query_scores)
        self._log_split("train", stats.query_loss, metrics, len(episodes), sync=self.trainer.world_size > 1)
        if stats.adapt_losses and stats.adapt_losses[0]:
            first = sum(losses[0] for losses in stats.adapt_losses) / len(stats.adapt_losses)
            self.log("train/support_loss_before", first, batch_size=len(episodes))

    def _all_reduce_gradients(self) -> None:
        """Sum the meta-gradient over processes (each already divided by the global meta-batch size)."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def _average_buffers(self) -> None:
        """BatchNorm running statistics were updated by different tasks on each process: average them."""
        for buf in self.net.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(self.trainer.world_size)
            else:
                dist.broadcast(buf, src=0)

    def _log_split(
        self, split: str, loss: float, metrics: dict[str, float], batch_size: int, sync: bool = False
    ) -> None:
        values = {f"{split}/loss": loss, **{f"{split}/{k}": v for k, v in metrics.items()}}
        on_step = split == "train"
        self.log_dict(
            values, on_step=on_step, on_epoch=True, prog_bar=False, batch_size=batch_size, sync_dist=sync
        )
        self.log(
            f"{split}/loss_bar",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=batch_size,
            logger=False,
        )

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        """Clear the epoch's score rows and waiting episodes."""
        self._eval_rows, self._waiting = [], []

    def validation_step(self, batch: ClipBatch | Episode, batch_idx: int) -> None:
        """Score one validation batch (rows logged as means at the epoch's end).

        Args:
            batch (ClipBatch or Episode): DMER: held-out clips, scored with a plain forward; PDMER: one
                held-out rater's episode, adapted on its support clips (the task's inner loop for
                task.adapt_steps steps; readout: the ridge read-out) and scored on its query clips
                (queued: the batched engine adapts `test_group` episodes together).
            batch_idx (int): the batch's index.
        """
        if not self.meta:  # DMER: held-out clips, plain forward
            out = self.net(batch["logmel"], batch.get("global"))
            rows = [
                scores_of(out["arousal"][i], out["valence"][i], batch["arousal"][i], batch["valence"][i])
                for i in range(len(batch["songs"]))
            ]
            loss = float(dsaml_loss(out, batch["arousal"], batch["valence"])[0])
            self._eval_rows.extend(
                {"id": song, "loss": loss, **r} for song, r in zip(batch["songs"], rows, strict=True)
            )
            return
        # PDMER: held-out raters; adapt on the support clips (the meta-training inner loop; readout: the
        # test-time ridge, one support clip per song, strength chosen leave-one-song-out), score the query;
        # the batched engine adapts `test_group` episodes together (the rest at the epoch's end)
        self._waiting.append(batch)
        if len(self._waiting) >= self.test_group:
            self._validate_waiting()

    def _validate_waiting(self) -> None:
        cfg = self.task_cfg
        episodes, self._waiting = self._waiting, []
        if self.readout:
            nets = [adapt_readout(self.net, [as_batch(c) for c in clips_of(e["support"])]) for e in episodes]
        elif cfg.meta_engine == "batched":
            learner = "head" if self.head_only else "maml"
            supports = [[episode["support"]] for episode in episodes]
            adapted = dict(
                adapt_many(self.net, supports, learner, cfg.adapt_steps, cfg.inner_lr, cfg.meta_chunk)
            )
            nets = [adapted[i] for i in range(len(episodes))]
        else:
            run = adapt_head if self.head_only else adapt
            nets = [
                run(
                    self.net, e["support"], cfg.adapt_steps, lr=cfg.inner_lr, first_order=cfg.first_order
                ).net.eval()
                for e in episodes
            ]
        for episode, net in zip(episodes, nets, strict=True):
            query = episode["query"]
            out = net(query["logmel"], query.get("global"))
            loss = float(dsaml_loss(out, query["arousal"], query["valence"])[0])
            for i in range(len(query["songs"])):
                row = scores_of(
                    out["arousal"][i], out["valence"][i], query["arousal"][i], query["valence"][i]
                )
                self._eval_rows.append({"id": f"{episode['index']}:{i}", "loss": loss, **row})

    def on_validation_epoch_end(self) -> None:
        """Log val/loss and the scores (means over clips / query clips of all processes); then, outside the
        sanity check, re-estimate the calibration prior from the current weights."""
        if self.meta:
            self._validate_waiting()
        rows = self._gather_rows(self._eval_rows)
        if not rows:
            return
        means = {k: sum(r[k] for r in rows) / len(rows) for k in ("loss",) + REPORTED}
        self.log_dict({f"val/{k}": v for k, v in means.items()}, sync_dist=True)
        if not self.trainer.sanity_checking:
            self._estimate_model_prior()

    def _estimate_model_prior(self) -> None:
        """The priors of the current weights, saved with the checkpoints of this epoch: the calibration prior
        from their predictions on the held-out raters' songs (`estimate_model_prior`) and the listener prior
        from the training raters' songs (`estimate_training_listener_prior`). Each is kept as it was when the
        datamodule holds nothing to estimate it from."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        predictor = SlidingWindows(**self.task_cfg.song_prediction)
        pairs = datamodule.prior_pairs()
        prior = estimate_model_prior(self.net, datamodule.reader, pairs, predictor) if pairs else None
        if prior is not None:
            self.hparams.calibration_prior = prior.to_dict()
        listeners = estimate_training_listener_prior(self.net, datamodule.reader, predictor.window)
        if listeners is not None:
            self.set_listener_prior(listeners.to_dict())

    def _gather_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All processes' rows, de-duplicated by id (distributed samplers pad with repeats)."""
        if self.trainer.world_size == 1 or not dist.is_initialized():
            return rows
        gathered: list[list[dict[str, Any]]] = [None] * self.trainer.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, rows)
        unique = {}
        for part in gathered:
            for row in part:
                unique.setdefault(row["id"], row)
        return [unique[k] for k in sorted(unique)]

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        """Clear the score rows, examples and waiting items."""
        self._eval_rows, self.examples, self._waiting = [], [], []

    def on_test_start(self) -> None:
        """Resolve the adaptation settings against the task and load the calibration prior; ConfigError
        before the first item when the method needs a prior that is missing (`calibration_prior`)."""
        from dsaml.meta import calibration_prior
        from dsaml.meta.methods import needed_listener_prior

        self._adaptation = self.adaptation_cfg.resolve(self.task_cfg.to_dict())
        self._prior = calibration_prior(self._adaptation, self.hparams.calibration_prior)
        if self._adaptation.learner == "listener_prior":
            needed_listener_prior(self.net)

    def test_step(self, item: SongItem, batch_idx: int) -> None:
        """Queue the item with its seed (drawn now: `StepSeed` reseeded for it); the sequential engine runs it
        at once, the batched one when `test_group` items wait (the rest at the epoch's end).

        Args:
            item (SongItem): one whole test song (logmel [T, 51, 128], arousal / valence [T]) with its rater
                and, for the cross-song protocol, its support.
            batch_idx (int): the item's index (the first items' curves are kept in `examples`).
        """
        self._waiting.append((item, batch_idx, int(torch.randint(0, 2**62, (1,)))))
        if len(self._waiting) >= self.test_group:
            self._run_waiting()

    @property
    def test_group(self) -> int:
        """Test items (validation episodes) adapted together: 1 (sequential engine; a DMER task, whose
        protocols do not adapt), else task.meta_chunk or 16."""
        cfg = self.task_cfg
        return 1 if self.engine == "sequential" else cfg.meta_chunk or TEST_GROUP

    @property
    def engine(self) -> str:
        """task.meta_engine (PDMER); a DMER task has none and runs its items one at a time."""
        return self.task_cfg.meta_engine if self.meta else DEFAULT_META_ENGINE

    def _run_waiting(self) -> None:
        cfg = self.task_cfg
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        results = run_protocols_many(
            self.net,
            [item for item, _, _ in waiting],
            cfg.test_protocols,
            **cfg.song_prediction,
            adaptation=self._adaptation,
            prior=self._prior,
            seeds=[seed for _, _, seed in waiting],
            engine=self.engine,
            chunk=cfg.meta_chunk if self.meta else None,
        )
        for (item, batch_idx, _), result in zip(waiting, results, strict=True):
            self._add_rows(item, batch_idx, result)

    def _add_rows(self, item: SongItem, batch_idx: int, results: dict[str, tuple]) -> None:
        for protocol, (scores, curves) in results.items():
            self._eval_rows.append(
                {
                    "id": f"{protocol}:{int(item['index']):08d}",
                    "protocol": protocol,
                    "song": item["song"],
                    "rater": item.get("rater"),
                    **scores,
                }
            )
            if len(self.examples) < 8 and batch_idx < 3:
                self.examples.append(
                    {
                        "song": item["song"],
                        "rater": item.get("rater"),
                        "protocol": protocol,
                        "curves": [c.detach().cpu() for c in curves],
                    }
                )

    def on_test_epoch_end(self) -> None:
        """Run the waiting items, gather every process's rows into `test_results` (`summarize_rows`) and log
        test/<protocol>/<score>; the primary protocol (DMER: dmer; PDMER: pdmer_within_song) also as
        test/<score> and test/loss = 1 - average."""
        self._run_waiting()
        rows = self._gather_rows(self._eval_rows)
        self.test_results = summarize_rows(rows, self.task_cfg.test_protocols)
        primary = PROTOCOLS[self.task_cfg.name][-2 if self.meta else 0]  # pdmer: within_song
        for row in self.test_results["rows"]:
            values = {f"test/{row['protocol']}/{k}": row[k] for k in REPORTED}
            if row["protocol"] == primary:
                values.update({f"test/{k}": row[k] for k in REPORTED})
                values["test/loss"] = 1.0 - row["average"]
            self.log_dict(values, sync_dist=True)


def summarize_rows(rows: list[dict[str, Any]], protocols: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per-sequence score rows -> results.json content.

    Args:
        rows (list[dict[str, Any]]): one row per (protocol, test sequence): "protocol", "rater" (None for
            averaged curves) and the `REPORTED` scores.
        protocols (list[str]): the protocols, in the order reported.

    Returns:
        dict[str, list[dict[str, Any]]]: "rows": one per protocol with rows (its `REPORTED` means over
        sequences, songs or song-rater pairs, and "n" their count); "per_rater": the same per (protocol,
        rater), raters sorted.
    """
    out: dict[str, list[dict[str, Any]]] = {"rows": [], "per_rater": []}
    for protocol in protocols:
        selected = [r for r in rows if r["protocol"] == protocol]
        if not selected:
            continue
        out["rows"].append({"protocol": protocol, **mean_scores(selected)})
        raters = sorted({r["rater"] for r in selected if r["rater"] is not None})
        for rater in raters:
            mine = [r for r in selected if r["rater"] == rater]
            out["per_rater"].append({"protocol": protocol, "rater": rater, **mean_scores(mine)})
    return out
