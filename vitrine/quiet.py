"""Keep our dependencies' deprecation notices out of what a user reads.

torchrec, fbgemm, torch.fx, ShardedTensor, SQLAlchemy (through MLflow) and Feast warn about APIs
that they themselves call: nothing a Vitrine user can act on. Filters match only warnings raised
from those packages' modules, so a deprecation in our own code still shows (and fails `-W error`).
Two notices are raised on our line though the API is our dependency's choice: TorchRec hands back
ShardedTensors (torch deprecates them) and ranx's numba kernels cast ids; those match by message.

Installed when `vitrine` is imported: every entry point (CLI, library, benchmarks, tests) imports
it before any stage. Feast's own import puts a global `simplefilter("once", DeprecationWarning)` in
front of every filter (feast/feature_view.py), which would show them all again: `feature_repo.store`
calls `quiet_dependencies()` once more right after importing Feast.
"""

from __future__ import annotations

import logging
import warnings

# Packages whose own deprecation notices are theirs to fix, not ours.
NOISY_PACKAGES = ("torchrec", "fbgemm_gpu", "torch", "sqlalchemy", "feast", "mlflow", "pydantic", "google", "pkg_resources")
# Notices raised at our call site about what a dependency made us use: (category, message regex).
NOISY_MESSAGES: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
    (Warning, r".*unsafe cast from uint64 to int64"),  # ranx's numba kernels (NumbaTypeSafetyWarning)
    # Importing Feast sets PROMETHEUS_MULTIPROC_DIR for the whole process (feast/metrics.py), and then every
    # `clear()` of a labelled metric warns; the service's metrics live in their own registry, where it works.
    (UserWarning, r"Clearing labels has not been implemented in multi-process mode"),
)
# torch.fx logs (not warns) once when torchrec asks whether it is being traced.
NOISY_LOGGERS = ("torch.fx._symbolic_trace",)


def quiet_dependencies() -> None:
    """Install the filters in front of the others (idempotent: `warnings` drops exact duplicates first)."""
    module = r"(" + "|".join(NOISY_PACKAGES) + r")(\.|$)"
    for deprecation in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=deprecation, module=module)
    for category, message in NOISY_MESSAGES:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
