"""The one error tree of Vitrine.

    VitrineError                 base; never raised itself
    ├── InvalidInput             the caller's input is wrong: a file, row, field or value (exit 2, HTTP 422)
    │   ├── UnusableFile         a whole input file cannot be used (missing columns, wrong types)
    │   └── NotFound             a well-formed id of nothing there (HTTP 404)
    ├── FeatureUnavailable       the feature store cannot answer (source missing, Redis down) (exit 3, HTTP 503)
    └── ModelUnavailable         a model or index is absent or does not load (exit 4, HTTP 503)

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


class FeatureUnavailable(VitrineError):
    """The feature store (offline source or online store) cannot serve the request."""

    exit_code = 3
    http_status = 503


class ModelUnavailable(VitrineError):
    """A model, encoder or index cannot be found or loaded."""

    exit_code = 4
    http_status = 503
