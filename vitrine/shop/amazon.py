"""Import of a real shop: the public Amazon Reviews 2018 JSON-lines format (McAuley lab).

`import_amazon_reviews` converts a reviews file (`<Category>_5.json` or the full reviews file) and its
metadata file (`meta_<Category>.json`) into the data contract in `DataDir.incoming`, then runs
`ingest` on it, so the Amazon shop is validated exactly like any other.

Mapping (one review line / one meta line at a time):

    events  user_id = reviewerID, item_id = asin, event_type = "purchase" (a review stands for a
            purchase), timestamp = unixReviewTime (seconds, UTC; day resolution in this data),
            quantity = 1, rating = overall (an extra column; the contract keeps extras)
    items   item_id = asin, title = title (HTML entities decoded, blanks stripped),
            description = the description paragraphs joined by blank lines,
            category = the last category that says more than the department (see
            `GENERIC_CATEGORIES`), else main_cat, brand, price = `parse_price(price)`,
            created_at = the item's first review (the data has no listing date),
            image_path = images/<asin>.jpg when `<images>/<asin>.jpg` exists and the asin is a plain
            file name (`PHOTO_ASIN`), else null

Malformed JSON lines (reason `malformed_json`) and lines without an `asin` (`missing_value`) go to
`rejects/amazon_reviews.parquet` / `rejects/amazon_meta.parquet` with file and line number, and are
counted. Reviews of asins absent from the metadata reach `ingest` and are rejected there as
`unknown_item`. An item without a title is kept, title empty, with a `missing_title_kept` warning
row in `rejects/items.parquet`: its reviews are sales history the models need.

Example:
    >>> from vitrine.paths import DataDir
    >>> result = import_amazon_reviews(DataDir.resolve("data"), Path("Gift_Cards_5.json"),
    ...                                Path("meta_Gift_Cards.json"), Path("images"))
    >>> result.ingest.tables["items"].accepted
    148
"""

from __future__ import annotations

import html
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from vitrine.errors import InvalidInput
from vitrine.paths import DataDir
from vitrine.shop.ingest import MAX_REJECT_VALUE_CHARS, MISSING_VALUE, REJECT_COLUMNS, IngestReport, ingest, link_or_copy

# Category names that only repeat the department or are scraping debris, never the item's kind.
GENERIC_CATEGORIES = frozenset({"", "departments", "all departments", "categories", "featured categories", "shop by category"})
# A price such as "$25.00", "$1,299.99" or "25"; the first amount wins (see `parse_price`).
PRICE_AMOUNT = re.compile(r"\$?\s*(\d[\d,]*(?:\.\d+)?)")
HTML_TAG = re.compile(r"<[^>]*>")
# An asin that may name a photo: a plain file name. An asin with `/` or `..` in it would otherwise reach
# outside the images dir (`images/../x.jpg`); such an item keeps its row and simply has no photo.
PHOTO_ASIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# Reason written to the rejects file for a line that is not a JSON object with the key we need.
MALFORMED_JSON = "malformed_json"


def parse_price(text: object) -> float | None:
    """A price in dollars from Amazon's price text, or None when there is none.

    "$25.00" -> 25.0; "$1,299.99" -> 1299.99. A range such as "$25.00 - $100.00" (a listing with
    several variants, e.g. gift amounts) -> 25.0, the low end: the cheapest variant is the price a
    shopper first sees, and one number per item is what the contract holds. Empty text, text
    without an amount (Amazon's metadata sometimes holds page debris here) and zero -> None.

    Example:
        >>> parse_price("$25.00 - $100.00")
        25.0
    """
    if not isinstance(text, str):
        return None
    match = PRICE_AMOUNT.search(text)
    if match is None or len(text) > 40:  # long text is scraped page content, not a price
        return None
    value = float(match.group(1).replace(",", ""))
    return value if value > 0 else None


