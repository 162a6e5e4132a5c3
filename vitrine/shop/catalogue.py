"""The synthetic shop's catalogue: what each item is, what it costs and how its listing reads.

Each item draws a category, colour, pattern, material and brand; its price is the category's base
price times its brand's price level times log-normal noise, and `price_band` (1-5) places it within
its category. A latent `quality` sets its popularity (Zipf-like in its rank) and helps it convert.
Some items exist before the period, the rest arrive uniformly through it (cold-start items). Item ids
follow creation order, as an auto-increment would.

The listing (title, description) names colour, pattern, material and brand with synonyms ("crimson"
for red) and omissions, and a few listings name the wrong colour. The picture (`vitrine.shop.render`)
shows the true category, colour and pattern; material and brand are only in the text. So image and
text each carry something the other lacks.

Example:
    >>> from vitrine.shop.spec import ShopSpec
    >>> cat = make_catalogue(ShopSpec(items=100))
    >>> cat.items.columns[:3].tolist()
    ['item_id', 'title', 'description']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vitrine.shop.render import PATTERNS
from vitrine.shop.spec import ShopSpec

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

DAY_S = 86_400.0
PRE_PERIOD_ITEM_DAYS = 365  # items existing at the start were created within this many days before it
ZIPF_EXPONENT = 0.8  # popularity weight of the r-th most popular item ~ (r + ZIPF_OFFSET)^-exponent
ZIPF_OFFSET = 5.0

# This module's random stream (see vitrine.shop.generate for the others).
STREAM_CATALOGUE = 1


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


def make_catalogue(spec: ShopSpec) -> Catalogue:
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
