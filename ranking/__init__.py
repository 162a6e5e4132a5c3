"""The online path: user tower, ANN candidates, item features, LightGBM rerank, top-k; API and HTTP service.

    from ranking import recommend
    recommend("U0000042", k=20)          # -> RecommendationList of Recommendation(item_id, score, ...)

`recommend` and `Recommender` come from `ranking.recommender`; they are imported on first use so that
`import ranking` stays cheap for the CLI and for modules that only need the ANN or the reranker.
"""

from __future__ import annotations

from typing import Any

import vitrine  # noqa: F401  (first: installs the filters of our dependencies' deprecation notices)

__all__ = ["Recommender", "recommend"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ranking import recommender

        return getattr(recommender, name)
    raise AttributeError(f"module 'ranking' has no attribute {name!r}")
