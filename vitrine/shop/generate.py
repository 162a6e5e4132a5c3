"""The default shop: a synthetic, multimodal catalogue with users whose behaviour follows hidden tastes.

`generate_shop(data, spec)` writes, in the data contract's format (`vitrine.shop.contract`), to
`data.incoming`:

    items.parquet            item_id, title, description, category, brand, price, image_path, created_at,
                             colour, pattern, material, price_band
    users.parquet            user_id, signup_at
    events/part-00000.parquet ...   one file per chunk of users; timestamps datetime64[ns, UTC]
    images/<item_id>.png     one picture per item (a few items have none, as in real catalogues)

and, under `data.truth` (for evaluation only: no model may read it), the hidden tastes of every user
(`users.parquet`), the true attributes of every item (`items.parquet`) and what they mean (`shop.json`).

Design: three parts, each its own module.

- `vitrine.shop.catalogue`: the items, their prices and their listings (synonyms, omissions, wrong
  colours); `vitrine.shop.render`: their pictures (silhouette = category, fill = colour, overlay =
  pattern). Image and text carry partial, complementary information.
- `vitrine.shop.sessions`: users' hidden, drifting tastes; seasonal sessions; views of items that exist
  at that moment; a view -> click -> add_to_cart -> purchase funnel driven by taste match and price.
- this module: users and their signup times, then the orchestration. The catalogue and users are built
  whole (cheap); users are simulated in chunks of `user_chunk`, each chunk written as one events file,
  so memory is bounded by the chunk, not the shop.

Determinism: every random draw comes from `numpy.random.default_rng([seed, stream, ...])` with a fixed
stream per purpose (catalogue, users, each user chunk, images), so a seed gives the same files, bit
for bit, whatever ran before.

Example:
    >>> from vitrine.paths import DataDir
    >>> summary = generate_shop(DataDir.resolve("data"), DEMO)
    >>> summary["events"] > 100_000
    True
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from vitrine.options import bar_shown
from vitrine.paths import DataDir
from vitrine.shop import sessions as behaviour
from vitrine.shop.catalogue import CATEGORY_NAMES, COLOUR_NAMES, DAY_S, Catalogue, make_catalogue
from vitrine.shop.render import COLOUR_RGB, PATTERNS, SHAPES, Picture, draw_pictures
from vitrine.shop.sessions import Shelves, draw_tastes, events_table, simulate_chunk, tastes_table, traffic_cdf
from vitrine.shop.spec import ShopSpec

PRE_PERIOD_USER_DAYS = 730  # users existing at the start signed up within this many days before it
COLD_START_DAYS = 7  # items created in the last this-many days count as cold-start in the summary

# Random streams, one per purpose, so that changing one part never shifts another's draws
# (vitrine.shop.catalogue uses stream 1).
STREAM_USERS, STREAM_CHUNK, STREAM_IMAGES = 2, 3, 4


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


# --- Images --------------------------------------------------------------------------------------


def _render_images(cat: Catalogue, spec: ShopSpec, folder: Path, progress: bool) -> int:
    """Draw every item that has an image into `folder/<item_id>.png`; returns how many."""
    pictures = [
        Picture(cat.ids[i], CATEGORY_NAMES[cat.category[i]], COLOUR_NAMES[cat.colour[i]],
                PATTERNS[cat.pattern[i]], int(i))
        for i in np.flatnonzero(cat.has_image)
    ]
    with tqdm(total=len(pictures), desc="images", unit="img", disable=not bar_shown(progress)) as bar:
        return draw_pictures(pictures, folder, size=spec.image_size, seed=[spec.seed, STREAM_IMAGES],
                             progress=bar.update)


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

    cat = make_catalogue(spec)
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
    cdf = traffic_cdf(spec)
    item_ids = pa.array(cat.ids, pa.string())
    counts = np.zeros(4, np.int64)
    sessions = 0
    session_offset = 0  # session ids stay unique across chunks
    items_with_events = np.zeros(spec.items, bool)
    truth_writer: pq.ParquetWriter | None = None
    bar = tqdm(total=spec.users, desc="events", unit="user", disable=not bar_shown(progress))
    try:
        for chunk, lo in enumerate(range(0, spec.users, spec.user_chunk)):
            hi = min(lo + spec.user_chunk, spec.users)
            rng = np.random.default_rng([spec.seed, STREAM_CHUNK, chunk])
            tastes = draw_tastes(rng, hi - lo, spec)
            ev, drawn = simulate_chunk(rng, spec, cat, shelves, signup_s[lo:hi], tastes, cdf)
            table = events_table(ev, spec, pa.array(user_ids[lo:hi], pa.string()), item_ids, session_offset)
            pq.write_table(table, incoming / "events" / f"part-{chunk:05d}.parquet")
            truth = tastes_table(user_ids[lo:hi], tastes)
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
        **behaviour.model_notes(),
    }
