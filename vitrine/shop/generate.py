"""The default shop: a synthetic, multimodal catalogue with users whose behaviour follows hidden tastes.

`generate_shop(data, spec)` writes, in the data contract's format (`vitrine.shop.contract`), to
`data.incoming`:

    items.parquet            item_id, title, description, category, brand, price, image_path, created_at,
                             colour, pattern, material, price_band
    users.parquet            user_id, signup_at
    events/part-00000.parquet ...   one file per chunk of users; timestamps datetime64[ns, UTC]
    images/<item_id>.png     one picture per item (a few items have none, as in real catalogues)

and, under `data.truth` (for evaluation only: no model may read it), the hidden tastes of every user
and the true attributes of every item.

Design
------
Catalogue. Each item draws a category, colour, pattern, material and brand; its price is the
category's base price times its brand's price level times log-normal noise, and `price_band` (1-5)
places it within its category. A latent `quality` sets its popularity (Zipf-like in its rank) and
helps it convert. 30% of items exist before the first day; the rest arrive uniformly through the
period (cold-start items). Item ids follow creation order, as an auto-increment would.

Image and text carry partial, complementary information. The image (`vitrine.shop.render`) shows
the true category (silhouette), colour (fill) and pattern (overlay). The title and description name
colour, pattern, material and brand with synonyms ("crimson" for red) and omissions, and 5% of listings
name the wrong colour; material and brand are only in the text.

Users. Each user has hidden tastes: category and colour preferences (Dirichlet draws) that drift
linearly from a start profile to an end profile (`taste_drift` of the way), pattern preferences, a
price sensitivity, a favourite brand per category with a loyalty strength, and an activity rate. Some
users sign up during the period (new users) and act only after signing up.

Sessions. A user's sessions follow a Poisson process whose intensity has weekly and daily seasonality
and slow growth (sampled exactly by inverting the cumulative intensity). A session has an intent: a
category drawn from the user's current preferences and, half of the time, a colour. Each view picks
an item among those that *exist at that moment* from one of: the intent's (category, colour) or
category shelf, the whole shop, or the new-arrivals shelf (items of the last 14 days), each weighted
by popularity. Each view then goes down the funnel view -> click -> add_to_cart -> purchase with
probabilities that rise with the item's match to the user's tastes (category, colour, pattern, brand,
price against sensitivity) and quality, so a content-based model can learn from item attributes.

Scale. Everything is vectorised numpy: the catalogue and users are built whole (cheap), then users are
simulated in chunks of `user_chunk`, each chunk written as one events file, so memory is bounded by the
chunk. Item shelves are arrays sorted by (shelf, created_at), so "items of shelf b that exist at time
t" is a prefix found by `searchsorted`, and a popularity-weighted draw among them is a second
`searchsorted` in the cumulative weights. Images are rendered from 400 cached templates plus per-item
noise; PNG encoding dominates.

Determinism. Every random draw comes from `numpy.random.default_rng([seed, stream, ...])` with a
fixed stream per purpose (catalogue, users, each user chunk, images), so a seed gives the same
files, bit for bit, whatever ran before.

Example:
from vitrine.paths import DataDir
    >>> summary = generate_shop(DataDir.resolve("data"), DEMO)
    >>> summary["events"] > 100_000
    True
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from vitrine.errors import InvalidInput
from vitrine.paths import DataDir
from vitrine.shop.contract import EVENT_TYPES
from vitrine.shop.render import COLOUR_RGB, PATTERNS, SHAPES, render, save_png


# Smallest picture side: image encoders see nothing of the pattern below this.
MIN_IMAGE_SIZE = 64


@dataclass(frozen=True)
class ShopSpec:
    """What shop to generate. The defaults are the demo shop (a few hundred thousand events)."""

    users: int = 5_000  # users in users.parquet, including those who sign up during the period
    items: int = 2_000  # items in the catalogue, including those created during the period
    days: int = 60  # length of the event period in days
    seed: int = 0  # the one seed every random draw derives from
    start: date = date(2026, 1, 1)  # first day of events (00:00 UTC)
    sessions_per_user_day: float = 0.2  # mean sessions per active user per day
    views_per_session: float = 5.0  # mean product views per session (at least one)
    new_user_share: float = 0.25  # share of users who sign up during the period
    initial_item_share: float = 0.3  # share of items that exist before the first day
    taste_drift: float = 0.3  # how far category/colour tastes move from start to end profile (0-1)
    missing_image_share: float = 0.03  # share of items without a picture (image_path null)
    wrong_colour_share: float = 0.05  # share of listings whose text names the wrong colour
    image_size: int = 64  # side of the product pictures in pixels
    user_chunk: int = 50_000  # users simulated (and one events file written) at a time; bounds memory

    def __post_init__(self) -> None:
        for name in ("users", "items", "days", "user_chunk"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"shop spec: {name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise InvalidInput(f"shop spec: image_size must be >= {MIN_IMAGE_SIZE} pixels, got {self.image_size}")
        for name in ("new_user_share", "initial_item_share", "taste_drift", "missing_image_share",
                     "wrong_colour_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInput(f"shop spec: {name} must be within [0, 1], got {getattr(self, name)}")
        if self.sessions_per_user_day <= 0:
            raise InvalidInput(f"shop spec: sessions_per_user_day must be > 0, got {self.sessions_per_user_day}")
        if self.views_per_session < 1:
            raise InvalidInput(f"shop spec: views_per_session must be >= 1, got {self.views_per_session}")


# The demo shop: about 5k users, 2k items, 60 days, ~300k events.
DEMO = ShopSpec()
# The benchmark preset: 1M users, 100k items, 60 days, 20M+ events.
SCALE = ShopSpec(users=1_000_000, items=100_000, sessions_per_user_day=0.075)


# --- The catalogue's vocabulary ------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """How one category's items are named and priced."""

    share: float  # share of the catalogue
    base_price: float  # typical price in USD (a mid-range brand, no noise)
    nouns: tuple[str, ...]  # what titles call the item
    materials: tuple[str, ...]  # what it can be made of
    brands: tuple[tuple[str, float], ...]  # (brand, price level relative to base_price), most popular first


