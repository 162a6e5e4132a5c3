"""The two-tower retriever's training task: `TwoTower` plus its loss (`TwoTowerTrainTask`), TorchRec style.

The model itself is `ranking.two_tower.TwoTower`, which serving wraps with an ANN index instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ranking.retriever_inputs import ItemInputs, UserInputs
from ranking.two_tower import TwoTower

# Scores of masked logits (accidental hits): low enough to vanish in softmax, finite to keep gradients clean.
MASKED_LOGIT = -1e4


@dataclass(frozen=True)
class LossConfig:
    """The sampled-softmax loss of `TwoTowerTrainTask`."""

    # Softmax temperature on cosine scores: small values sharpen; 0.05 is the usual range for L2-normalised towers.
    temperature: float = 0.05
    # Subtract log Q (expected count of an item among the sampled negatives) from its logit, so that
    # popular items are not pushed down merely for appearing as in-batch negatives more often.
    logq_correction: bool = True
    # Share of positives whose item id is replaced by UNKNOWN during training, so that the item
    # vector of a cold-start item (which only has UNKNOWN) is a good one.
    item_id_dropout: float = 0.3
    # Share of examples whose user id is replaced by UNKNOWN, for users new to the model.
    user_id_dropout: float = 0.1


class TwoTowerTrainTask(nn.Module):
    """`TwoTower` plus its loss: in-batch sampled softmax with log-Q correction, optional random negatives.

    Each row's positive item is scored against every other row's item (in-batch negatives) and,
    when given, a set of items drawn uniformly from the catalog (mixed negative sampling). Other
    rows holding the same item as the positive are masked (accidental hits).

    Args:
        model: the towers.
        loss: temperature, log-Q correction and id dropout rates.

    Example:
        task = TwoTowerTrainTask(model, LossConfig())
        loss = task(users, items, item_keys, log_q, weights)   # scalar; .backward() trains both towers
    """

    def __init__(self, model: TwoTower, loss: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self,
        users: UserInputs,
        items: ItemInputs,
        item_keys: torch.Tensor,
        log_q: torch.Tensor,
        weights: torch.Tensor,
        negatives: ItemInputs | None = None,
        negative_keys: torch.Tensor | None = None,
        negative_log_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted mean cross-entropy of each positive against the sampled negatives.

        Args:
            users, items: B aligned (user, positive item) pairs.
            item_keys: [B] catalog row of each positive (equal keys are the same item).
            log_q: [B] log expected count of each positive item among a batch's negatives.
            weights: [B] example weights (by event type).
            negatives / negative_keys / negative_log_q: M random catalog items, their keys and log Q.
        """
        u = self.model.user_vectors(users)
        v = self.model.item_vectors(items)
        logits = u @ v.T / self.loss.temperature  # [B, B]
        keys = item_keys
        corrections = log_q
        if negatives is not None and negative_keys is not None and negative_log_q is not None:
            neg = self.model.item_vectors(negatives)
            logits = torch.cat([logits, u @ neg.T / self.loss.temperature], dim=1)  # [B, B + M]
            keys = torch.cat([item_keys, negative_keys])
            corrections = torch.cat([log_q, negative_log_q])
        if self.loss.logq_correction:
            logits = logits - corrections.unsqueeze(0)
        rows = torch.arange(len(item_keys))
        hits = item_keys.unsqueeze(1) == keys.unsqueeze(0)
        hits[rows, rows] = False  # the positive itself stays
        logits = logits.masked_fill(hits, MASKED_LOGIT)
        losses = F.cross_entropy(logits, rows, reduction="none")
        return (losses * weights).sum() / weights.sum().clamp_min(1e-9)
