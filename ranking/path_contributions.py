"""Per-feature contributions to a LightGBM score, from per-leaf tables: the `reasons` of a recommendation.

TreeSHAP (`Booster.predict(pred_contrib=True)`) costs about 0.45 ms per row on the benchmark
shop's ranker (76 trees): 9 ms to explain a list of 20, three times the rest of the request.

The path attribution of Saabas (what the `treeinterpreter` package computes) credits each split on
a row's root-to-leaf path with the change it makes to the node's expected value. It depends on
nothing but the leaf the row lands in, so each (tree, leaf) has one fixed contribution vector,
tabulated once when the model loads. Explaining a request is then LightGBM's `pred_leaf` (the cost of
one prediction), a gather and a sum.

Like SHAP, a row's contributions add up to its raw score minus a constant (`bias`, the sum of
the trees' root values); tests check it. Unlike SHAP they are not consistent: a split's credit depends on its depth
in the tree. To name the few features that lifted an item that matters little:
`benchmarks/reason_agreement.py` measures how often the top reasons are TreeSHAP's.

Example:
    >>> paths = PathContributions(booster)
    >>> contributions = paths(X)   # [rows, features]; .sum(1) + paths.bias(...) == raw score
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ranking.tree_kernel import CompiledTrees


class PathContributions:
    """The Saabas contribution table of a booster: `table[tree, leaf]` is a [features] vector."""

    def __init__(self, booster: Any, compiled: "CompiledTrees | None" = None, model: dict[str, Any] | None = None):
        """`compiled`: the booster's compiled walk (`ranking.tree_kernel`), for the leaves, when it has one;
        `model`: `booster.dump_model()`, when the caller has it already."""
        self.booster = booster
        self.compiled = compiled
        trees = (model or booster.dump_model())["tree_info"]
        n_features = booster.num_feature()
        self.table = np.zeros((len(trees), max((t["num_leaves"] for t in trees), default=1), n_features))
        # Root value of each tree: a row's score is their sum plus its contributions.
        self.roots = np.zeros(len(trees))
        for t, tree in enumerate(trees):
            root = tree["tree_structure"]
            if "leaf_value" in root:  # a tree of one leaf credits no feature
                self.roots[t] = root["leaf_value"]
                continue
            self.roots[t] = root["internal_value"]
            stack = [(root, np.zeros(n_features))]
            while stack:
                node, path = stack.pop()
                for child in (node["left_child"], node["right_child"]):
                    step = path.copy()
                    value = child["leaf_value"] if "leaf_value" in child else child["internal_value"]
                    step[node["split_feature"]] += value - node["internal_value"]
                    if "leaf_value" in child:
                        self.table[t, child["leaf_index"]] = step
                    else:
                        stack.append((child, step))

    def __call__(self, matrix: np.ndarray, leaves: np.ndarray | None = None) -> np.ndarray:
        """[rows, features] contributions of each row of `matrix` to the booster's raw score.

        `leaves`: [rows, trees] the leaves the compiled walk reached for these rows, when the caller has them.
        """
        if self.compiled is not None:
            if leaves is None:
                _, leaves = self.compiled.predict(matrix)
            return self.compiled.leaf_sums(self.table, leaves)
        leaves = np.asarray(self.booster.predict(matrix, pred_leaf=True, num_threads=1), dtype=np.int64).reshape(len(matrix), -1)
        trees = np.arange(leaves.shape[1])  # the trees `predict` uses (best_iteration when set)
        return np.asarray(self.table[trees, leaves].sum(axis=1))

    def bias(self, n_trees: int) -> float:
        """The summed root values of the first `n_trees` trees: a row's score before any contribution."""
        return float(self.roots[:n_trees].sum())