CATEGORIES: dict[str, Category] = {
    "apparel": Category(0.20, 25.0, ("T-Shirt", "Tee", "Top", "Crew-Neck Shirt"),
                        ("cotton", "linen", "wool", "polyester"),
                        (("Basico", 0.6), ("Northwind", 1.0), ("Loomcraft", 1.3), ("Maison Rue", 2.0))),
    "shoes": Category(0.14, 70.0, ("Sneakers", "Trainers", "Running Shoes", "Low-Top Shoes"),
                      ("leather", "canvas", "suede", "mesh"),
                      (("Stridewell", 0.7), ("Pace", 1.0), ("Kobalt Run", 1.3), ("Aurelio", 2.2))),
    "bags": Category(0.12, 60.0, ("Handbag", "Tote Bag", "Shoulder Bag", "Top-Handle Bag"),
                     ("leather", "canvas", "nylon", "suede"),
                     (("Carryall", 0.6), ("Hollis", 1.0), ("Verano", 1.5), ("Castellane", 2.5))),
    "home": Category(0.12, 45.0, ("Table Lamp", "Desk Lamp", "Bedside Lamp", "Lamp"),
                     ("ceramic", "glass", "wood", "metal"),
                     (("Hearth", 0.7), ("Lumen & Co", 1.0), ("Nordlys", 1.4), ("Atelier Vos", 2.0))),
    "electronics": Category(0.10, 650.0, ("Laptop", "Notebook", "Ultrabook", "Laptop Computer"),
                            ("aluminium", "plastic", "magnesium", "carbon fibre"),
                            (("Voltek", 0.6), ("Nimbus", 1.0), ("Arcadia", 1.4), ("Zentra", 2.0))),
    "kitchen": Category(0.12, 16.0, ("Mug", "Coffee Mug", "Tea Cup", "Cup"),
                        ("ceramic", "porcelain", "stoneware", "enamel"),
                        (("Daybreak", 0.7), ("Kiln & Co", 1.0), ("Brew Theory", 1.3), ("Porcellana", 2.0))),
    "sports": Category(0.10, 30.0, ("Ball", "Football", "Training Ball", "Match Ball"),
                       ("rubber", "synthetic leather", "PU", "foam"),
                       (("Kickr", 0.7), ("Apex", 1.0), ("Velocita", 1.4), ("Prime League", 1.9))),
    "accessories": Category(0.10, 28.0, ("Hat", "Bucket Hat", "Sun Hat", "Wide-Brim Hat"),
                            ("wool", "cotton", "felt", "straw"),
                            (("Shade", 0.6), ("Milliner", 1.0), ("Brimsby", 1.4), ("Chapeau Noir", 2.2))),
}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)

# Words a listing may use for each colour: the plain name first, then synonyms.
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet", "cherry"),
    "orange": ("orange", "tangerine", "burnt orange"),
    "yellow": ("yellow", "mustard", "lemon"),
    "green": ("green", "emerald", "forest green", "olive"),
    "blue": ("blue", "cobalt", "royal blue", "azure"),
    "purple": ("purple", "violet", "plum"),
    "pink": ("pink", "rose", "blush"),
    "brown": ("brown", "chocolate", "tan", "camel"),
    "black": ("black", "jet black", "onyx"),
    "white": ("white", "ivory", "snow white", "off-white"),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOUR_WORDS)
# How common each colour is in the catalogue, in COLOUR_NAMES order (neutrals sell most).
COLOUR_SHARE = (0.10, 0.06, 0.06, 0.09, 0.14, 0.06, 0.07, 0.09, 0.18, 0.15)

# Words for each pattern in titles ("" = not mentioned).
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "solid": ("", "", "plain", "solid"),
    "striped": ("striped", "stripe", "pinstripe", "banded"),
    "dotted": ("polka dot", "dotted", "spotted", "dot-print"),
    "checked": ("checked", "check", "checkerboard", "chequered"),
    "zigzag": ("zigzag", "chevron", "zig-zag"),
}
PATTERN_SHARE = (0.40, 0.18, 0.14, 0.14, 0.14)  # in PATTERNS order

TITLE_ADJECTIVES = ("Classic", "Everyday", "Essential", "Modern", "Premium", "Vintage", "Slim", "Soft")
DESCRIPTION_OPENERS = ("A {adj} {noun}", "This {adj} {noun}", "Our {adj} {noun}", "The {adj} {noun}")
DESCRIPTION_EXTRAS = (
    "Free returns within 30 days.",
    "Ships in two business days.",
    "A customer favourite.",
    "Designed to last.",
    "Great as a gift.",
    "",
    "",
)

# --- Noise in the listings (shares of listings) -------------------------------------------------
TITLE_BRAND_MISSING = 0.2  # titles that leave out the brand
TITLE_COLOUR_MISSING = 0.15  # titles that leave out the colour (descriptions may still say it)
TITLE_PATTERN_MISSING = 0.25  # titles that leave out a non-solid pattern
TITLE_MATERIAL_SHOWN = 0.5  # titles that name the material
TITLE_ADJECTIVE_SHOWN = 0.3  # titles with a marketing adjective in front
DESCRIPTION_COLOUR_MISSING = 0.35  # descriptions that leave out the colour
DESCRIPTION_MATERIAL_MISSING = 0.2  # descriptions that leave out the material
SYNONYM_SHARE = 0.4  # colour mentions that use a synonym rather than the plain name

# --- Prices --------------------------------------------------------------------------------------
PRICE_NOISE_SIGMA = 0.3  # log-normal spread of one item's price around its brand's level
# price_band edges on log(price / base_price): about the quintiles of the resulting distribution.
PRICE_BAND_EDGES = (-0.45, -0.12, 0.15, 0.50)
# Purchases: share paid at a discount, and the discounts offered.
DISCOUNT_SHARE = 0.2
DISCOUNTS = (0.1, 0.15, 0.2, 0.3)

