"""The synthetic shop's behaviour: hidden user tastes, sessions, and the view -> purchase funnel.

Each user has hidden tastes (`Tastes`): category and colour preferences (Dirichlet draws) that drift
linearly from a start profile to an end profile, pattern preferences, a price sensitivity, a
favourite brand per category with a loyalty strength, and an activity rate.

A user's sessions follow a Poisson process whose intensity has weekly and daily seasonality and slow
growth (sampled exactly by inverting the cumulative intensity, `traffic_cdf`). A session has an
intent: a category drawn from the user's current preferences and, half of the time, a colour. Each
view picks an item among those that *exist at that moment* (`Shelves`) from the intent's
(category, colour) or category shelf, the whole shop, or the new-arrivals shelf, weighted by
popularity. Each view then goes down the funnel view -> click -> add_to_cart -> purchase with
probabilities that rise with the item's match to the user's tastes (category, colour, pattern, brand,
price against sensitivity) and quality, so that a content-based model can learn from item attributes.

Everything is vectorised over a chunk of users: no Python loop runs per session or per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from vitrine.shop.catalogue import CATEGORIES, CATEGORY_NAMES, COLOUR_NAMES, COLOUR_SHARE, DAY_S, Catalogue
from vitrine.shop.contract import EVENT_TYPES
from vitrine.shop.render import PATTERNS
from vitrine.shop.spec import ShopSpec

# --- Timeline ------------------------------------------------------------------------------------
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
# Biases calibrated on the demo shop to typical e-commerce ratios: click/view ~18%, cart/click ~25%,
# purchase/cart ~47%. Later steps weigh taste less: the click already selected on it.
CLICK_BIAS = -2.6
CART_BIAS, CART_WEIGHT = -2.6, 0.6
PURCHASE_BIAS, PURCHASE_WEIGHT = -1.3, 0.4
REPEAT_QUANTITY_P = 0.85  # quantity is 1 + Geometric: P(quantity == 1)
# Purchases: share paid at a discount, and the discounts offered.
DISCOUNT_SHARE = 0.2
DISCOUNTS = (0.1, 0.15, 0.2, 0.3)


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


def draw_tastes(rng: np.random.Generator, m: int, spec: ShopSpec) -> Tastes:
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


def tastes_table(ids: list[str], t: Tastes) -> pa.Table:
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


def traffic_cdf(spec: ShopSpec) -> np.ndarray:
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


def simulate_chunk(
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


def events_table(
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


def model_notes() -> dict[str, object]:
    """The behaviour model's formulas and weights, saved beside the ground truth for evaluators."""
    return {
        "drift": "pref(t) = (1 - taste_drift * t / period) * pref_start + taste_drift * t / period * pref_end",
        "utility": {
            "category": W_CATEGORY, "colour": W_COLOUR, "pattern": W_PATTERN, "brand": W_BRAND,
            "quality": W_QUALITY, "price": "-price_sensitivity * z_price",
            "affinity": "clip(log(size * pref), *affinity_log_range)",
            "affinity_log_range": list(AFFINITY_LOG_RANGE),
        },
        "funnel": {
            "click": [CLICK_BIAS, 1.0], "add_to_cart": [CART_BIAS, CART_WEIGHT],
            "purchase": [PURCHASE_BIAS, PURCHASE_WEIGHT],
            "formula": "P(step | previous) = sigmoid(bias + weight * utility)",
        },
    }
