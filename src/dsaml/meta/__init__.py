"""Meta-learning and personalisation: adaptation to one rater (MAML inner loop, head-only inner loop,
output calibration), automatic choice among them, and the meta-gradient of a meta-batch.

Public API::

    from dsaml.meta import adapt, adapt_head
    adaptation = adapt(net, support_batch, steps=16, lr=5e-3)      # net is never modified
    adapted_net = adaptation.net                                     # call like a DSAMLNet

    from dsaml.meta import AdaptationConfig, Predict, personalize_net, select
    config = AdaptationConfig(method="head_calibrate").resolve(task)  # steps / lr from the task
    personalized = personalize_net(net, songs, config, Predict(window=60), prior)
    arousal, valence = personalized.predict(Predict(window=60), song)

`learn2learn()` returns the learn2learn package imported without its stderr banner. The steps of `select`
(validation folds, candidate scores, selection rules) are in `dsaml.meta.selection`.
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
from dsaml.meta.l2l import learn2learn
from dsaml.meta.methods import (
    AUTO,
    METHODS,
    SELECTION_RULES,
    AdaptationConfig,
    Personalized,
    Predict,
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
    "Predict",
    "Selection",
    "adapt",
    "adapt_head",
    "batch_loss",
    "calibration_prior",
    "estimate_prior",
    "fit_calibration",
    "learn2learn",
    "maml_wrap",
    "meta_backward",
    "moving",
    "personalize_net",
    "select",
]