# --- Timeline ------------------------------------------------------------------------------------
DAY_S = 86_400.0
PRE_PERIOD_ITEM_DAYS = 365  # items existing at the start were created within this many days before it
PRE_PERIOD_USER_DAYS = 730  # users existing at the start signed up within this many days before it
COLD_START_DAYS = 7  # items created in the last this-many days count as cold-start in the summary
NEW_ARRIVAL_DAYS = 14  # the new-arrivals shelf shows items created within this many days
# Relative traffic by weekday, Monday first: weekend evenings are busiest in e-commerce.
WEEKDAY_TRAFFIC = (0.95, 0.92, 0.94, 0.98, 1.05, 1.22, 1.18)
# Relative traffic by UTC hour: quiet nights, a lunchtime bump, an evening peak.
HOUR_TRAFFIC = (0.25, 0.15, 0.1, 0.1, 0.12, 0.2, 0.4, 0.7, 0.9, 1.0, 1.05, 1.1,
                1.25, 1.15, 1.05, 1.0, 1.05, 1.15, 1.35, 1.6, 1.7, 1.5, 1.0, 0.55)
TRAFFIC_GROWTH = 0.2  # traffic grows linearly by this fraction over the period

# --- Tastes --------------------------------------------------------------------------------------
CATEGORY_ALPHA = 0.3  # Dirichlet concentration of category tastes: low = a few favourite categories
COLOUR_ALPHA = 0.4  # of colour tastes
PATTERN_ALPHA = 0.8  # of pattern tastes (milder preferences than colour)
ACTIVITY_SIGMA = 0.9  # log-normal spread of activity across users (heavy users exist)
MAX_SESSIONS_PER_DAY = 6  # caps the heaviest users, who would otherwise look like bots
PRICE_SENSITIVITY_MEAN, PRICE_SENSITIVITY_STD = 1.0, 0.6  # utility lost per std of log price
BRAND_LOYALTY_BETA = (2.0, 3.0)  # Beta parameters of how much a user sticks to a favourite brand
ZIPF_EXPONENT = 0.8  # popularity weight of the r-th most popular item ~ (r + ZIPF_OFFSET)^-exponent
ZIPF_OFFSET = 5.0

# --- Browsing: where each view comes from (shares sum to 1) --------------------------------------
COLOUR_INTENT_SHARE = 0.5  # sessions that look for a colour as well as a category
VIEW_FROM_INTENT = 0.65  # views from the session's intent shelf
VIEW_FROM_CATEGORY = 0.2  # views from the session's category shelf, any colour
VIEW_FROM_NEW = 0.05  # views from the new-arrivals shelf
# the rest (0.10) come from the whole shop (home page, search, ads)
VIEW_GAP_S = 45.0  # mean seconds between views in a session
CLICK_DELAY_S, CART_DELAY_S, CHECKOUT_DELAY_S = 8.0, 25.0, 60.0  # mean seconds before each funnel step

# --- The funnel: logit of each step's probability = bias + weight x utility ----------------------
# utility = W_CATEGORY log(C p_cat) + W_COLOUR log(K p_colour) + W_PATTERN log(P p_pattern)
#         - sensitivity x z_price + W_BRAND loyalty [brand is the favourite] + W_QUALITY quality
AFFINITY_LOG_RANGE = (-3.0, 2.0)  # each log-affinity is clipped to this range
W_CATEGORY, W_COLOUR, W_PATTERN, W_BRAND, W_QUALITY = 0.5, 0.9, 0.5, 1.5, 0.4
CLICK_BIAS = -2.6
CART_BIAS, CART_WEIGHT = -2.6, 0.6
PURCHASE_BIAS, PURCHASE_WEIGHT = -1.3, 0.4
REPEAT_QUANTITY_P = 0.85  # quantity is 1 + Geometric: P(quantity == 1)

# Random streams: one per purpose so that changing one part never shifts another's draws.
STREAM_CATALOGUE, STREAM_USERS, STREAM_CHUNK, STREAM_IMAGES = 1, 2, 3, 4


# --- The catalogue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """The items as arrays (index = item number, creation order) plus the written tables."""

    category: np.ndarray  # int, index into CATEGORY_NAMES
    colour: np.ndarray  # int, index into COLOUR_NAMES (the true colour, as drawn)
    pattern: np.ndarray  # int, index into PATTERNS
    brand: np.ndarray  # int, index into the category's brands (0 = most popular)
    z_price: np.ndarray  # standardised log price relative to the category's base
    quality: np.ndarray  # latent quality, N(0, 1)
    popularity: np.ndarray  # Zipf-like weight of being shown
    created_s: np.ndarray  # seconds since the start (negative = before the period)
    has_image: np.ndarray  # bool
    ids: list[str]
    items: pd.DataFrame = field(repr=False)  # the items.parquet table
    truth: pd.DataFrame = field(repr=False)  # the truth/items.parquet table


