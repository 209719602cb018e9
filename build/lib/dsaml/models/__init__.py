"""The DSAML network (spec section 2): config, modules, conversion from the original, checkpoints."""

from dsaml.models.config import DSAMLConfig
from dsaml.models.network import DSAMLNet

__all__ = ["DSAMLConfig", "DSAMLNet"]
