"""The synthetic default shop: deterministic, in the contract, and statistically sane."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitrine.errors import InvalidInput
from vitrine.paths import DataDir
from vitrine.shop.catalogue import COLOUR_WORDS
from vitrine.shop.contract import EVENTS, ITEMS, USERS
from vitrine.shop.generate import generate_shop
from vitrine.shop.render import BACKGROUND_RGB
from vitrine.shop.spec import ShopSpec

# Small enough to generate in about a second, large enough for stable ratios (~30k events).
SMALL = ShopSpec(users=400, items=300, days=21, seed=7)


def _read(data: DataDir) -> dict[str, pd.DataFrame]:
    events = sorted((data.incoming / "events").glob("part-*.parquet"))
    return {
        "items": pd.read_parquet(data.incoming / "items.parquet"),
        "users": pd.read_parquet(data.incoming / "users.parquet"),
        "events": pd.concat([pd.read_parquet(p) for p in events], ignore_index=True),
        "truth_items": pd.read_parquet(data.truth / "items.parquet"),
        "truth_users": pd.read_parquet(data.truth / "users.parquet"),
    }


def _images(data: DataDir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((data.incoming / "images").glob("*.png"))}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataDir, dict[str, float | int], dict[str, pd.DataFrame]]:
    data = DataDir(tmp_path_factory.mktemp("shop"))
    summary = generate_shop(data, SMALL, progress=False)
    return data, summary, _read(data)


def test_same_seed_writes_identical_files_and_another_seed_differs(shop, tmp_path: Path) -> None:
    data, _, frames = shop
    again = DataDir(tmp_path / "again")
    generate_shop(again, SMALL, progress=False)
    for name, frame in _read(again).items():
        pd.testing.assert_frame_equal(frame, frames[name], obj=name)
    assert _images(again) == _images(data)

    other = DataDir(tmp_path / "other")
    generate_shop(other, ShopSpec(users=400, items=300, days=21, seed=8), progress=False)
    other_frames = _read(other)
    assert not other_frames["items"]["title"].equals(frames["items"]["title"])
    assert len(other_frames["events"]) != len(frames["events"])
    assert _images(other) != _images(data)


def test_output_passes_the_contract(shop) -> None:
    data, _, frames = shop
    ITEMS.validate(frames["items"])
    EVENTS.validate(frames["events"])
    USERS.validate(frames["users"])
    assert str(frames["events"]["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frames["items"]["item_id"].str.fullmatch(r"I\d{6}").all()
    assert frames["users"]["user_id"].str.fullmatch(r"U\d{7}").all()
    assert set(frames["events"]["item_id"]) <= set(frames["items"]["item_id"])
    assert set(frames["events"]["user_id"]) <= set(frames["users"]["user_id"])
    for column in ("colour", "pattern", "material", "price_band"):
        assert frames["items"][column].notna().all(), column
    # A few items have no picture; every path given exists, relative to the incoming dir.
    paths = frames["items"]["image_path"]
    assert 0 < paths.isna().sum() < 0.1 * len(paths)
    assert all((data.incoming / p).is_file() for p in paths.dropna())


def test_summary_counts_what_was_written(shop) -> None:
    _, summary, frames = shop
    counts = frames["events"]["event_type"].value_counts()
    assert summary["events"] == len(frames["events"])
    assert (summary["views"], summary["clicks"], summary["add_to_carts"], summary["purchases"]) == (
        counts["view"], counts["click"], counts["add_to_cart"], counts["purchase"]
    )
    assert summary["items"] == len(frames["items"]) and summary["users"] == len(frames["users"])
    assert summary["sessions"] == frames["events"]["session_id"].nunique()


def test_funnel_ratios_are_those_of_a_shop(shop) -> None:
    counts = shop[2]["events"]["event_type"].value_counts()
    assert 0.10 <= counts["click"] / counts["view"] <= 0.30
    assert 0.10 <= counts["add_to_cart"] / counts["click"] <= 0.35
    assert 0.30 <= counts["purchase"] / counts["add_to_cart"] <= 0.60
    # Every session starts with a view, and a purchase follows an add-to-cart of the same session.
    events = shop[2]["events"]
    first = events.sort_values("timestamp", kind="stable").groupby("session_id")["event_type"].first()
    assert (first == "view").all()
    carted = set(zip(events.loc[events.event_type == "add_to_cart", "session_id"],
                     events.loc[events.event_type == "add_to_cart", "item_id"]))
    bought = events[events.event_type == "purchase"]
    assert all(key in carted for key in zip(bought["session_id"], bought["item_id"]))


def test_no_event_before_its_item_exists_or_its_user_signs_up(shop) -> None:
    frames = shop[2]
    events = frames["events"].merge(frames["items"][["item_id", "created_at"]], on="item_id")
    events = events.merge(frames["users"], on="user_id")
    assert (events["timestamp"] >= events["created_at"]).all()
    assert (events["timestamp"] >= events["signup_at"]).all()
    start = pd.Timestamp(SMALL.start, tz="UTC")
    assert events["timestamp"].min() >= start
    assert events["timestamp"].max() < start + pd.Timedelta(days=SMALL.days)


def test_new_items_arrive_all_along_and_get_events_when_they_match(shop) -> None:
    _, summary, frames = shop
    items, events = frames["items"], frames["events"]
    start = pd.Timestamp(SMALL.start, tz="UTC")
    age = (items["created_at"] - start) / pd.Timedelta(days=SMALL.days)
    last_third = items[age >= 2 / 3]
    assert 0.15 * len(items) <= len(last_third) <= 0.35 * len(items)
    with_events = last_third["item_id"].isin(events["item_id"])
    assert with_events.mean() > 0.8
    assert summary["cold_start_items"] > 0 and summary["cold_start_items_with_events"] > 0
    assert summary["new_users"] > 0
    new_users = frames["users"][frames["users"]["signup_at"] > start]
    assert new_users["user_id"].isin(events["user_id"]).mean() > 0.5


def test_clicks_follow_hidden_colour_taste(shop) -> None:
    """What a content model must learn: a user clicks colours they like far more often."""
    frames = shop[2]
    events = frames["events"][frames["events"]["event_type"].isin(["view", "click"])]
    events = events.merge(frames["items"][["item_id", "colour"]], on="item_id")
    tastes = frames["truth_users"].set_index("user_id")["colour_pref_start"]
    order = list(COLOUR_WORDS)
    prefs = np.stack(tastes.loc[events["user_id"]].to_numpy())
    liking = prefs[np.arange(len(events)), events["colour"].map(order.index).to_numpy()]
    liked = liking > np.quantile(liking, 0.8)
    disliked = liking < np.quantile(liking, 0.2)
    is_click = (events["event_type"] == "click").to_numpy()
    rate = lambda mask: is_click[mask].sum() / (~is_click[mask]).sum()  # noqa: E731  clicks per view
    assert rate(liked) > 3 * rate(disliked)


def test_price_sensitive_users_shun_expensive_items(shop) -> None:
    frames = shop[2]
    events = frames["events"][frames["events"]["event_type"].isin(["view", "click"])]
    events = events.merge(frames["truth_items"][["item_id", "z_price"]], on="item_id")
    events = events.merge(frames["truth_users"][["user_id", "price_sensitivity"]], on="user_id")
    expensive = events[events["z_price"] > 0.5]

    def clicks_per_view(users: pd.Series) -> float:
        kinds = expensive.loc[users, "event_type"].value_counts()
        return kinds["click"] / kinds["view"]

    assert clicks_per_view(expensive["price_sensitivity"] < 0.7) > 2 * clicks_per_view(
        expensive["price_sensitivity"] > 1.3
    )


def test_weekends_are_busier_than_midweek(shop) -> None:
    day = shop[2]["events"]["timestamp"].dt.dayofweek.value_counts()
    assert day[5] > 1.15 * day[1]  # Saturday vs Tuesday


def test_titles_name_the_colour_most_of_the_time_but_not_always(shop) -> None:
    items, truth = shop[2]["items"], shop[2]["truth_items"]
    titles = items["title"].str.lower()
    named = [any(w in title for w in COLOUR_WORDS[colour]) for title, colour in zip(titles, items["colour"])]
    assert 0.6 <= np.mean(named) <= 0.95
    # Some listings name a colour other than the one pictured; the truth says which.
    wrong = truth["text_colour"].notna() & (truth["text_colour"] != truth["colour"])
    assert 0 < wrong.sum() < 0.12 * len(truth)
    # Synonyms appear: not every mention is the plain colour name.
    assert titles.str.contains("crimson|scarlet|cobalt|emerald|ivory|onyx|navy|plum|tan").any()


def _picture(data: DataDir, items: pd.DataFrame, **attrs: str) -> np.ndarray:
    row = items.dropna(subset=["image_path"])
    for column, value in attrs.items():
        row = row[row[column] == value]
    assert len(row), f"no item with {attrs}"
    raw = (data.incoming / row["image_path"].iloc[0]).read_bytes()
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.float32)


def test_images_show_colour_and_category(shop) -> None:
    data, _, frames = shop
    items = frames["items"]
    red = _picture(data, items, colour="red")
    blue = _picture(data, items, colour="blue")
    assert red.shape[0] >= 64 and red.shape[1] >= 64

    def product_mask(pixels: np.ndarray) -> np.ndarray:
        return np.abs(pixels - np.array(BACKGROUND_RGB)).max(axis=2) > 40

    def mean_colour(pixels: np.ndarray) -> np.ndarray:
        return pixels[product_mask(pixels)].mean(axis=0)

    assert np.linalg.norm(mean_colour(red) - mean_colour(blue)) > 80
    assert mean_colour(red)[0] > mean_colour(red)[2] and mean_colour(blue)[2] > mean_colour(blue)[0]

    # The silhouette tells the category: items of one category share it (up to a small shift),
    # items of two categories do not, whatever their colours.
    def aligned_overlap(a: np.ndarray, b: np.ndarray) -> float:
        shifts = [np.roll(a, (dy, dx), axis=(0, 1)) for dy in range(-6, 7) for dx in range(-6, 7)]
        return max((s & b).sum() / (s | b).sum() for s in shifts)

    # Dark fills only: a white item on the light background is seen by its outline, not a threshold.
    with_image = items.dropna(subset=["image_path"])
    with_image = with_image[with_image["colour"].isin(["red", "green", "blue", "purple", "brown", "black"])]
    masks = {
        category: [product_mask(_picture(data, group, item_id=i)) for i in group["item_id"].iloc[:2]]
        for category, group in with_image.groupby("category")
    }
    assert len(masks) == 8
    for category, (first, second) in masks.items():
        assert aligned_overlap(first, second) > 0.95, category
    for a, b in itertools.combinations(masks, 2):
        assert aligned_overlap(masks[a][0], masks[b][0]) < 0.9, (a, b)


def test_chunks_write_several_event_files_with_distinct_sessions(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    summary = generate_shop(data, ShopSpec(users=120, items=60, days=7, user_chunk=50), progress=False)
    parts = sorted((data.incoming / "events").glob("part-*.parquet"))
    assert len(parts) == 3
    events = pd.concat([pd.read_parquet(p) for p in parts])
    assert events.groupby("session_id")["user_id"].nunique().max() == 1
    assert summary["events"] == len(events)


def test_a_spec_out_of_range_is_refused() -> None:
    with pytest.raises(InvalidInput, match="users"):
        ShopSpec(users=0)
    with pytest.raises(InvalidInput, match="taste_drift"):
        ShopSpec(taste_drift=1.5)


def test_vitrine_generate_ends_the_shop_yesterday_unless_told_a_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A freshly generated default shop is a live shop's history: served today, its features are not stale."""
    import sys
    from datetime import date, datetime, timedelta, timezone

    from vitrine import cli
    from vitrine.shop.store import read_events

    def generate(data: DataDir, *extra: str) -> pd.Series:
        argv = ["vitrine", "generate", "--users", "80", "--items", "40", "--days", "5", "--json", "--data-dir", str(data.root), *extra]
        monkeypatch.setattr(sys, "argv", argv)
        try:
            cli.main()
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err
        capsys.readouterr()
        return read_events(data)["timestamp"].dt.date

    today = datetime.now(timezone.utc).date()
    days = generate(DataDir.resolve(tmp_path / "default"))
    assert days.max() == today - timedelta(days=1) and days.min() >= today - timedelta(days=5)
    days = generate(DataDir.resolve(tmp_path / "dated"), "--start", "2026-01-01")
    assert days.min() >= date(2026, 1, 1) and days.max() <= date(2026, 1, 5)