def _make_catalogue(spec: ShopSpec) -> Catalogue:
    rng = np.random.default_rng([spec.seed, STREAM_CATALOGUE])
    n = spec.items
    shares = np.array([c.share for c in CATEGORIES.values()])
    category = rng.choice(len(CATEGORIES), size=n, p=shares / shares.sum())
    colour = rng.choice(len(COLOUR_NAMES), size=n, p=np.array(COLOUR_SHARE) / sum(COLOUR_SHARE))
    pattern = rng.choice(len(PATTERNS), size=n, p=np.array(PATTERN_SHARE) / sum(PATTERN_SHARE))
    material = rng.integers(0, 4, size=n)
    # Brands: the first of each category is the most common (shares 0.4, 0.3, 0.2, 0.1).
    brand = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
    base = np.array([c.base_price for c in CATEGORIES.values()])[category]
    level = np.array([[lvl for _, lvl in c.brands] for c in CATEGORIES.values()])[category, brand]
    log_rel = np.log(level) + rng.normal(0.0, PRICE_NOISE_SIGMA, size=n)
    price = np.floor(base * np.exp(log_rel)) + 0.99
    log_rel = np.log(price / base)
    z_price = (log_rel - log_rel.mean()) / max(log_rel.std(), 1e-9)
    price_band = np.digitize(log_rel, PRICE_BAND_EDGES) + 1
    quality = rng.normal(size=n)
    # Popularity follows the rank of quality plus noise: good items tend to be popular, not always.
    rank = np.argsort(np.argsort(-(quality + rng.normal(size=n))))
    popularity = (rank + ZIPF_OFFSET) ** -ZIPF_EXPONENT

    initial = rng.random(n) < spec.initial_item_share
    created_s = np.where(
        initial,
        -rng.uniform(0.0, PRE_PERIOD_ITEM_DAYS * DAY_S, size=n),
        rng.uniform(0.0, spec.days * DAY_S, size=n),
    )
    has_image = rng.random(n) >= spec.missing_image_share

    # Item ids follow creation order, as an auto-increment would.
    order = np.argsort(created_s, kind="stable")
    category, colour, pattern, material, brand = (a[order] for a in (category, colour, pattern, material, brand))
    price, price_band, z_price = price[order], price_band[order], z_price[order]
    quality, popularity, created_s, has_image = quality[order], popularity[order], created_s[order], has_image[order]
    width = max(6, len(str(n - 1)))
    ids = [f"I{i:0{width}d}" for i in range(n)]

    text_colour, titles, descriptions = _listings(rng, category, colour, pattern, material, brand, spec)
    brand_names = [CATEGORIES[CATEGORY_NAMES[c]].brands[b][0] for c, b in zip(category, brand)]
    material_names = [CATEGORIES[CATEGORY_NAMES[c]].materials[m] for c, m in zip(category, material)]
    start = pd.Timestamp(spec.start, tz="UTC")
    created_at = start + pd.to_timedelta(np.round(created_s * 1e3).astype(np.int64), unit="ms")
    items = pd.DataFrame(
        {
            "item_id": ids,
            "title": titles,
            "description": descriptions,
            "category": np.array(CATEGORY_NAMES, dtype=object)[category],
            "brand": brand_names,
            "price": price.astype(np.float64),
            "image_path": [f"images/{i}.png" if has else None for i, has in zip(ids, has_image)],
            "created_at": created_at,
            "colour": np.array(COLOUR_NAMES, dtype=object)[colour],
            "pattern": np.array(PATTERNS, dtype=object)[pattern],
            "material": material_names,
            "price_band": price_band.astype(np.int64),
        }
    )
    truth = pd.DataFrame(
        {
            "item_id": ids,
            "category": items["category"],
            "colour": items["colour"],  # the true colour, as drawn in the picture
            "text_colour": text_colour,  # the colour the listing names (None when it names none)
            "pattern": items["pattern"],
            "material": material_names,
            "brand": brand_names,
            "z_price": z_price,
            "quality": quality,
            "popularity": popularity,
            "has_image": has_image,
        }
    )
    return Catalogue(category, colour, pattern, brand, z_price, quality, popularity, created_s, has_image,
                     ids, items, truth)


def _listings(
    rng: np.random.Generator,
    category: np.ndarray,
    colour: np.ndarray,
    pattern: np.ndarray,
    material: np.ndarray,
    brand: np.ndarray,
    spec: ShopSpec,
) -> tuple[list[str | None], list[str], list[str]]:
    """Title and description of every item, with synonyms, omissions and some wrong colours.

    All randomness is drawn as arrays first; the loop only joins words.
    """
    n = len(category)
    k = len(COLOUR_NAMES)
    wrong = rng.random(n) < spec.wrong_colour_share
    # A wrong colour is any other colour: shift by 1..k-1.
    said = np.where(wrong, (colour + rng.integers(1, k, size=n)) % k, colour)
    synonym = rng.random((n, 2)) < SYNONYM_SHARE
    word_pick = rng.integers(0, 1 << 30, size=(n, 6))
    show_brand = rng.random(n) >= TITLE_BRAND_MISSING
    show_colour = rng.random(n) >= TITLE_COLOUR_MISSING
    show_pattern = rng.random(n) >= TITLE_PATTERN_MISSING
    show_material = rng.random(n) < TITLE_MATERIAL_SHOWN
    show_adjective = rng.random(n) < TITLE_ADJECTIVE_SHOWN
    desc_colour = rng.random(n) >= DESCRIPTION_COLOUR_MISSING
    desc_material = rng.random(n) >= DESCRIPTION_MATERIAL_MISSING

    def colour_word(i: int, slot: int) -> str:
        words = COLOUR_WORDS[COLOUR_NAMES[said[i]]]
        return words[1 + word_pick[i, slot] % (len(words) - 1)] if synonym[i, slot] else words[0]

    text_colour: list[str | None] = []
    titles: list[str] = []
    descriptions: list[str] = []
    for i in range(n):
        cat = CATEGORIES[CATEGORY_NAMES[category[i]]]
        noun = cat.nouns[word_pick[i, 2] % len(cat.nouns)]
        brand_name = cat.brands[brand[i]][0]
        material_name = cat.materials[material[i]]
        pattern_words = PATTERN_WORDS[PATTERNS[pattern[i]]]
        pattern_word = pattern_words[word_pick[i, 3] % len(pattern_words)]
        adjective = TITLE_ADJECTIVES[word_pick[i, 4] % len(TITLE_ADJECTIVES)]

        words = []
        if show_brand[i]:
            words.append(brand_name)
        if show_adjective[i]:
            words.append(adjective)
        if show_colour[i]:
            words.append(colour_word(i, 0).title())
        if pattern_word and show_pattern[i]:
            words.append(pattern_word.title())
        if show_material[i]:
            words.append(material_name.title())
        words.append(noun)
        titles.append(" ".join(words))

        opener = DESCRIPTION_OPENERS[word_pick[i, 5] % len(DESCRIPTION_OPENERS)].format(
            adj=adjective.lower(), noun=noun.lower()
        )
        sentence = opener
        if desc_colour[i]:
            sentence += f" in {colour_word(i, 1)}"
        if pattern_word:
            sentence += f" with a {pattern_word} finish" if PATTERNS[pattern[i]] != "solid" else ""
        sentence += "."
        parts = [sentence]
        if desc_material[i]:
            parts.append(f"Made of {material_name}.")
        parts.append(f"By {brand_name}.")
        extra = DESCRIPTION_EXTRAS[(word_pick[i, 0] >> 8) % len(DESCRIPTION_EXTRAS)]
        if extra:
            parts.append(extra)
        descriptions.append(" ".join(parts))
        mentioned = show_colour[i] or desc_colour[i]
        text_colour.append(COLOUR_NAMES[said[i]] if mentioned else None)
    return text_colour, titles, descriptions


