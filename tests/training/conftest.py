"""Fixtures of the training tests: the retriever's shop, built per module (its tests register models into it)."""

from __future__ import annotations

import pytest

from tests.shops import retriever_shop
from vitrine.paths import DataDir


@pytest.fixture(scope="module")
def retriever_data(tmp_path_factory: pytest.TempPathFactory) -> DataDir:
    """Generated shop (`tests.shops.RETRIEVER`'s size), stand-in item vectors and built features."""
    return retriever_shop(tmp_path_factory.mktemp("retriever-shop") / "data")
