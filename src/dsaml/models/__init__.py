"""The DSAML network (docs/method.md, "Network"): config, blocks, conversion of the original, checkpoints."""

from dsaml.models.config import DSAMLConfig
from dsaml.models.network import DSAMLNet

__all__ = ["DSAMLConfig", "DSAMLNet"]