# --- Users ---------------------------------------------------------------------------------------


def _make_users(spec: ShopSpec) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """User ids (signup order), signup times in seconds since the start, and users.parquet's table."""
    rng = np.random.default_rng([spec.seed, STREAM_USERS])
    n = spec.users
    new = rng.random(n) < spec.new_user_share
    signup_s = np.where(
        new,
        rng.uniform(0.0, spec.days * DAY_S, size=n),
        -rng.uniform(0.0, PRE_PERIOD_USER_DAYS * DAY_S, size=n),
    )
    signup_s = np.sort(signup_s)
    width = max(7, len(str(n - 1)))
    ids = [f"U{i:0{width}d}" for i in range(n)]
    start = pd.Timestamp(spec.start, tz="UTC")
    table = pd.DataFrame(
        {
            "user_id": ids,
            "signup_at": start + pd.to_timedelta(np.round(signup_s * 1e3).astype(np.int64), unit="ms"),
        }
    )
    return ids, signup_s, table


@dataclass(frozen=True)
class Tastes:
    """Hidden tastes of a chunk of users (row = user)."""

    category_start: np.ndarray  # (m, C) category preferences on the first day
    category_end: np.ndarray  # (m, C) ... they drift towards by `taste_drift` on the last day
    colour_start: np.ndarray  # (m, K)
    colour_end: np.ndarray  # (m, K)
    pattern: np.ndarray  # (m, P)
    price_sensitivity: np.ndarray  # (m,) utility lost per std of log price (negative = likes luxury)
    brand_loyalty: np.ndarray  # (m,) in [0, 1]
    favourite_brand: np.ndarray  # (m, C) index of the favourite brand in each category
    activity: np.ndarray  # (m,) mean sessions per active day


def _draw_tastes(rng: np.random.Generator, m: int, spec: ShopSpec) -> Tastes:
    c, k, p = len(CATEGORY_NAMES), len(COLOUR_NAMES), len(PATTERNS)
    cat_prior = np.array([x.share for x in CATEGORIES.values()]) * c * CATEGORY_ALPHA
    colour_prior = np.array(COLOUR_SHARE) / sum(COLOUR_SHARE) * k * COLOUR_ALPHA
    brand_cum = np.cumsum([0.4, 0.3, 0.2, 0.1])
    return Tastes(
        category_start=rng.dirichlet(cat_prior, size=m),
        category_end=rng.dirichlet(cat_prior, size=m),
        colour_start=rng.dirichlet(colour_prior, size=m),
        colour_end=rng.dirichlet(colour_prior, size=m),
        pattern=rng.dirichlet(np.full(p, PATTERN_ALPHA), size=m),
        price_sensitivity=rng.normal(PRICE_SENSITIVITY_MEAN, PRICE_SENSITIVITY_STD, size=m),
        brand_loyalty=rng.beta(*BRAND_LOYALTY_BETA, size=m),
        favourite_brand=np.minimum(np.searchsorted(brand_cum, rng.random((m, c))), 3),
        # Mean-preserving log-normal: E[activity] = sessions_per_user_day.
        activity=spec.sessions_per_user_day
        * rng.lognormal(-(ACTIVITY_SIGMA**2) / 2, ACTIVITY_SIGMA, size=m),
    )


def _tastes_table(ids: list[str], t: Tastes) -> pa.Table:
    def rows(matrix: np.ndarray) -> pa.FixedSizeListArray:
        flat = pa.array(matrix.astype(np.float32).ravel())
        return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])

    brand_names = np.array([[b for b, _ in c.brands] for c in CATEGORIES.values()], dtype=object)
    favourites = brand_names[np.arange(len(CATEGORY_NAMES))[None, :], t.favourite_brand]
    return pa.table(
        {
            "user_id": pa.array(ids, pa.string()),
            "category_pref_start": rows(t.category_start),
            "category_pref_end": rows(t.category_end),
            "colour_pref_start": rows(t.colour_start),
            "colour_pref_end": rows(t.colour_end),
            "pattern_pref": rows(t.pattern),
            "price_sensitivity": pa.array(t.price_sensitivity.astype(np.float32)),
            "brand_loyalty": pa.array(t.brand_loyalty.astype(np.float32)),
            "favourite_brands": pa.FixedSizeListArray.from_arrays(
                pa.array(favourites.ravel().tolist(), pa.string()), len(CATEGORY_NAMES)
            ),
            "activity": pa.array(t.activity.astype(np.float32)),
        }
    )


# --- Shelves: which items a view can pick at a given moment --------------------------------------


