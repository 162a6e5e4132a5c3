"""The data contract: what a shop brings, as pandera schemas.

Three tables. Prices are in the shop's one currency (US dollars for the default and Amazon shops);
timestamps are UTC. Optional columns may be absent or empty: every stage copes.

- items:  item_id (str, unique), title (str; an empty one is kept, see below); optional
          description, category, brand, price (> 0), image_path (relative to the data dir it
          came with), created_at.
          Extra attribute columns (colour, pattern, material, ...) are kept as they are.
- events: user_id (str), item_id (str, a known item), event_type (one of EVENT_TYPES),
          timestamp; optional session_id, quantity (>= 1), price (paid, > 0).
- users:  user_id (str, unique); optional signup_at and any attributes.

Row-level checks (bad values) reject the row; missing required columns or a column that cannot
be coerced to its type make the whole file unusable. An item without a title is the exception:
it is kept (title empty; the encoder reads its description, category and brand), with a warning
row, because rejecting it would also reject every sale of it.
"""

from __future__ import annotations

import pandera.pandas as pa

# The funnel, weakest to strongest. Order matters: later stages grade labels by it.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")

ITEM_REQUIRED = ("item_id", "title")
ITEM_OPTIONAL = ("description", "category", "brand", "price", "image_path", "created_at")
EVENT_REQUIRED = ("user_id", "item_id", "event_type", "timestamp")
EVENT_OPTIONAL = ("session_id", "quantity", "price")
USER_REQUIRED = ("user_id",)
USER_OPTIONAL = ("signup_at",)

UTC_TIMESTAMP = "datetime64[ns, UTC]"

# Images with more pixels are refused (by `ingest`, and by the encoder should one slip in): 40M pixels is a
# 7,000 x 5,700 photo, past any product shot, while a decompression bomb (a few KB of PNG that decodes to
# gigabytes) claims far more.
MAX_IMAGE_PIXELS = 40_000_000

ITEMS = pa.DataFrameSchema(
    {
        "item_id": pa.Column(str, pa.Check.str_length(min_value=1), unique=True),
        # Required as a column; an empty value is kept as "" with a warning (`ingest`), not rejected.
        "title": pa.Column(str, nullable=True),
        "description": pa.Column(str, nullable=True, required=False),
        "category": pa.Column(str, nullable=True, required=False),
        "brand": pa.Column(str, nullable=True, required=False),
        "price": pa.Column(float, pa.Check.gt(0), nullable=True, required=False),
        "image_path": pa.Column(str, nullable=True, required=False),
        "created_at": pa.Column(UTC_TIMESTAMP, nullable=True, required=False),
    },
    name="items",
    strict=False,
    coerce=True,
)

EVENTS = pa.DataFrameSchema(
    {
        "user_id": pa.Column(str, pa.Check.str_length(min_value=1)),
        "item_id": pa.Column(str, pa.Check.str_length(min_value=1)),
        "event_type": pa.Column(str, pa.Check.isin(EVENT_TYPES)),
        "timestamp": pa.Column(UTC_TIMESTAMP),
        "session_id": pa.Column(str, nullable=True, required=False),
        "quantity": pa.Column(float, pa.Check.ge(1), nullable=True, required=False),
        "price": pa.Column(float, pa.Check.gt(0), nullable=True, required=False),
    },
    name="events",
    strict=False,
    coerce=True,
)

USERS = pa.DataFrameSchema(
    {
        "user_id": pa.Column(str, pa.Check.str_length(min_value=1), unique=True),
        "signup_at": pa.Column(UTC_TIMESTAMP, nullable=True, required=False),
    },
    name="users",
    strict=False,
    coerce=True,
)
