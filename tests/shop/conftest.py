"""Fixtures of the shop-stage tests: the committed real Amazon sample, raw and imported."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitrine.paths import DataDir

# The small real shop every stage must run on: a committed slice of Amazon Reviews 2018, Gift Cards
# 5-core (tests/data/make_giftcards_sample.py), so that a clone without ../shared passes.
AMAZON_SAMPLE = Path(__file__).resolve().parent.parent / "data" / "amazon-giftcards-sample"


@pytest.fixture(scope="session")
def amazon_sample() -> Path:
    """The dir with Gift_Cards_5.json, meta_Gift_Cards.json and images/ (read-only)."""
    if not (AMAZON_SAMPLE / "Gift_Cards_5.json").is_file():
        pytest.fail(f"the Amazon sample is missing at {AMAZON_SAMPLE}")
    return AMAZON_SAMPLE


@pytest.fixture(scope="session")
def amazon_shop(amazon_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> DataDir:
    """A data dir holding the imported Amazon sample, shared by the session: copy it before changing it."""
    from vitrine.shop.amazon import import_amazon_reviews

    data = DataDir.resolve(tmp_path_factory.mktemp("amazon") / "data")
    import_amazon_reviews(
        data, amazon_sample / "Gift_Cards_5.json", amazon_sample / "meta_Gift_Cards.json", amazon_sample / "images"
    )
    return data