@dataclass(frozen=True)
class Shelves:
    """Every item on three shelves (the whole shop, its category, its (category, colour)), as one
    array sorted by (shelf, created_at), so that the items of a shelf existing at time t are a range.

    Shelf ids: 0 = whole shop; 1 + c = category c; 1 + C + c K + k = category c in colour k.
    """

    key: np.ndarray  # shelf * span + (created_s - origin), sorted
    item: np.ndarray  # item number at each position
    cum_weight: np.ndarray  # cumulative popularity, with a leading 0 (len = positions + 1)
    first: np.ndarray  # first position of each shelf
    origin: float  # created_s offset making keys non-negative
    span: float  # key distance between shelves (> any created_s range)

    @classmethod
    def build(cls, cat: Catalogue, period: float) -> "Shelves":
        c, k = len(CATEGORY_NAMES), len(COLOUR_NAMES)
        n = len(cat.category)
        shelf = np.concatenate([np.zeros(n, np.int64), 1 + cat.category, 1 + c + cat.category * k + cat.colour])
        item = np.tile(np.arange(n), 3)
        created = np.tile(cat.created_s, 3)
        origin = float(created.min())
        # Wider than any created_s or view time, so that a shelf's keys never reach the next shelf's.
        span = float(max(created.max(), period) - origin) + DAY_S
        key = shelf * span + (created - origin)
        order = np.argsort(key, kind="stable")
        weights = cat.popularity[item[order]]
        first = np.searchsorted(key[order], np.arange(1 + c + c * k) * span, side="left")
        return cls(key[order], item[order], np.concatenate([[0.0], np.cumsum(weights)]), first, origin, span)

    def existing(self, shelf: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Position range [lo, hi) of the items of each `shelf` created at or before each `t`."""
        lo = self.first[shelf]
        hi = np.searchsorted(self.key, shelf * self.span + (t - self.origin), side="right")
        return lo, hi

    def draw(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """A popularity-weighted item in each non-empty range [lo, hi)."""
        u = self.cum_weight[lo] + rng.random(len(lo)) * (self.cum_weight[hi] - self.cum_weight[lo])
        pos = np.clip(np.searchsorted(self.cum_weight, u, side="right") - 1, lo, hi - 1)
        return self.item[pos]


# --- Sessions and events -------------------------------------------------------------------------


def _traffic_cdf(spec: ShopSpec) -> np.ndarray:
    """Cumulative traffic intensity at each hour boundary of the period (len = 24 days + 1)."""
    hours = np.arange(spec.days * 24)
    weekday = (pd.Timestamp(spec.start).dayofweek + hours // 24) % 7
    intensity = (
        np.array(WEEKDAY_TRAFFIC)[weekday]
        * np.array(HOUR_TRAFFIC)[hours % 24]
        * (1.0 + TRAFFIC_GROWTH * hours / len(hours))
    )
    return np.concatenate([[0.0], np.cumsum(intensity)])


def _pick_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of `probs` (rows sum to 1)."""
    cum = np.cumsum(probs, axis=1)
    return np.minimum((cum < rng.random((len(probs), 1)) * cum[:, -1:]).sum(axis=1), probs.shape[1] - 1)


def _simulate_chunk(
    rng: np.random.Generator,
    spec: ShopSpec,
    cat: Catalogue,
    shelves: Shelves,
    signup_s: np.ndarray,
    tastes: Tastes,
    cdf: np.ndarray,
) -> tuple[dict[str, np.ndarray], int]:
    """Sessions and funnel events of one chunk of users: arrays of equal length, unsorted, and
    the number of sessions drawn (session indices run below it).

    The arrays' keys: user (chunk-local index), item, kind (index into EVENT_TYPES), t (seconds since
    start), session (chunk-local index), quantity (nan for view/click), price (nan for view/click).
    """
    period = spec.days * DAY_S
    m = len(signup_s)
    c, k, p = len(CATEGORY_NAMES), len(COLOUR_NAMES), len(PATTERNS)

    # Sessions: Poisson counts over each user's active time, then times by inverting the traffic CDF.
    active_from = np.clip(signup_s, 0.0, period)
    n_sessions = rng.poisson(tastes.activity * (period - active_from) / DAY_S)
    n_sessions = np.minimum(n_sessions, MAX_SESSIONS_PER_DAY * spec.days)
    s_user = np.repeat(np.arange(m), n_sessions)
    hour_grid = np.arange(len(cdf), dtype=np.float64)
    low = np.interp(active_from[s_user] / 3600.0, hour_grid, cdf)
    target = low + rng.random(len(s_user)) * (cdf[-1] - low)
    s_t = np.interp(target, cdf, hour_grid) * 3600.0
    s_drift = spec.taste_drift * s_t / period

    def drifted(start: np.ndarray, end: np.ndarray, users: np.ndarray, lam: np.ndarray) -> np.ndarray:
        return (1.0 - lam[:, None]) * start[users] + lam[:, None] * end[users]

    s_category = _pick_rows(rng, drifted(tastes.category_start, tastes.category_end, s_user, s_drift))
    s_colour = _pick_rows(rng, drifted(tastes.colour_start, tastes.colour_end, s_user, s_drift))
    s_wants_colour = rng.random(len(s_user)) < COLOUR_INTENT_SHARE

    # Views: times within the session, then a shelf and an item that exists at that time.
    n_views = 1 + rng.poisson(spec.views_per_session - 1.0, size=len(s_user))
    v_session = np.repeat(np.arange(len(s_user)), n_views)
    gaps = rng.exponential(VIEW_GAP_S, size=len(v_session))
    first_view = np.concatenate([[0], np.cumsum(n_views)[:-1]])
    gaps[first_view] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first_view], n_views)
    v_t = s_t[v_session] + elapsed
    v_user = s_user[v_session]

    category_shelf = 1 + s_category[v_session]
    colour_shelf = 1 + c + s_category[v_session] * k + s_colour[v_session]
    intent_shelf = np.where(s_wants_colour[v_session], colour_shelf, category_shelf)
    source = rng.random(len(v_session))
    shelf = np.where(source < VIEW_FROM_INTENT, intent_shelf,
                     np.where(source < VIEW_FROM_INTENT + VIEW_FROM_CATEGORY, category_shelf, 0))
    lo, hi = shelves.existing(shelf, v_t)
    for fallback in (category_shelf, np.zeros_like(shelf)):  # an empty shelf falls back to a wider one
        empty = hi <= lo
        shelf = np.where(empty, fallback, shelf)
        lo, hi = shelves.existing(shelf, v_t)
    v_item = shelves.draw(rng, lo, np.maximum(hi, lo + 1))
    # New arrivals: items of the whole shop created within NEW_ARRIVAL_DAYS before the view.
    new_lo = np.searchsorted(shelves.key, v_t - NEW_ARRIVAL_DAYS * DAY_S - shelves.origin, side="left")
    new_hi = np.searchsorted(shelves.key, v_t - shelves.origin, side="right")
    from_new = (source >= 1.0 - VIEW_FROM_NEW) & (new_hi > new_lo)
    new_pick = new_lo + (rng.random(len(v_session)) * (new_hi - new_lo)).astype(np.int64)
    v_item = np.where(from_new, shelves.item[np.minimum(new_pick, len(shelves.item) - 1)], v_item)
    seen = hi > lo  # False only if no item at all existed yet
    v_session, v_t, v_user, v_item = v_session[seen], v_t[seen], v_user[seen], v_item[seen]

    # Utility of each viewed item for its user at that moment.
    lam = spec.taste_drift * v_t / period
    ic, ik, ip = cat.category[v_item], cat.colour[v_item], cat.pattern[v_item]
    p_cat = (1 - lam) * tastes.category_start[v_user, ic] + lam * tastes.category_end[v_user, ic]
    p_col = (1 - lam) * tastes.colour_start[v_user, ik] + lam * tastes.colour_end[v_user, ik]
    p_pat = tastes.pattern[v_user, ip]
    lo_log, hi_log = AFFINITY_LOG_RANGE

    def affinity(prob: np.ndarray, size: int) -> np.ndarray:
        return np.clip(np.log(prob * size + 1e-12), lo_log, hi_log)

    favourite = tastes.favourite_brand[v_user, ic] == cat.brand[v_item]
    utility = (
        W_CATEGORY * affinity(p_cat, c)
        + W_COLOUR * affinity(p_col, k)
        + W_PATTERN * affinity(p_pat, p)
        - tastes.price_sensitivity[v_user] * cat.z_price[v_item]
        + W_BRAND * tastes.brand_loyalty[v_user] * favourite
        + W_QUALITY * cat.quality[v_item]
    )

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    clicked = rng.random(len(v_item)) < sigmoid(CLICK_BIAS + utility)
    c_idx = np.flatnonzero(clicked)
    c_t = v_t[c_idx] + 1.0 + rng.exponential(CLICK_DELAY_S, size=len(c_idx))
    carted = rng.random(len(c_idx)) < sigmoid(CART_BIAS + CART_WEIGHT * utility[c_idx])
    a_idx = c_idx[carted]
    a_t = c_t[carted] + 1.0 + rng.exponential(CART_DELAY_S, size=len(a_idx))
    bought = rng.random(len(a_idx)) < sigmoid(PURCHASE_BIAS + PURCHASE_WEIGHT * utility[a_idx])
    b_idx = a_idx[bought]
    # Checkout comes after the session's last view and after the cart.
    session_end = np.full(len(s_user), -np.inf)
    np.maximum.at(session_end, v_session, v_t)
    b_t = np.maximum(session_end[v_session[b_idx]], a_t[bought]) + 5.0 + rng.exponential(
        CHECKOUT_DELAY_S, size=len(b_idx)
    )

    quantity = rng.geometric(REPEAT_QUANTITY_P, size=len(a_idx)).astype(np.float64)
    list_price = cat.items["price"].to_numpy()
    discount = np.where(rng.random(len(b_idx)) < DISCOUNT_SHARE,
                        rng.choice(DISCOUNTS, size=len(b_idx)), 0.0)
    paid = np.maximum(np.round(list_price[v_item[b_idx]] * (1.0 - discount), 2), 0.01)

    index = np.concatenate([np.arange(len(v_item)), c_idx, a_idx, b_idx])
    events = {
        "user": v_user[index],
        "item": v_item[index],
        "session": v_session[index],
        "kind": np.repeat(np.arange(4), [len(v_item), len(c_idx), len(a_idx), len(b_idx)]),
        "t": np.concatenate([v_t, c_t, a_t, b_t]),
        "quantity": np.concatenate([np.full(len(v_item) + len(c_idx), np.nan), quantity, quantity[bought]]),
        "price": np.concatenate(
            [np.full(len(v_item) + len(c_idx), np.nan), list_price[v_item[a_idx]], paid]
        ),
    }
    return events, len(s_user)


