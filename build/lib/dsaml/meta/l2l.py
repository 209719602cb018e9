"""Import learn2learn once, without its noisy banner.

learn2learn 0.2.0 imports gym-related modules that print a deprecation banner to stderr and emit
warnings; every dsaml module goes through `learn2learn()` instead of `import learn2learn`.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from types import ModuleType


def learn2learn() -> ModuleType:
    """Return the imported `learn2learn` package (stderr/stdout and warnings silenced during import)."""
    if "learn2learn" in sys.modules:
        return sys.modules["learn2learn"]
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        import learn2learn as l2l
    return l2l
