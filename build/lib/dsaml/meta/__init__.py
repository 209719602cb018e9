"""Meta-learning: adaptation to one rater (MAML inner loop) and the meta-gradient of a meta-batch.

Public API::

    from dsaml.meta import adapt
    adaptation = adapt(net, support_batch, steps=16, lr=5e-3)      # net is never modified
    adapted_net = adaptation.net                                     # call like a DSAMLNet

`learn2learn()` returns the learn2learn package imported without its stderr banner.
"""

from dsaml.meta.adaptation import Adaptation, MetaStepStats, adapt, batch_loss, maml_wrap, meta_backward
from dsaml.meta.l2l import learn2learn

__all__ = ["Adaptation", "MetaStepStats", "adapt", "batch_loss", "learn2learn", "maml_wrap", "meta_backward"]
