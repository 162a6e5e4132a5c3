"""The sequence tower's user state for one history, compiled (numba): what a request runs.

`SequenceTower.user_vectors` in torch costs ~1 ms of operator overhead per pass, and the same
arithmetic in numpy (~90 small array calls) about 0.45 ms for a 50-item window on one core. Compiled,
the loops cost ~0.15 ms, and the kernel releases the GIL (`nogil`), so a request computes the user
state and searches the index on a worker thread while its other sources are read
(`ranking.next_item.source_lists`).

The weights are the tower's, stacked by block (`StateWeights.of`). Every block is a
`torch.nn.TransformerEncoderLayer` (pre- or post-norm, as configured) with causal self-attention;
the last block attends from the last position only, the one the user vector reads. Equal to the
tower up to float32 rounding (tested; the sums here run in float64).

numba compiles on the first call of a process (~10 s) and caches the machine code beside this file
(`cache=True`), so later processes load it; `SequenceRetriever` makes that first call when it loads,
not on a request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit


@dataclass(frozen=True)
class StateWeights:
    """The tower's weights as float32 arrays, each block's stacked on axis 0 (all blocks share their shapes)."""

    items: np.ndarray  # [items, d] the catalog's item vectors (the tower's input rows)
    positions: np.ndarray  # [max_length, d]
    input_norm: tuple[np.ndarray, np.ndarray, float]
    in_w: np.ndarray  # [blocks, d, 3d]: transposed, so x @ in_w[b] is the q, k, v projection
    in_b: np.ndarray  # [blocks, 3d]
    out_w: np.ndarray  # [blocks, d, d] transposed
    out_b: np.ndarray  # [blocks, d]
    w1: np.ndarray  # [blocks, d, feed-forward] transposed
    b1: np.ndarray
    w2: np.ndarray  # [blocks, feed-forward, d] transposed
    b2: np.ndarray
    norms: np.ndarray  # [blocks, 4, d]: norm1 weight, norm1 bias, norm2 weight, norm2 bias
    eps: np.ndarray  # [blocks, 2] float64: norm1, norm2
    norm_first: np.ndarray  # [blocks] bool
    final_norm: tuple[np.ndarray, np.ndarray, float] | None
    heads: int

    @classmethod
    def of(cls, tower: Any, item_vectors: np.ndarray) -> "StateWeights":
        import torch

        def array(tensor: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().numpy().astype(np.float32))

        def stacked(get: Any) -> np.ndarray:
            return np.ascontiguousarray(np.stack([get(block) for block in tower.blocks.layers]))

        final = tower.norm
        return cls(
            items=np.ascontiguousarray(item_vectors, dtype=np.float32),
            positions=array(tower.positions.weight),
            input_norm=(array(tower.input_norm.weight), array(tower.input_norm.bias), float(tower.input_norm.eps)),
            in_w=stacked(lambda b: array(b.self_attn.in_proj_weight).T),
            in_b=stacked(lambda b: array(b.self_attn.in_proj_bias)),
            out_w=stacked(lambda b: array(b.self_attn.out_proj.weight).T),
            out_b=stacked(lambda b: array(b.self_attn.out_proj.bias)),
            w1=stacked(lambda b: array(b.linear1.weight).T),
            b1=stacked(lambda b: array(b.linear1.bias)),
            w2=stacked(lambda b: array(b.linear2.weight).T),
            b2=stacked(lambda b: array(b.linear2.bias)),
            norms=stacked(lambda b: np.stack([array(b.norm1.weight), array(b.norm1.bias), array(b.norm2.weight), array(b.norm2.bias)])),
            eps=np.array([[b.norm1.eps, b.norm2.eps] for b in tower.blocks.layers], dtype=np.float64),
            norm_first=np.array([bool(b.norm_first) for b in tower.blocks.layers]),
            final_norm=(array(final.weight), array(final.bias), float(final.eps)) if isinstance(final, torch.nn.LayerNorm) else None,
            heads=int(tower.config.heads),
        )

    def state(self, rows: np.ndarray) -> np.ndarray:
        """[d] the state after the last of `rows` (catalog rows, oldest first, 1..max_length of them)."""
        final = self.final_norm or (self.input_norm[0], self.input_norm[1], -1.0)  # eps < 0: no final norm
        return _state(np.ascontiguousarray(rows, dtype=np.int64), self.items, self.positions, *self.input_norm,
                      self.in_w, self.in_b, self.out_w, self.out_b, self.w1, self.b1, self.w2, self.b2,
                      self.norms, self.eps, self.norm_first, self.heads, *final)


@njit(cache=True, nogil=True)
def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:  # pragma: no cover (compiled)
    out = np.empty_like(x)
    rows, width = x.shape
    for i in range(rows):
        mean = 0.0
        for j in range(width):
            mean += x[i, j]
        mean /= width
        variance = 0.0
        for j in range(width):
            variance += (x[i, j] - mean) ** 2
        scale = 1.0 / math.sqrt(variance / width + eps)
        for j in range(width):
            out[i, j] = (x[i, j] - mean) * scale * weight[j] + bias[j]
    return out


@njit(cache=True, nogil=True)
def _attention(x: np.ndarray, in_w: np.ndarray, in_b: np.ndarray, out_w: np.ndarray, out_b: np.ndarray,
               heads: int, last_only: bool) -> np.ndarray:  # pragma: no cover (compiled)
    """Causal multi-head self-attention of x [L, d]; the last position's row only when `last_only`."""
    length, dim = x.shape
    width = dim // heads
    qkv = x @ in_w + in_b  # [L, 3d]
    rows = 1 if last_only else length
    mixed = np.empty((rows, dim), dtype=np.float32)
    scale = np.float32(1.0 / math.sqrt(width))
    for h in range(heads):
        # Contiguous copies, so the products go to BLAS.
        q = np.ascontiguousarray(qkv[length - rows :, h * width : (h + 1) * width])
        k = np.ascontiguousarray(qkv[:, dim + h * width : dim + (h + 1) * width])
        v = np.ascontiguousarray(qkv[:, 2 * dim + h * width : 2 * dim + (h + 1) * width])
        scores = (q @ k.T) * scale  # [rows, L]
        for i in range(rows):
            seen = length - rows + i + 1  # positions 0..seen-1: the causal mask
            top = scores[i, 0]
            for j in range(1, seen):
                top = max(top, scores[i, j])
            total = 0.0
            for j in range(seen):
                scores[i, j] = math.exp(scores[i, j] - top)
                total += scores[i, j]
            for j in range(seen):
                scores[i, j] /= total
            for j in range(seen, length):
                scores[i, j] = 0.0
        mixed[:, h * width : (h + 1) * width] = scores @ v
    return mixed @ out_w + out_b