def _events_table(
    ev: dict[str, np.ndarray],
    spec: ShopSpec,
    user_ids: pa.Array,
    item_ids: pa.Array,
    session_offset: int,
) -> pa.Table:
    """The chunk's events in the contract's columns, sorted by time (then funnel step)."""
    period = spec.days * DAY_S
    # Events of sessions that start just before the end would spill over it; keep the period closed.
    t = np.minimum(ev["t"], period - 1e-3)
    order = np.lexsort((ev["kind"], t))
    start_ns = pd.Timestamp(spec.start, tz="UTC").value
    stamp = start_ns + np.round(t[order] * 1e3).astype(np.int64) * 1_000_000
    sessions, local = np.unique(ev["session"][order], return_inverse=True)
    session_names = pa.array([f"S{session_offset + s:010d}" for s in sessions], pa.string())
    return pa.table(
        {
            "user_id": user_ids.take(pa.array(ev["user"][order])),
            "item_id": item_ids.take(pa.array(ev["item"][order])),
            "event_type": pa.array(EVENT_TYPES, pa.string()).take(pa.array(ev["kind"][order])),
            "timestamp": pa.array(stamp, pa.timestamp("ns", tz="UTC")),
            "session_id": session_names.take(pa.array(local)),
            "quantity": pa.array(ev["quantity"][order], pa.float64(), from_pandas=True),
            "price": pa.array(ev["price"][order], pa.float64(), from_pandas=True),
        }
    )


# --- Images --------------------------------------------------------------------------------------


