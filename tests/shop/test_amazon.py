"""Amazon Reviews 2018 import: the real Gift Cards sample end to end, and the format's rough edges."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vitrine.paths import DataDir
from vitrine.shop import store
from vitrine.shop.amazon import import_amazon_reviews, parse_price, pick_category

# What the committed sample's files hold (tests/data/make_giftcards_sample.py; counted from them).
SAMPLE_ITEMS = 40
SAMPLE_REVIEWS = 825
SAMPLE_USERS = 362
SAMPLE_PHOTOS = 24
SAMPLE_PRICED = 26  # 14 meta lines have an empty price


def test_real_sample_imports_end_to_end(amazon_shop: DataDir, amazon_sample: Path) -> None:
    items = store.read_items(amazon_shop)
    events = store.read_events(amazon_shop)

    assert len(items) == SAMPLE_ITEMS and items["item_id"].is_unique
    assert len(events) == SAMPLE_REVIEWS  # every review's asin is in the metadata: no rejects
    assert events["user_id"].nunique() == SAMPLE_USERS
    assert set(events["event_type"]) == {"purchase"}
    assert events["timestamp"].min() == pd.Timestamp("2012-01-31", tz="UTC")
    assert events["timestamp"].max() == pd.Timestamp("2018-08-22", tz="UTC")
    assert items["price"].notna().sum() == SAMPLE_PRICED and (items["price"].dropna() > 0).all()
    assert items["image_path"].notna().sum() == SAMPLE_PHOTOS
    assert not list(amazon_shop.rejects.glob("*.parquet"))

    # Real photos, decodable where the shop says they are.
    for path in items["image_path"].dropna().head(5):
        with Image.open(amazon_shop.shop / path) as image:
            assert min(image.size) >= 64

    by_id = items.set_index("item_id")
    first_review = events.groupby("item_id")["timestamp"].min()
    pd.testing.assert_series_equal(by_id.loc[first_review.index, "created_at"], first_review, check_names=False)
    assert by_id.at["B004LLIKVU", "title"] == "Amazon eGift Card"  # the raw title has a leading blank
    assert (items["category"] == "Gift Cards").all()


def test_conversion_counts_match_the_files(amazon_sample: Path, data_dir: DataDir) -> None:
    result = import_amazon_reviews(
        data_dir, amazon_sample / "Gift_Cards_5.json", amazon_sample / "meta_Gift_Cards.json", amazon_sample / "images"
    )
    converted = result.to_dict()["converted"]
    assert converted == {
        "reviews_lines": SAMPLE_REVIEWS, "reviews_malformed": 0, "meta_lines": SAMPLE_ITEMS, "meta_malformed": 0,
        "items": SAMPLE_ITEMS, "purchases": SAMPLE_REVIEWS, "images": SAMPLE_PHOTOS, "prices": SAMPLE_PRICED,
        "price_ranges": 0,
    }
    assert result.ingest is not None
    assert result.ingest.tables["events"].accepted == SAMPLE_REVIEWS


@pytest.mark.parametrize(
    ("text", "price"),
    [("$25.00", 25.0), ("$1,299.99", 1299.99), ("$25.00 - $100.00", 25.0), ("", None), (None, None),
     ("$0.00", None), ("<span class='a-price'>see options</span>", None)],
)
def test_parse_price(text: str | None, price: float | None) -> None:
    assert parse_price(text) == price


def test_pick_category_skips_generic_names() -> None:
    assert pick_category(["Clothing, Shoes & Jewelry", "Women", "Dresses"], "Fashion") == "Dresses"
    assert pick_category(["Gift Cards", "Departments"], "Gift Cards") == "Gift Cards"
    assert pick_category([], '<img src="x.png" class="nav-categ-image" alt="AMAZON FASHION"/>Amazon Fashion') == "Amazon Fashion"


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_malformed_lines_unknown_asins_and_price_ranges(tmp_path: Path, data_dir: DataDir) -> None:
    meta = write_lines(tmp_path / "meta.json", [
        {"asin": "A1", "title": "Coffee &amp; Tea Card", "price": "$25.00 - $100.00", "category": ["Gift Cards", "Restaurants"],
         "main_cat": "Gift Cards", "brand": "Brew", "description": ["Good.", "<b>Really</b> good."]},
        {"asin": "A2", "title": "", "price": "", "category": [], "main_cat": "Gift Cards", "brand": "", "description": []},
        '{"asin": "A3", "title": "cut off',
    ])
    reviews = write_lines(tmp_path / "reviews.json", [
        {"reviewerID": "R1", "asin": "A1", "unixReviewTime": 1_500_000_000, "overall": 5.0},
        "this is not json",
        {"reviewerID": "R2", "asin": "A9", "unixReviewTime": 1_500_086_400, "overall": 3.0},
        {"reviewerID": "R3", "unixReviewTime": 1_500_086_400},
        {"reviewerID": "R1", "asin": "A1", "unixReviewTime": 1_400_000_000, "overall": 4.0},
        {"reviewerID": "R3", "asin": "A2", "unixReviewTime": 1_500_172_800, "overall": 2.0},
    ])
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 80), "green").save(images / "A1.jpg")

    result = import_amazon_reviews(data_dir, reviews, meta, images)

    assert (result.reviews_lines, result.reviews_malformed, result.meta_lines, result.meta_malformed) == (6, 2, 3, 1)
    assert result.price_ranges == 1
    bad_reviews = pd.read_parquet(data_dir.rejects / "amazon_reviews.parquet")
    assert list(zip(bad_reviews.reject_file, bad_reviews.reject_row, bad_reviews.reject_field, bad_reviews.reject_reason)) == [
        ("reviews.json", 2, None, "malformed_json"), ("reviews.json", 4, "asin", "missing_value"),
    ]
    assert bad_reviews.reject_value.iloc[0] == "this is not json"
    bad_meta = pd.read_parquet(data_dir.rejects / "amazon_meta.parquet")
    assert list(zip(bad_meta.reject_file, bad_meta.reject_row, bad_meta.reject_reason)) == [("meta.json", 3, "malformed_json")]

    report = result.ingest
    assert report is not None
    # A2 has no title: kept, with a warning, and so is its purchase.
    assert report.tables["items"].reasons == {"missing_title_kept": 1} and report.tables["items"].rejected == 0
    assert report.tables["events"].reasons == {"unknown_item": 1}  # A9 is not in the metadata
    untitled = store.read_items(data_dir).set_index("item_id").loc["A2"]
    assert untitled.title == "" and untitled.category == "Gift Cards"
    item = store.read_items(data_dir).set_index("item_id").loc["A1"]
    assert item.title == "Coffee & Tea Card"
    assert item.description == "Good.\n\nReally good."
    assert (item.category, item.brand, item.price) == ("Restaurants", "Brew", 25.0)
    assert item.created_at == pd.Timestamp(1_400_000_000, unit="s", tz="UTC")  # the first review, not the first line
    assert item.image_path == "images/A1.jpg"
    assert store.read_events(data_dir)["rating"].tolist() == [4.0, 5.0, 2.0]


def test_an_asin_cannot_reach_outside_the_images_dir(tmp_path: Path, data_dir: DataDir) -> None:
    """An asin such as "../secret" names no photo (the file beside the images dir is not linked); the item stays."""
    meta = write_lines(tmp_path / "meta.json", [
        {"asin": "../secret", "title": "Odd id card"},
        {"asin": "A1", "title": "Plain card"},
    ])
    reviews = write_lines(tmp_path / "reviews.json", [{"reviewerID": "R1", "asin": "A1", "unixReviewTime": 1_500_000_000}])
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 80), "red").save(tmp_path / "secret.jpg")
    Image.new("RGB", (80, 80), "green").save(images / "A1.jpg")

    result = import_amazon_reviews(data_dir, reviews, meta, images)

    assert result.images == 1
    items = store.read_items(data_dir).set_index("item_id")
    assert pd.isna(items.at["../secret", "image_path"]) and items.at["A1", "image_path"] == "images/A1.jpg"
    assert not (data_dir.images / "secret.jpg").exists()
