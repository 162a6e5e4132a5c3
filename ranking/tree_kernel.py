"""A LightGBM model's trees as flat arrays, walked by a compiled loop (numba): the ranker's scores on the request path.

`Booster.predict` cost 4.5 ms for 260 candidates with a 295-tree ranker here (~58 ns a tree a row),
and the reasons' `pred_leaf` call as much again per row. One compiled walk gives both at once: every
row's score and the leaf it reached in every tree (`PathContributions` reads its reasons from those
leaves).

The walk is LightGBM's own numerical decision (`Tree::NumericalDecision`): NaN counts as 0 unless
the split's missing type is NaN; a missing value (NaN for type NaN, |x| <= 1e-35 for type Zero) goes
the split's default way; otherwise `x <= threshold` goes left. The score sums the leaf values in tree
order in float64, as LightGBM does, so scores are the same to the last bit (tested on random rows with
NaNs and zeros). A model with categorical splits or linear trees is left to LightGBM (`of` returns None).

Example:
    >>> trees = CompiledTrees.of(booster)
    >>> scores, leaves = trees.predict(features)   # == booster.predict(features), booster.predict(..., pred_leaf=True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from ranking.request_threads import request_pool

# Rows from which a walk is split over two threads: below, the hand-off costs more than half the walk
# saves. A request's ~256 rows through 100 trees: 0.41 ms on one thread, 0.44 ms split (scale shop);
# 512 rows: 0.78 ms against 0.41-0.52 ms split; a batch's thousands: half the time.
SPLIT_ROWS = 512
# A single core has no second thread to give half the walk to (read once, not per request).
CORES = os.cpu_count() or 1
# LightGBM's kZeroThreshold: a value this close to 0 is zero for a split whose missing type is Zero.
ZERO_THRESHOLD = 1e-35
MISSING_TYPES = {"None": 0, "Zero": 1, "NaN": 2}


@dataclass(frozen=True)
class CompiledTrees:
    """Every internal node of every tree in one set of arrays; a child < 0 is the leaf ~child of its tree.

    Attributes:
        feature, threshold, children, default_right, missing: per internal node.
        roots: [trees] each tree's root node (< 0: a tree of one leaf).
        leaf_offset: [trees] where each tree's leaves start in `leaf_value`.
        leaf_value: every tree's leaf values, tree after tree.
    """

    feature: np.ndarray
    threshold: np.ndarray
    children: np.ndarray  # [2 x nodes]: left, right of each node, side by side
    default_right: np.ndarray
    missing: np.ndarray
    roots: np.ndarray
    leaf_offset: np.ndarray
    leaf_value: np.ndarray
    n_features: int

    @classmethod
    def of(cls, booster: Any, model: dict[str, Any] | None = None) -> "CompiledTrees | None":
        """The trees `booster.predict` uses (its best iteration when set), or None when it has splits this walk does not make.

        `model`: `booster.dump_model()`, when the caller has it already (it takes ~0.1 s for 300 trees).
        """
        model = model or booster.dump_model()
        used = int(np.asarray(booster.predict(np.zeros((1, booster.num_feature())), pred_leaf=True)).reshape(1, -1).shape[1])
        nodes: dict[str, list[Any]] = {name: [] for name in ("feature", "threshold", "left", "right", "default_left", "missing")}
        roots: list[int] = []
        leaf_offset: list[int] = []
        leaf_value: list[float] = []
        for tree in model["tree_info"][:used]:
            leaf_offset.append(len(leaf_value))
            leaves = np.zeros(int(tree["num_leaves"]))

            def visit(node: dict[str, Any]) -> int:
                if "leaf_value" in node:
                    leaves[node.get("leaf_index", 0)] = node["leaf_value"]
                    return ~int(node.get("leaf_index", 0))
                if node.get("decision_type") != "<=" or "leaf_coeff" in node:
                    raise _Unsupported(node.get("decision_type"))
                at = len(nodes["feature"])
                nodes["feature"].append(int(node["split_feature"]))
                nodes["threshold"].append(float(node["threshold"]))
                nodes["default_left"].append(bool(node["default_left"]))
                nodes["missing"].append(MISSING_TYPES[node["missing_type"]])
                nodes["left"].append(0)
                nodes["right"].append(0)
                nodes["left"][at] = visit(node["left_child"])
                nodes["right"][at] = visit(node["right_child"])
                return at

            try:
                roots.append(visit(tree["tree_structure"]))
            except _Unsupported:
                return None
            leaf_value.extend(leaves.tolist())
        return cls(
            feature=np.asarray(nodes["feature"], dtype=np.int32), threshold=np.asarray(nodes["threshold"], dtype=np.float64),
            children=np.stack([np.asarray(nodes["left"], dtype=np.int32), np.asarray(nodes["right"], dtype=np.int32)], axis=1).ravel(),
            default_right=~np.asarray(nodes["default_left"], dtype=np.bool_), missing=np.asarray(nodes["missing"], dtype=np.int8),
            roots=np.asarray(roots, dtype=np.int32), leaf_offset=np.asarray(leaf_offset, dtype=np.int64),
            leaf_value=np.asarray(leaf_value, dtype=np.float64), n_features=int(booster.num_feature()),
        )

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores [rows] float64, leaves [rows, trees] int64) of float rows [rows, n_features].

        From SPLIT_ROWS rows on, the second half of the rows walks on a request thread meanwhile
        (`ranking.request_threads`): a row's walk does not depend on the others, so the result is the same.
        """
        features = np.ascontiguousarray(features, dtype=np.float64)
        scores = np.empty(len(features), dtype=np.float64)
        leaves = np.empty((len(features), self.n_trees), dtype=np.int64)
        half = len(features) // 2 if len(features) >= SPLIT_ROWS and CORES > 1 else len(features)
        later = request_pool().submit(self._walk, features[half:], scores[half:], leaves[half:]) if half < len(features) else None
        self._walk(features[:half], scores[:half], leaves[:half])
        if later is not None:
            later.result()
        return scores, leaves

    def _walk(self, features: np.ndarray, scores: np.ndarray, leaves: np.ndarray) -> None:
        _walk(features, self.feature, self.threshold, self.children, self.default_right, self.missing,
              self.roots, self.leaf_offset, self.leaf_value, scores, leaves)

    def leaf_sums(self, table: np.ndarray, leaves: np.ndarray) -> np.ndarray:
        """[rows, k] the sum over trees of table[tree, leaf of the row in that tree] ([trees, leaves, k] table)."""
        return _leaf_sums(np.ascontiguousarray(table, dtype=np.float64), np.ascontiguousarray(leaves, dtype=np.int64))