def _render_images(cat: Catalogue, spec: ShopSpec, folder: Path, progress: bool) -> int:
    """Draw every item that has an image into `folder/<item_id>.png`; returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([spec.seed, STREAM_IMAGES])
    drawn = 0
    for i in tqdm(np.flatnonzero(cat.has_image), desc="images", unit="img", disable=not progress):
        pixels = render(
            CATEGORY_NAMES[cat.category[i]], COLOUR_NAMES[cat.colour[i]], PATTERNS[cat.pattern[i]],
            spec.image_size, rng,
        )
        save_png(pixels, folder / f"{cat.ids[i]}.png")
        drawn += 1
    return drawn


# --- The whole shop ------------------------------------------------------------------------------


def generate_shop(data: DataDir, spec: ShopSpec, *, progress: bool = True) -> dict[str, float | int]:
    """Write the synthetic shop described by `spec` to `data.incoming`, its ground truth to `data.truth`.

    What was there before (items, users, events, images; the truth dir) is replaced. Nothing is
    validated or ingested here: `vitrine generate` does that next.

    Args:
        data: the data dir; files go to `data.incoming` and `data.truth`.
        spec: sizes, seed and knobs of the shop (`DEMO`, `SCALE` or your own).
        progress: show progress bars on stderr.

    Returns:
        A summary: counts of users, new users, items, items without image, cold-start items (created
        in the last COLD_START_DAYS days) and how many of them got events, events per type, sessions,
        funnel ratios, and seconds spent (catalogue, images, events, total).

    Example:
        >>> generate_shop(DataDir.resolve("/tmp/shop"), ShopSpec(users=200, items=100, days=14))["items"]
        100
    """
    assert set(CATEGORY_NAMES) == set(SHAPES) and set(COLOUR_NAMES) == set(COLOUR_RGB), "vocabularies drifted"
    began = time.perf_counter()
    incoming = data.incoming
    for stale in ("items.parquet", "users.parquet", "events", "images"):
        path = incoming / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if data.truth.exists():
        shutil.rmtree(data.truth)
    (incoming / "events").mkdir(parents=True, exist_ok=True)
    data.truth.mkdir(parents=True, exist_ok=True)

    cat = _make_catalogue(spec)
    user_ids, signup_s, users = _make_users(spec)
    cat.items.to_parquet(incoming / "items.parquet", index=False)
    users.to_parquet(incoming / "users.parquet", index=False)
    cat.truth.to_parquet(data.truth / "items.parquet", index=False)
    catalogue_s = time.perf_counter() - began

    mark = time.perf_counter()
    images = _render_images(cat, spec, incoming / "images", progress)
    images_s = time.perf_counter() - mark

    mark = time.perf_counter()
    shelves = Shelves.build(cat, spec.days * DAY_S)
    cdf = _traffic_cdf(spec)
    item_ids = pa.array(cat.ids, pa.string())
    counts = np.zeros(4, np.int64)
    sessions = 0
    session_offset = 0  # session ids stay unique across chunks
    items_with_events = np.zeros(spec.items, bool)
    truth_writer: pq.ParquetWriter | None = None
    bar = tqdm(total=spec.users, desc="events", unit="user", disable=not progress)
    try:
        for chunk, lo in enumerate(range(0, spec.users, spec.user_chunk)):
            hi = min(lo + spec.user_chunk, spec.users)
            rng = np.random.default_rng([spec.seed, STREAM_CHUNK, chunk])
            tastes = _draw_tastes(rng, hi - lo, spec)
            ev, drawn = _simulate_chunk(rng, spec, cat, shelves, signup_s[lo:hi], tastes, cdf)
            table = _events_table(ev, spec, pa.array(user_ids[lo:hi], pa.string()), item_ids, session_offset)
            pq.write_table(table, incoming / "events" / f"part-{chunk:05d}.parquet")
            truth = _tastes_table(user_ids[lo:hi], tastes)
            if truth_writer is None:
                truth_writer = pq.ParquetWriter(data.truth / "users.parquet", truth.schema)
            truth_writer.write_table(truth)
            counts += np.bincount(ev["kind"], minlength=4)
            sessions += len(np.unique(ev["session"]))
            session_offset += drawn
            items_with_events[ev["item"]] = True
            bar.update(hi - lo)
    finally:
        bar.close()
        if truth_writer is not None:
            truth_writer.close()
    events_s = time.perf_counter() - mark

    (data.truth / "shop.json").write_text(json.dumps(_truth_notes(spec), indent=2, default=str))
    period = spec.days * DAY_S
    cold = cat.created_s >= period - COLD_START_DAYS * DAY_S
    views, clicks, carts, purchases = (int(x) for x in counts)
    return {
        "users": spec.users,
        "new_users": int((signup_s >= 0).sum()),
        "items": spec.items,
        "items_created_in_period": int((cat.created_s >= 0).sum()),
        "items_created_last_third": int((cat.created_s >= period * 2 / 3).sum()),
        "cold_start_items": int(cold.sum()),
        "cold_start_items_with_events": int((cold & items_with_events).sum()),
        "items_without_image": int((~cat.has_image).sum()),
        "images": images,
        "sessions": sessions,
        "events": int(counts.sum()),
        "views": views,
        "clicks": clicks,
        "add_to_carts": carts,
        "purchases": purchases,
        "click_per_view": clicks / max(views, 1),
        "cart_per_click": carts / max(clicks, 1),
        "purchase_per_cart": purchases / max(carts, 1),
        "catalogue_seconds": round(catalogue_s, 3),
        "images_seconds": round(images_s, 3),
        "events_seconds": round(events_s, 3),
        "seconds": round(time.perf_counter() - began, 3),
    }


def _truth_notes(spec: ShopSpec) -> dict[str, object]:
    """What truth/*.parquet mean: the spec, the vocabularies' order and the behaviour model's weights."""
    return {
        "spec": asdict(spec),
        "category_order": list(CATEGORY_NAMES),
        "colour_order": list(COLOUR_NAMES),
        "pattern_order": list(PATTERNS),
        "drift": "pref(t) = (1 - taste_drift * t / period) * pref_start + taste_drift * t / period * pref_end",
        "utility": {
            "category": W_CATEGORY, "colour": W_COLOUR, "pattern": W_PATTERN, "brand": W_BRAND,
            "quality": W_QUALITY, "price": "-price_sensitivity * z_price",
            "affinity": "clip(log(size * pref), *AFFINITY_LOG_RANGE)",
            "affinity_log_range": list(AFFINITY_LOG_RANGE),
        },
        "funnel": {
            "click": [CLICK_BIAS, 1.0], "add_to_cart": [CART_BIAS, CART_WEIGHT],
            "purchase": [PURCHASE_BIAS, PURCHASE_WEIGHT],
            "formula": "P(step | previous) = sigmoid(bias + weight * utility)",
        },
    }
