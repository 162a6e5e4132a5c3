"""Keep our dependencies' deprecation notices out of what a user reads.

torchrec, fbgemm, torch.fx, ShardedTensor, SQLAlchemy (through MLflow) and Feast warn about APIs
that they themselves call: nothing a Vitrine user can act on. Filters match only warnings raised
from those packages' modules, so a deprecation in our own code still shows (and fails `-W error`).

Installed once, when `vitrine` is imported: every entry point (CLI, library, benchmarks, tests)
imports it before any stage.
"""

from __future__ import annotations

import logging
import warnings

# Packages whose own deprecation notices are theirs to fix, not ours.
NOISY_PACKAGES = ("torchrec", "fbgemm_gpu", "torch", "sqlalchemy", "feast", "mlflow", "pydantic", "google", "pkg_resources")
# torch.fx logs (not warns) once when torchrec asks whether it is being traced.
NOISY_LOGGERS = ("torch.fx._symbolic_trace",)


def quiet_dependencies() -> None:
    """Install the filters (idempotent)."""
    module = r"(" + "|".join(NOISY_PACKAGES) + r")(\.|$)"
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=module)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
