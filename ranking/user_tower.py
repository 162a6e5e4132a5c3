"""The serving copy of `TwoTower`'s user side: the same weights, plain tensor ops, no TorchRec objects.

Training needs TorchRec's `EmbeddingBagCollection` (sharding under DMP); one request does not. For
a single user, building the `KeyedJaggedTensor` and walking the collection cost more than the
arithmetic (measured on the demo shop: 0.75 ms for the TorchRec path). Here each table is a weight
tensor looked up with `F.embedding_bag` straight from `EncodedUsers`' arrays, and the projections
and MLP are the trained modules themselves, so the vectors equal `TwoTower.user_vectors` up to
float rounding (tested).

Example:
    tower = UserTower(model)                         # model: a trained TwoTower in eval mode
    vectors = tower(encode_users(rows, spec))        # [N, d] float32, unit norm
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ranking.retriever_inputs import UNKNOWN, EncodedUsers
from ranking.two_tower import TwoTower


class UserTower:
    """`TwoTower.user_vectors` over `EncodedUsers` arrays, for serving on CPU.

    Args:
        model: the trained two-tower model (plain module, eval mode); its tensors are shared, not copied.
    """

    def __init__(self, model: TwoTower) -> None:
        bags = model.user_ebc.embedding_bags
        self.model = model
        self.user_id = bags["t_user_id"].weight.detach()
        self.recent_items = bags["t_recent_items"].weight.detach()
        self.top_category = bags["t_user_category"].weight.detach() if "t_user_category" in bags else None

    @torch.inference_mode()
    def __call__(self, users: EncodedUsers) -> np.ndarray:
        """[N, d] unit-norm user vectors, row i for user i of `users`."""
        model = self.model
        recent = torch.from_numpy(users.recent_values)
        offsets = torch.from_numpy(users.recent_offsets[:-1])
        # Same order as TwoTower.user_vectors: id tables (user id, recent items, top category), then
        # the recent items' mean CLIP vector, then the dense stats.
        parts = [self.user_id[torch.from_numpy(users.user_idx)], F.embedding_bag(recent, self.recent_items, offsets, mode="mean")]
        if self.top_category is not None:
            top = torch.from_numpy(users.top_category)
            # An absent top category is an empty bag in training (sum pooling: a zero vector), not row UNKNOWN.
            parts.append(self.top_category[top] * (top != UNKNOWN).unsqueeze(1).to(self.top_category.dtype))
        if model.config.use_content:
            table: torch.Tensor = model.history_content  # type: ignore[assignment]
            parts.append(model.history_proj(F.embedding_bag(recent, table, offsets, mode="mean")))
        if model.config.use_features:
            parts.append(model.user_dense_proj(torch.from_numpy(users.dense)))
        return F.normalize(model.user_mlp(torch.cat(parts, dim=1)), dim=1).numpy()
