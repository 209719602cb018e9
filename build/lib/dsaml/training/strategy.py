"""DDP that leaves a meta-learning module unwrapped.

DistributedDataParallel reduces gradients from hooks fired by each backward pass and expects one backward
per forward; MAML's clone/adapt and several query backwards per step break that (learnables/learn2learn#170).
When the LightningModule says `sync_gradients_manually` (PDMER), this strategy skips the DDP wrapper and the
module all-reduces its meta-gradient itself; otherwise (DMER) it is Lightning's DDP unchanged.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.ddp import _sync_module_states


class MetaDDPStrategy(DDPStrategy):
    """`DDPStrategy` + no DDP wrapper for modules that synchronise their own gradients."""

    def configure_ddp(self) -> None:
        if getattr(self.lightning_module, "sync_gradients_manually", False):
            _sync_module_states(self.model)  # identical start on every rank (rank 0's weights and buffers)
            return
        super().configure_ddp()
