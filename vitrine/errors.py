"""The one error tree of Vitrine.

    VitrineError                 base; never raised itself
    ├── InvalidInput             the caller's input is wrong: a file, row, field or value (exit 2, HTTP 422)
    │   ├── UnusableFile         a whole input file cannot be used (missing columns, wrong types)
    │   ├── NotFound             a well-formed id of nothing there (HTTP 404)
    │   ├── NotAuthorized        no API key, or a wrong one (HTTP 401)
    │   └── PayloadTooLarge      a request body or batch over its limit (HTTP 413)
    ├── FeatureUnavailable       the feature store cannot answer (source missing, Redis down) (exit 3, HTTP 503)
    ├── ModelUnavailable         a model or index is absent or does not load (exit 4, HTTP 503)
    │   └── UntrustedArtifact    a model dir not as its saver wrote it: a pickle, a changed file, odd config
    ├── StorageUnavailable       a file under the data dir cannot be written: read-only, full, no permission (exit 5, HTTP 503)
    └── Busy                     another process holds the data dir's lock (a pipeline run) (exit 6)

The CLI (`vitrine.cli`) and the HTTP layer (`ranking.service`) map these to exit and status codes,
each in one place. Messages name the file, row, field and value wherever there is one.
"""

from __future__ import annotations


class VitrineError(Exception):
    """Base of every error Vitrine raises on purpose."""

    exit_code = 1
    http_status = 500


class InvalidInput(VitrineError):
    """Input that a person must fix: the message says where and what."""

    exit_code = 2
    http_status = 422


class UnusableFile(InvalidInput):
    """A whole input file is unusable (missing required columns, unreadable, wrong types)."""


class NotFound(InvalidInput):
    """A well-formed id that names nothing (an item not in the catalog): HTTP 404, not a malformed request."""

    http_status = 404


class NotAuthorized(InvalidInput):
    """A request without the API key the service was started with, or with a wrong one."""

    http_status = 401


class PayloadTooLarge(InvalidInput):
    """A request body (or a batch in it) over the service's limit: refused before it is parsed."""

    http_status = 413


class FeatureUnavailable(VitrineError):
    """The feature store (offline source or online store) cannot serve the request."""

    exit_code = 3
    http_status = 503


class ModelUnavailable(VitrineError):
    """A model, encoder or index cannot be found or loaded."""

    exit_code = 4
    http_status = 503


class StorageUnavailable(VitrineError):
    """A file under the data dir cannot be written (read-only file system, disk full, no permission).

    Nothing was written then; the message names the path and the operating system's reason.
    """

    exit_code = 5
    http_status = 503

    def __init__(self, message: str, reason: str = "unknown") -> None:
        super().__init__(message)
        self.reason = reason  # the errno name (EROFS, ENOSPC, EACCES), for metrics and logs


class UntrustedArtifact(ModelUnavailable):
    """A model directory that is not what Vitrine's own savers wrote: a pickle-capable file, a file changed
    since its manifest was written, a config with unknown keys or wrong types, tensors of other shapes than
    its config implies, a model text that is not LightGBM's (`ranking.artifact_check`). Never loaded."""


class Busy(VitrineError):
    """Another process holds a lock this work needs (a pipeline run over the same data dir); the message names it."""

    exit_code = 6
