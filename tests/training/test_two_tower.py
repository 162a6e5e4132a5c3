"""The towers and their loss on small synthetic inputs: shapes, unit norms, masking, cold start."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ranking.retriever_inputs import InputSpec, encode_items, encode_users
from ranking.two_tower import TwoTower, TwoTowerConfig
from training.two_tower import LossConfig, TwoTowerTrainTask

CONTENT_DIM = 8


def _frame(n: int = 64, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    items = [f"I{i}" for i in rng.integers(0, 20, n)]
    return pd.DataFrame(
        {
            "user_id": [f"U{u}" for u in rng.integers(0, 10, n)],
            "item_id": items,
            "recent_item_ids": [[f"I{j}" for j in rng.integers(0, 20, rng.integers(0, 5))] for _ in range(n)],
            "top_category": rng.choice(["shoes", "bags", None], n),
            "events_7d": rng.integers(0, 30, n),
            "user_stats__views_30d": rng.integers(0, 100, n),
            "item_stats__views_30d": rng.integers(0, 1000, n),
            "days_since_last_purchase": np.where(rng.random(n) < 0.5, np.nan, 3.0),
            "category": rng.choice(["shoes", "bags"], n),
            "brand": rng.choice(["a", "b", "c"], n),
            "price_band": rng.integers(0, 5, n),
            "embedding": [np.ones(CONTENT_DIM, np.float32) * int(i[1:]) / 20 for i in items],
            "weight": 1.0,
        }
    )


@pytest.fixture(scope="module")
def spec() -> InputSpec:
    return InputSpec.fit(_frame(), CONTENT_DIM)


def _model(spec: InputSpec, **kwargs: object) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(TwoTowerConfig(embedding_dim=8, hidden_dim=16, output_dim=8, **kwargs), spec.table_sizes, CONTENT_DIM)  # type: ignore[arg-type]


def test_towers_return_unit_vectors_of_the_output_width(spec: InputSpec) -> None:
    frame = _frame(seed=1)
    model = _model(spec).eval()
    rows = np.arange(len(frame))
    u = model.user_vectors(encode_users(frame, spec).batch(rows))
    v = model.item_vectors(encode_items(frame, spec).batch(rows))
    assert u.shape == v.shape == (len(frame), 8)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(len(frame)))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(len(frame)))


def test_id_only_model_gives_every_unknown_item_the_same_vector_and_multimodal_does_not(spec: InputSpec) -> None:
    cold = pd.DataFrame(
        {"item_id": ["NEW1", "NEW2"], "embedding": [np.ones(CONTENT_DIM, np.float32), -np.ones(CONTENT_DIM, np.float32)]}
    )
    batch = encode_items(cold, spec).batch(np.arange(2))
    id_only = _model(spec, use_content=False, use_features=False).eval()(encode_users(_frame(2), spec).batch(np.arange(2)), batch)[1]
    multimodal = _model(spec).eval().item_vectors(batch)
    torch.testing.assert_close(id_only[0], id_only[1])
    assert not torch.allclose(multimodal[0], multimodal[1])


def test_spec_survives_json_and_maps_unseen_values_to_unknown(spec: InputSpec) -> None:
    again = InputSpec.from_json(spec.to_json())
    assert again == spec
    encoded = encode_users(pd.DataFrame({"user_id": ["nobody"], "recent_item_ids": [["I1", "nope"]]}), spec)
    assert encoded.user_idx.tolist() == [0]
    assert encoded.recent_values.tolist() == [spec.items["I1"]]  # the unknown history item is dropped


def test_embedding_of_wrong_width_names_the_item(spec: InputSpec) -> None:
    from vitrine.errors import InvalidInput

    with pytest.raises(InvalidInput, match="'BAD'.*embedding"):
        encode_items(pd.DataFrame({"item_id": ["BAD"], "embedding": [np.ones(3)]}), spec)


def test_loss_masks_accidental_hits_and_learns(spec: InputSpec) -> None:
    frame = _frame(n=32, seed=2)
    users, items = encode_users(frame, spec), encode_items(frame, spec)
    rows = np.arange(len(frame))
    keys = torch.tensor(pd.factorize(frame["item_id"])[0])
    task = TwoTowerTrainTask(_model(spec), LossConfig(temperature=0.1))
    args = (keys, torch.zeros(len(rows)), torch.ones(len(rows)))
    # Every row the same item: all negatives are accidental hits, so the loss is 0 (only the positive remains).
    same = task(users.batch(rows), items.batch(np.zeros_like(rows)), torch.zeros(len(rows), dtype=torch.long), *args[1:])
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-4)
    optimizer = torch.optim.Adam(task.parameters(), lr=0.01)
    first = None
    for _ in range(60):
        loss = task(users.batch(rows), items.batch(rows), *args)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


def test_logq_correction_lowers_the_penalty_of_popular_negatives(spec: InputSpec) -> None:
    frame = _frame(n=16, seed=3)
    users, items = encode_users(frame, spec).batch(np.arange(16)), encode_items(frame, spec).batch(np.arange(16))
    keys = torch.arange(16)
    log_q = torch.zeros(16)
    log_q[1:] = 3.0  # row 0's positive is rare, its negatives frequent: the correction lowers their logits
    weights = torch.zeros(16)
    weights[0] = 1.0  # score row 0 alone
    model = _model(spec).eval()
    corrected = TwoTowerTrainTask(model, LossConfig(logq_correction=True))(users, items, keys, log_q, weights)
    plain = TwoTowerTrainTask(model, LossConfig(logq_correction=False))(users, items, keys, log_q, weights)
    assert corrected.item() < plain.item()
