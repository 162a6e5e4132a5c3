"""Offline jobs: behaviour features, the TorchRec two-tower retriever, the LightGBM reranker, the pipeline."""
