"""The whole system on the full Gift Cards shop, as the public benchmark runs it: real dates, real photos.

`benchmarks/public_leave_last_out.py` imports the shop, holds out each user's last purchase, runs
`vitrine pipeline run` on the rest and serves every user through `Recommender.recommend_batch` as
of the day after. The served lists must be the ones the offline code ranks (no skew), reach every
user (none cold), and beat the item-kNN baseline of the same split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.shared_data

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.timeout(2400)  # ~7 min on 2 idle cores; the pipeline trains an encoder on 115 photos
def test_gift_cards_end_to_end_beats_item_knn(shared_data: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from public_leave_last_out import benchmark
    finally:
        sys.path.remove(str(BENCHMARKS))

    report = benchmark(shared_data / "amazon-giftcards-2018", tmp_path / "work", skip_recbole=True, recbole_cache=None,
                       tracking=True, show_progress=False)
    assert report["dataset"]["scored_users"] == 458 and report["source"]["ingest"]["events"]["rejected"] == 0
    models = report["models"]
    served = models["vitrine"]
    assert served["served"]["cold_start_users"] == 0
    assert served["test"]["recall@10"] == served["served"]["offline_rerank_recall@10"]
    assert served["pipeline"]["decision"] == "no champion yet"  # a new shop: the first challenger serves
    for metric in ("recall@10", "ndcg@10"):
        assert served["test"][metric] > models["item_knn"]["test"][metric], metric
    assert report["tracking"]["run_id"]