def _clean(text: object) -> str | None:
    """Decoded, tag-free, single-spaced text; None when nothing is left."""
    if not isinstance(text, str):
        return None
    text = " ".join(HTML_TAG.sub(" ", html.unescape(text)).split())
    return text or None


def pick_category(categories: object, main_cat: object) -> str | None:
    """The most specific category: the last one that is not generic, else main_cat.

    Example:
        >>> pick_category(["Clothing, Shoes & Jewelry", "Women", "Dresses"], "Fashion")
        'Dresses'
    """
    for name in reversed(categories if isinstance(categories, list) else []):
        cleaned = _clean(name)
        if cleaned and cleaned.lower() not in GENERIC_CATEGORIES:
            return cleaned
    return _clean(main_cat)


@dataclass(frozen=True)
class _BadLine:
    file: str
    line: int  # 1-based line number in the file
    text: str
    field: str | None  # the missing key, or None when the line is not JSON at all
    reason: str  # MALFORMED_JSON or ingest's MISSING_VALUE
    problem: str  # what the parser said


@dataclass
class AmazonImport:
    """What the conversion read and wrote, and the ingest that followed."""

    reviews_lines: int = 0
    reviews_malformed: int = 0
    meta_lines: int = 0
    meta_malformed: int = 0
    items: int = 0  # item rows written to incoming (one per meta line)
    purchases: int = 0  # event rows written to incoming (one per review line)
    images: int = 0  # items with a photo found in the images dir
    prices: int = 0  # items with a parsable price
    price_ranges: int = 0  # items whose price was a range (the low end was kept)
    bad_lines: list[_BadLine] = field(default_factory=list)
    ingest: IngestReport | None = None

    def to_dict(self) -> dict[str, Any]:
        counts = {
            "reviews_lines": self.reviews_lines, "reviews_malformed": self.reviews_malformed,
            "meta_lines": self.meta_lines, "meta_malformed": self.meta_malformed,
            "items": self.items, "purchases": self.purchases, "images": self.images,
            "prices": self.prices, "price_ranges": self.price_ranges,
        }
        return {"converted": counts, "ingest": self.ingest.to_dict() if self.ingest else None}


