"""Callbacks: results files at the end of a test run, wandb media, DDP parameter-consistency check."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import WandbLogger

from dsaml.training.results import COLUMNS, write_results

log = logging.getLogger(__name__)


class ResultsWriter(L.Callback):
    """At the end of `trainer.test`, write results.json / results.md to `output_dir` (rank 0) and, with a
    wandb logger, log the results as a table."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "test_results", None)
        if not results or not trainer.is_global_zero:
            return
        path = write_results(results, self.output_dir, title=pl_module.task_cfg.name)
        log.info("test results written to %s", path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                columns = ["protocol", *COLUMNS]
                logger.log_table(
                    "test/results",
                    columns=columns,
                    data=[[row[c] for c in columns] for row in results["rows"]],
                )


def curves_figure(example: dict[str, Any]):
    """Predicted vs true arousal/valence of one sequence (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred_a, pred_v, true_a, true_v = (c.numpy() for c in example["curves"])
    fig, axes = plt.subplots(2, 1, figsize=(8, 4), sharex=True)
    for ax, pred, true, name in ((axes[0], pred_a, true_a, "arousal"), (axes[1], pred_v, true_v, "valence")):
        ax.plot(true, label="true")
        ax.plot(pred, label="predicted")
        ax.set_ylabel(name)
    axes[1].set_xlabel("segment (0.5 s)")
    axes[0].legend(loc="upper right")
    rater = f", rater {example['rater']}" if example.get("rater") is not None else ""
    fig.suptitle(f"song {example['song']}{rater} ({example['protocol']})")
    fig.tight_layout()
    return fig


class WandbMedia(L.Callback):
    """With a wandb logger: attention maps of one validation clip every `every_n_epochs`, and
    predicted-vs-true curves of a few test sequences."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs

    @staticmethod
    def _wandb(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        logger = self._wandb(trainer)
        if (
            logger is None
            or batch_idx != 0
            or not trainer.is_global_zero
            or trainer.sanity_checking
            or trainer.current_epoch % self.every_n_epochs
        ):
            return
        clip = batch["query"] if pl_module.meta else batch  # PDMER validation: an Episode, else a ClipBatch
        glob = clip.get("global")
        with torch.no_grad():
            out = pl_module.net(clip["logmel"][:1], None if glob is None else glob[:1], return_attention=True)
        maps = out["attention_maps"][0].mean(dim=1)  # [passes * L, T, T], head-averaged
        # 8-bit grey images, each map scaled to its maximum (wandb stores a float array's values as they are,
        # so [0, 1] floats would all but vanish)
        images = [(m / m.max().clamp_min(1e-12) * 255).round().to(torch.uint8).cpu().numpy() for m in maps]
        logger.log_image(
            "val/attention_maps",
            images,
            step=trainer.global_step,
            caption=[
                f"layer {i} ({'local' if i < len(images) // 2 else 'global'})"
                if len(images) > 1
                else f"layer {i}"
                for i in range(len(images))
            ],
        )

    def on_test_end(self, trainer, pl_module) -> None:
        logger = self._wandb(trainer)
        if logger is None or not trainer.is_global_zero or not getattr(pl_module, "examples", None):
            return
        import matplotlib.pyplot as plt

        figures = [curves_figure(example) for example in pl_module.examples]
        logger.log_image("test/curves", figures, step=trainer.global_step)
        for fig in figures:
            plt.close(fig)


class ParamConsistency(L.Callback):
    """Under DDP, every `every_n_steps` training steps compare all ranks' parameters with rank 0's and
    fail if the largest absolute difference exceeds `tolerance` (logged as ddp/param_divergence)."""

    def __init__(self, every_n_steps: int = 1, tolerance: float = 0.0) -> None:
        self.every_n_steps, self.tolerance = every_n_steps, tolerance

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size == 1 or not dist.is_initialized() or trainer.global_step % self.every_n_steps:
            return
        flat = torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        divergence = (flat - reference).abs().max()
        dist.all_reduce(divergence, op=dist.ReduceOp.MAX)
        pl_module.log(
            "ddp/param_divergence", float(divergence), on_step=True, on_epoch=False, rank_zero_only=True
        )
        if float(divergence) > self.tolerance:
            raise RuntimeError(
                f"DDP ranks hold different parameters after step {trainer.global_step}: max |diff| = "
                f"{float(divergence):.3e} > tolerance {self.tolerance:.1e}"
            )
