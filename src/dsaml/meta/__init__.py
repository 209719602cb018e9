"""Meta-learning and personalisation: adaptation to one rater (MAML inner loop, head-only inner loop,
output calibration), automatic choice among them, and the meta-gradient of a meta-batch.

Public API::

    from dsaml.meta import adapt, adapt_head
    adaptation = adapt(net, support_batch, steps=16, lr=5e-3)      # net is never modified
    adapted_net = adaptation.net                                     # call like a DSAMLNet

    from dsaml.meta import AdaptationConfig, SlidingWindows, personalize_net, select
    config = AdaptationConfig(method="head_calibrate").resolve(task)  # steps / lr from the task
    personalized = personalize_net(net, songs, config, SlidingWindows(window=60), prior)
    arousal, valence = personalized.predict(SlidingWindows(window=60), song)

The names below are the public API, by concern: adapting one network (`adapt`, `adapt_head`, `Adaptation`,
`HeadAdaptedNet`); meta-training (`maml_wrap`, `meta_backward`, `MetaStepStats`, `batch_loss`); personalising
(`AdaptationConfig`, `METHODS`, `AUTO`, `SELECTION_RULES`, `personalize_net`, `Personalized`, `moving`,
`select`, `Selection`) and predicting whole songs (`SlidingWindows`); the output map (`Calibration`,
`CalibrationPrior`, `calibration_prior`, `estimate_prior`, `fit_calibration`). The steps of `select`
(validation folds, candidate scores, selection rules) are in `dsaml.meta.selection`; the quiet learn2learn
import in `dsaml.meta.l2l`.
"""

from dsaml.meta.adaptation import (
    Adaptation,
    HeadAdaptedNet,
    MetaStepStats,
    adapt,
    adapt_head,
    batch_loss,
    maml_wrap,
    meta_backward,
)
from dsaml.meta.calibration import Calibration, CalibrationPrior, estimate_prior, fit_calibration
from dsaml.meta.methods import (
    AUTO,
    METHODS,
    SELECTION_RULES,
    AdaptationConfig,
    Personalized,
    SlidingWindows,
    calibration_prior,
    moving,
    personalize_net,
)
from dsaml.meta.selection import Selection, select

__all__ = [
    "AUTO",
    "METHODS",
    "SELECTION_RULES",
    "Adaptation",
    "AdaptationConfig",
    "Calibration",
    "CalibrationPrior",
    "HeadAdaptedNet",
    "MetaStepStats",
    "Personalized",
    "SlidingWindows",
    "Selection",
    "adapt",
    "adapt_head",
    "batch_loss",
    "calibration_prior",
    "estimate_prior",
    "fit_calibration",
    "maml_wrap",
    "meta_backward",
    "moving",
    "personalize_net",
    "select",
]