def _json_lines(path: Path, key: str, result: list[_BadLine]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON object with `key`; other non-blank lines go to `result`."""
    try:
        handle = path.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc})") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                result.append(_BadLine(path.name, number, line.rstrip("\n"), None, MALFORMED_JSON, f"{exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(record, dict) or not record.get(key):
                if not isinstance(record, dict):
                    result.append(_BadLine(path.name, number, line.rstrip("\n"), None, MALFORMED_JSON, "not a JSON object"))
                else:
                    result.append(_BadLine(path.name, number, line.rstrip("\n"), key, MISSING_VALUE, f"no {key!r}"))
                continue
            yield number, record


def import_amazon_reviews(data: DataDir, reviews: Path, meta: Path, images: Path | None = None) -> AmazonImport:
    """Convert Amazon Reviews 2018 files into the contract in `data.incoming`, then `ingest` them.

    Args:
        data: the data dir; `data.incoming` is emptied and rewritten, the shop replaced.
        reviews: reviews JSON-lines (`reviewerID`, `asin`, `unixReviewTime`, `overall`, ...).
        meta: metadata JSON-lines (`asin`, `title`, `description`, `category`, `main_cat`, `brand`, `price`).
        images: optional dir of `<asin>.jpg` photos (read-only is fine: they are linked or copied).

    Returns:
        The conversion counts and the `IngestReport`.

    Example:
        >>> import_amazon_reviews(data, Path("Gift_Cards_5.json"), Path("meta_Gift_Cards.json")).purchases
        2972
    """
    for path in (reviews, meta):
        if not path.is_file():
            raise InvalidInput(f"{path}: no such file")
    if images is not None and not images.is_dir():
        raise InvalidInput(f"{images}: no such images directory")
    result = AmazonImport()
    review_bad: list[_BadLine] = []
    meta_bad: list[_BadLine] = []

    events = pd.DataFrame(
        [
            {
                "user_id": record.get("reviewerID"),
                "item_id": record["asin"],
                "event_type": "purchase",
                "timestamp": record.get("unixReviewTime"),
                "quantity": 1.0,
                "rating": record.get("overall"),
            }
            for _, record in _json_lines(reviews, "asin", review_bad)
        ],
        columns=["user_id", "item_id", "event_type", "timestamp", "quantity", "rating"],
    )
    events["timestamp"] = pd.to_datetime(pd.to_numeric(events["timestamp"], errors="coerce"), unit="s", utc=True)
    events["rating"] = pd.to_numeric(events["rating"], errors="coerce")
    first_review = events.groupby("item_id")["timestamp"].min()

    rows = []
    for _, record in _json_lines(meta, "asin", meta_bad):
        price_text = record.get("price")
        if isinstance(price_text, str) and "-" in price_text and parse_price(price_text) is not None:
            result.price_ranges += 1
        description = record.get("description")
        paragraphs = [_clean(p) for p in description] if isinstance(description, list) else [_clean(description)]
        rows.append(
            {
                "item_id": record["asin"],
                "title": _clean(record.get("title")),
                "description": "\n\n".join(p for p in paragraphs if p) or None,
                "category": pick_category(record.get("category"), record.get("main_cat")),
                "brand": _clean(record.get("brand")),
                "price": parse_price(price_text),
                "created_at": first_review.get(record["asin"], pd.NaT),
            }
        )
    columns = ["item_id", "title", "description", "category", "brand", "price", "created_at"]
    items = pd.DataFrame(rows, columns=columns)
    items["price"] = items["price"].astype("float64")
    items["created_at"] = pd.to_datetime(items["created_at"], utc=True)

    incoming = data.incoming
    if incoming.exists():
        shutil.rmtree(incoming)
    (incoming / "images").mkdir(parents=True)
    image_paths: list[str | None] = []
    for asin in items["item_id"]:
        photo = images / f"{asin}.jpg" if images is not None and PHOTO_ASIN.fullmatch(str(asin)) else None
        if photo is not None and photo.is_file():
            link_or_copy(photo, incoming / "images" / photo.name)
            image_paths.append(f"images/{photo.name}")
        else:
            image_paths.append(None)
    items["image_path"] = image_paths
    items.to_parquet(incoming / "items.parquet", index=False)
    events.to_parquet(incoming / "events.parquet", index=False)

    result.reviews_lines = len(events) + len(review_bad)
    result.reviews_malformed = len(review_bad)
    result.meta_lines = len(items) + len(meta_bad)
    result.meta_malformed = len(meta_bad)
    result.items, result.purchases = len(items), len(events)
    result.images = sum(path is not None for path in image_paths)
    result.prices = int(items["price"].notna().sum())
    result.bad_lines = review_bad + meta_bad
    _write_bad_lines(data, "amazon_reviews", review_bad)
    _write_bad_lines(data, "amazon_meta", meta_bad)
    result.ingest = ingest(data, incoming)
    return result


def _write_bad_lines(data: DataDir, name: str, lines: list[_BadLine]) -> None:
    """`rejects/<name>.parquet` in the rejects format (the raw line is the value), removed when there are none."""
    target = data.rejects / f"{name}.parquet"
    if not lines:
        target.unlink(missing_ok=True)
        return
    data.rejects.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {
            "problem": [bad.problem for bad in lines],
            "reject_file": [bad.file for bad in lines],
            "reject_row": [bad.line for bad in lines],
            "reject_field": [bad.field for bad in lines],
            "reject_value": [bad.text[:MAX_REJECT_VALUE_CHARS] for bad in lines],
            "reject_reason": [bad.reason for bad in lines],
        },
        columns=["problem", *REJECT_COLUMNS],
    )
    frame.to_parquet(target, index=False)