@njit(cache=True, nogil=True)
def _feed_forward(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:  # pragma: no cover
    hidden = x @ w1 + b1
    for i in range(hidden.shape[0]):
        for j in range(hidden.shape[1]):
            value = hidden[i, j]
            hidden[i, j] = 0.5 * value * (1.0 + math.erf(value / math.sqrt(2.0)))  # exact GELU, as torch's default
    return hidden @ w2 + b2


@njit(cache=True, nogil=True)
def _state(rows: np.ndarray, items: np.ndarray, positions: np.ndarray, in_norm_w: np.ndarray, in_norm_b: np.ndarray,
           in_norm_eps: float, in_w: np.ndarray, in_b: np.ndarray, out_w: np.ndarray, out_b: np.ndarray, w1: np.ndarray,
           b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, norms: np.ndarray, eps: np.ndarray, norm_first: np.ndarray,
           heads: int, final_w: np.ndarray, final_b: np.ndarray, final_eps: float) -> np.ndarray:  # pragma: no cover
    length = len(rows)
    x = np.empty((length, items.shape[1]), dtype=np.float32)
    for i in range(length):
        x[i] = items[rows[i]] + positions[i]
    x = _layer_norm(x, in_norm_w, in_norm_b, in_norm_eps)
    blocks = len(norm_first)
    for b in range(blocks):
        last_only = b == blocks - 1
        kept = x[length - 1 :] if last_only else x
        if norm_first[b]:
            h = kept + _attention(_layer_norm(x, norms[b, 0], norms[b, 1], eps[b, 0]), in_w[b], in_b[b], out_w[b], out_b[b], heads, last_only)
            x = h + _feed_forward(_layer_norm(h, norms[b, 2], norms[b, 3], eps[b, 1]), w1[b], b1[b], w2[b], b2[b])
        else:
            h = _layer_norm(kept + _attention(x, in_w[b], in_b[b], out_w[b], out_b[b], heads, last_only), norms[b, 0], norms[b, 1], eps[b, 0])
            x = _layer_norm(h + _feed_forward(h, w1[b], b1[b], w2[b], b2[b]), norms[b, 2], norms[b, 3], eps[b, 1])
        length = x.shape[0]
    if final_eps >= 0:
        x = _layer_norm(x, final_w, final_b, final_eps)
    return x[x.shape[0] - 1].copy()
