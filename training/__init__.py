"""Offline jobs: fitting the retrievers and the reranker, evaluation, the pipeline and its promotion."""

import vitrine  # noqa: F401  (first: installs the filters of our dependencies' deprecation notices)

