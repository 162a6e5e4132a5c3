"""Vitrine: a multimodal recommender for online shops.

This package holds what every stage shares: the data-dir layout (`paths`), the error tree
(`errors`), the shop data contract and its producers (`shop`), and the `vitrine` CLI (`cli`).
The stages themselves live in `embeddings`, `training` and `ranking`.
"""

from vitrine.errors import FeatureUnavailable, InvalidInput, ModelUnavailable, VitrineError
from vitrine.paths import DataDir
from vitrine.quiet import quiet_dependencies

quiet_dependencies()

__all__ = ["DataDir", "FeatureUnavailable", "InvalidInput", "ModelUnavailable", "VitrineError"]
