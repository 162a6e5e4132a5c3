"""The request path's set operations answer exactly what numpy's general ones answer."""

import numpy as np
import pytest

from vitrine.arrays import distinct, first_occurrences, outside, unique_first


@pytest.mark.parametrize("size, high", [(0, 5), (1, 5), (2, 1), (50, 10), (2000, 300), (500, 10**12), (300, 2**61)])
def test_unique_first_is_np_unique(size: int, high: int) -> None:
    values = np.random.default_rng(size).integers(0, high, size)
    keys, first, inverse = unique_first(values)
    expected = np.unique(values, return_index=True, return_inverse=True)
    for got, want in zip((keys, first, inverse), expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(distinct(values), expected[0])


def test_first_occurrences_keep_the_order_values_first_appear_in() -> None:
    np.testing.assert_array_equal(first_occurrences(np.array([7, 3, 7, 1, 3, 9])), [7, 3, 1, 9])
    assert first_occurrences(np.zeros(0, dtype=np.int64)).size == 0


@pytest.mark.parametrize("excluded", [[], [4], [9, 1, 4, 4], list(range(0, 40, 3))])
def test_outside_is_not_isin(excluded: list[int]) -> None:
    values = np.random.default_rng(1).integers(0, 40, 100)
    np.testing.assert_array_equal(outside(values, np.array(excluded, dtype=np.int64)), ~np.isin(values, excluded))
