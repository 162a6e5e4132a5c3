"""Search and similar items over the stored vectors, with the packaged MiniLM for real text understanding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder
from embeddings.encode import embed
from embeddings.search import ProductSearch
from vitrine.errors import InvalidInput, ModelUnavailable
from vitrine.paths import DataDir
from vitrine.shop.store import write_items

TITLES = {
    "I1": "Leather football, official size five",
    "I2": "Merino wool scarf, warm winter knit",
    "I3": "Two-person camping tent, waterproof",
    "I4": "Stainless steel coffee mug with lid",
    "I5": "Running shoes with cushioned soles",
}


@pytest.fixture(scope="module")
def text_shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataDir, str]:
    """A text-only catalog embedded with the (untrained-vision) default: MiniLM does the understanding."""
    root = tmp_path_factory.mktemp("search")
    data = DataDir.resolve(root / "data")
    write_items(data, pd.DataFrame({"item_id": list(TITLES), "title": list(TITLES.values())}))
    model = root / "default"
    build_dual_encoder(DualEncoderSpec(), seed=0).save(model)
    embed(data, str(model))
    return data, str(model)


def test_text_search_finds_the_item_that_means_the_query(text_shop: tuple[DataDir, str]) -> None:
    search = ProductSearch.load(text_shop[0])
    assert search.search("soccer ball", k=1)[0][0] == "I1"
    assert search.search("something to keep my neck warm", k=1)[0][0] == "I2"
    hits = search.search("hot drinks", k=5)
    assert hits[0][0] == "I4"
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_similar_excludes_the_item_itself_and_ranks_by_cosine(text_shop: tuple[DataDir, str]) -> None:
    search = ProductSearch.load(text_shop[0])
    hits = search.similar("I1", k=10)
    assert len(hits) == 4 and "I1" not in [i for i, _ in hits]
    assert np.isclose(hits[0][1], float(search.vectors[search.item_ids.index("I1")] @ search.vectors[search.item_ids.index(hits[0][0])]))


def test_bad_requests_name_the_problem(text_shop: tuple[DataDir, str]) -> None:
    search = ProductSearch.load(text_shop[0])
    with pytest.raises(InvalidInput, match="I999"):
        search.similar("I999")
    with pytest.raises(InvalidInput, match="empty"):
        search.search("   ")
    with pytest.raises(InvalidInput, match="k"):
        search.search("mug", k=0)


def test_vectors_from_another_model_are_refused(text_shop: tuple[DataDir, str], tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_dual_encoder(DualEncoderSpec(), seed=1).save(other)
    with pytest.raises(ModelUnavailable, match="vitrine embed"):
        ProductSearch.load(text_shop[0], model=str(other))


def test_searches_from_many_threads_share_a_bounded_query_cache(
    text_shop: tuple[DataDir, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service searches from a thread pool: concurrent hits and evictions must not raise or mix answers."""
    from concurrent.futures import ThreadPoolExecutor

    import embeddings.search as search_module

    monkeypatch.setattr(search_module, "QUERY_CACHE_SIZE", 2)
    search = ProductSearch.load(text_shop[0])
    queries = ["soccer ball", "warm scarf", "coffee mug", "tent", "running shoes"] * 4
    reference = ProductSearch.load(text_shop[0])
    expected = {q: reference.search(q, k=1)[0][0] for q in set(queries)}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: search.search(q, k=1)[0][0], queries))
    assert answers == [expected[q] for q in queries]
