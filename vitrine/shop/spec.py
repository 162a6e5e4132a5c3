"""What synthetic shop to generate (`ShopSpec`) and the two presets, DEMO and SCALE.

Its own module so that the generator (`vitrine.shop.generate`) and the parts it calls
(`catalogue`, `sessions`) all read the spec from below instead of from each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from vitrine.errors import InvalidInput

# Smallest picture side: image encoders see nothing of the pattern below this.
MIN_IMAGE_SIZE = 64


@dataclass(frozen=True)
class ShopSpec:
    """What shop to generate. The defaults are the demo shop (a few hundred thousand events)."""

    users: int = 5_000  # users in users.parquet, including those who sign up during the period
    items: int = 2_000  # items in the catalogue, including those created during the period
    days: int = 60  # length of the event period in days
    seed: int = 0  # the one seed every random draw derives from
    start: date = date(2026, 1, 1)  # first day of events (00:00 UTC); fixed, so a spec means one shop on any day (the CLI uses `ending_yesterday`)
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


def ending_yesterday(days: int, today: date | None = None) -> date:
    """The first day of a `days`-day period whose last day is yesterday (UTC), as a live shop's history is.

    `vitrine generate` and `vitrine demo` start their shops here: serving judges features against
    their views' ttl at the current time, so a shop that ended long ago would serve everyone the
    cold-start list (flagged stale) unless replayed with `--as-of`.

    Example:
        >>> ending_yesterday(60, today=date(2026, 3, 2))
        datetime.date(2026, 1, 1)
    """
    return (today or datetime.now(timezone.utc).date()) - timedelta(days=days)


# The demo shop: about 5k users, 2k items, 60 days, ~300k events.
DEMO = ShopSpec()
# The benchmark preset: 1M users, 100k items, 60 days, 20M+ events.
SCALE = ShopSpec(users=1_000_000, items=100_000, sessions_per_user_day=0.075)