class _Unsupported(Exception):
    """A split the walk does not make (categorical, linear leaves)."""


@njit(cache=True, nogil=True)
def _walk(x: np.ndarray, feature: np.ndarray, threshold: np.ndarray, children: np.ndarray, default_right: np.ndarray,
          missing: np.ndarray, roots: np.ndarray, leaf_offset: np.ndarray, leaf_value: np.ndarray,
          scores: np.ndarray, leaves: np.ndarray) -> None:  # pragma: no cover (compiled)
    # Tree after tree, each row through it: the rows' walks are independent and the next child is an
    # index (no branch to mispredict), so the core overlaps them: 1.6x LightGBM's row-by-row predict.
    rows = x.shape[0]
    for i in range(rows):
        scores[i] = 0.0
    for t in range(len(roots)):
        root = roots[t]
        for i in range(rows):
            node = root
            while node >= 0:
                value = x[i, feature[node]]
                kind = missing[node]
                nan = value != value
                if nan and kind != 2:
                    value = 0.0
                default = (kind == 1 and -ZERO_THRESHOLD <= value <= ZERO_THRESHOLD) or (kind == 2 and nan)
                right = default_right[node] if default else value > threshold[node]
                node = children[2 * node + right]
            leaf = ~node
            leaves[i, t] = leaf
            scores[i] += leaf_value[leaf_offset[t] + leaf]  # tree order, float64: LightGBM's sum


@njit(cache=True, nogil=True)
def _leaf_sums(table: np.ndarray, leaves: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    rows, trees = leaves.shape
    out = np.zeros((rows, table.shape[2]))
    for i in range(rows):
        for t in range(trees):
            out[i] += table[t, leaves[i, t]]
    return out
