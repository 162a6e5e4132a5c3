"""The sequence retriever: a SASRec-style causal self-attention user tower over the ordered recent items.

The model shared by training (`training.train_sequence`) and serving. It keeps the two-tower shape,
so the ANN index and the serving path treat it like any retriever: a user vector, one vector per
item, ranked by inner product.

    recent items, oldest first (ids) ─ EmbeddingCollection ─┐
    their CLIP vectors (optional) ─ linear projection ──────┼─ + position ─ causal self-attention x L ─ h_t
    item tower: the same item representation (tied) ────────┘                                      [B, T, D]

    user vector = h at the user's last item;  score(user, item) = h · item_vector(item)

Trained with the next-item objective at every position at once (a causal mask, one pass per
sequence), against all items (full softmax) or, past `FULL_SOFTMAX_MAX_ITEMS`, a shared sample of
negatives with the log-Q correction. The input and output item representations are tied, as in
SASRec: what the tower learns about an item as context also places it as a target.

Row 0 of the id table is padding, row 1 the unknown item (an item first seen after training, or a
cold catalog row): it has only its content to stand on, which id dropout trains for.

Example:
    config = SequenceTowerConfig()
    model = SequenceTower(config, n_items=12_000, content=clip_vectors)
    user = model.user_vectors(padded_rows, lengths)      # [B, D]
    scores = user @ model.item_vectors().T               # [B, items]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

# Id rows before the catalog's: padding and the unknown item.
PADDING_ROW = 0
UNKNOWN_ROW = 1
ID_OFFSET = 2
# Above this many items the full softmax's [positions, items] logits cost more than the model: a batch of
# 128 sequences holds ~2,500 positions, so 50k items are 0.5 GB of logits and half a second a step on a
# CPU core (Toys' 12k: 0.12 GB), 100k items twice that. Past it, a shared sample of negatives.
FULL_SOFTMAX_MAX_ITEMS = 50_000
FEATURE = "recent_items"
# Standard deviation of the initial embeddings.
INIT_STD = 0.02


@dataclass(frozen=True)
class SequenceTowerConfig:
    """Shape of the model. Saved in `config.json`; with the item count it rebuilds the model."""

    # Width of item embeddings, attention and the output vectors (the ANN dimension).
    embedding_dim: int = 64
    # Causal self-attention blocks (SASRec's default depth).
    layers: int = 2
    # Attention heads per block.
    heads: int = 2
    # Most recent items the tower reads; older ones are cut.
    max_length: int = 50
    # Dropout on embeddings, attention and the feed-forward layers. 0.5, SASRec's choice for the sparse
    # Amazon sets (and RecBole's default): on Toys' validation items 0.2 peaked at recall@10 0.109 by
    # epoch 9 and then overfit, 0.5 was at 0.113 by epoch 18 and still rising.
    dropout: float = 0.5
    # Add a projection of the item's CLIP vector to its id embedding (False: ids alone).
    use_content: bool = True
    # Width of each block's feed-forward layer: 4 x embedding_dim, as in SASRec, BERT and RecBole.
    # Together with post-LN and training on every transition (`SequenceTrainConfig.all_transitions`)
    # it lifted Toys' validation recall@10 from 0.1151 to 0.1196 (test, refit: 0.1113 -> 0.1135).
    feedforward_dim: int = 256
    # Layer norm after each residual sum (post-LN, SASRec's and RecBole's layout, no final norm)
    # instead of before each sub-layer (pre-LN, plus a final norm): see feedforward_dim. Without
    # torch's dropout inside the feed-forward layer and with RecBole's N(0, 0.02) initialisation of
    # the blocks, Toys' validation recall@10 fell to 0.1158: both are kept as torch has them.
    norm_first: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SequenceTower(nn.Module):
    """Causal self-attention over item sequences; items scored against the tied item representation.

    Args:
        config: the shape.
        n_items: catalog rows; row r of the catalog is id row r + ID_OFFSET.
        content: [n_items, C] float32 item content vectors (CLIP), or None (ids only).
    """

    def __init__(self, config: SequenceTowerConfig, n_items: int, content: np.ndarray | None = None) -> None:
        super().__init__()
        self.config = config
        self.n_items = n_items
        dim = config.embedding_dim
        self.ids = EmbeddingCollection(
            tables=[EmbeddingConfig(name="item", embedding_dim=dim, num_embeddings=n_items + ID_OFFSET,
                                    feature_names=[FEATURE])],
            device=torch.device("cpu"),
        )
        # Small initial vectors (BERT's and RecBole's 0.02): Adam's steps of ~1e-3 move them from the start.
        nn.init.normal_(self.ids.embeddings["item"].weight, std=INIT_STD)
        use_content = config.use_content and content is not None
        # Content vectors are data, not parameters: a buffer travels with the model and is saved with it.
        self.content: torch.Tensor
        self.register_buffer("content", torch.as_tensor(content, dtype=torch.float32) if use_content else torch.zeros(0, 0))
        self.content_projection = nn.Linear(int(self.content.shape[1]), dim, bias=False) if use_content else None
        self.positions = nn.Embedding(config.max_length, dim)
        nn.init.normal_(self.positions.weight, std=INIT_STD)
        self.input_norm = nn.LayerNorm(dim)
        block = nn.TransformerEncoderLayer(dim, config.heads, dim_feedforward=config.feedforward_dim,
                                           dropout=config.dropout, activation="gelu", batch_first=True,
                                           norm_first=config.norm_first)
        self.blocks = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        # Pre-LN leaves the residual stream unnormalised; post-LN ends every block with a norm already.
        self.norm = nn.LayerNorm(dim) if config.norm_first else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)

    @property
    def id_weight(self) -> torch.Tensor:
        table = self.ids.embeddings["item"]
        assert isinstance(table, nn.Embedding)
        return table.weight

    def item_vectors(self, rows: torch.Tensor | None = None, known: torch.Tensor | None = None) -> torch.Tensor:
        """[n, D] representation of catalog rows (default: all), the tower's input and its output.

        Args:
            rows: catalog rows (int64).
            known: [n] bool, False for items the ids never trained on: they get the unknown id row.
        """
        if rows is None:
            rows = torch.arange(self.n_items)
        id_rows = rows + ID_OFFSET
        if known is not None:
            id_rows = torch.where(known, id_rows, torch.full_like(id_rows, UNKNOWN_ROW))
        vectors = self._id_embeddings(id_rows)
        if self.content_projection is not None:
            vectors = vectors + self.content_projection(self.content[rows])
        return vectors

    def _id_embeddings(self, id_rows: torch.Tensor) -> torch.Tensor:
        """Id embeddings through the TorchRec collection (one jagged feature of len(id_rows) values).

        Inference reads the same table directly: building a KeyedJaggedTensor per request costs more
        than the lookup, and a row copied out of the weight is the same row either way.
        """
        if not self.training and not torch.is_grad_enabled():
            return F.embedding(id_rows, self.id_weight)
        flat = id_rows.reshape(-1)
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=[FEATURE], values=flat, lengths=torch.tensor([len(flat)], dtype=torch.int32)
        )
        return self.ids(features)[FEATURE].values().reshape(*id_rows.shape, -1)

    def hidden(self, rows: torch.Tensor, lengths: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, D] causal states: position t has read items 0..t of each left-aligned sequence.

        Args:
            rows: [B, T] catalog rows, oldest first, padded after each sequence's end (any value).
            lengths: [B] items per sequence, 1..T.
            known: [B, T] bool, False where the id must be treated as unknown (dropout, unseen items).
        """
        batch, steps = rows.shape
        valid = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
        safe = torch.where(valid, rows, torch.zeros_like(rows))
        vectors = self.item_vectors(safe.reshape(-1), None if known is None else known.reshape(-1)).reshape(batch, steps, -1)
        x = self.input_norm(vectors + self.positions(torch.arange(steps)).unsqueeze(0))
        x = self.dropout(x) * valid.unsqueeze(-1)
        # True = may not attend: the future (and, below, padding), the same mask type for both.
        causal = torch.triu(torch.ones(steps, steps, dtype=torch.bool), diagonal=1)
        return self.norm(self.blocks(x, mask=causal, src_key_padding_mask=~valid, is_causal=True))

    def user_vectors(self, rows: torch.Tensor, lengths: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        """[B, D] the state after each user's last item: what they would do next."""
        states = self.hidden(rows, lengths, known)
        return states[torch.arange(len(rows)), lengths - 1]


def recent_window(history: np.ndarray, max_length: int) -> np.ndarray:
    """The last `max_length` items of one history (oldest first), the tower's input."""
    return np.asarray(history[-max_length:], dtype=np.int64)


def pad_histories(histories: list[np.ndarray], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] left-aligned rows and [B] lengths of each history's last `max_length` items (empty -> length 0)."""
    windows = [recent_window(h, max_length) for h in histories]
    steps = max(1, max((len(w) for w in windows), default=1))
    rows = np.zeros((len(windows), steps), dtype=np.int64)
    for n, window in enumerate(windows):
        rows[n, : len(window)] = window
    return torch.from_numpy(rows), torch.tensor([len(w) for w in windows], dtype=torch.int64)
