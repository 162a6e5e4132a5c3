"""The online path: user tower, ANN candidates, item features, LightGBM rerank, top-k; API and HTTP service."""
