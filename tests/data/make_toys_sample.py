"""Rebuild `amazon-toys-sample/` from the full Toys 5-core set in ../shared (run by hand, never by the tests).

The pipeline's order-only test (`tests/training/test_pipeline.py`) runs on this committed slice of
the real data, so that a clone without ../shared passes: 300 users with every one of their events,
and the items they touch (id, title, category), rows byte for byte as the full files have them.
The users are drawn (by a hash of the id, so the draw is stable) among those with at least 3
events on the 200 most bought items: users who share items, so that a retriever has something
to learn from 300 of them. About 0.6 MB in all.

    python tests/data/make_toys_sample.py [../shared/data/amazon-toys-2014]
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "amazon-toys-2014"
TARGET = HERE / "amazon-toys-sample"
USERS, POPULAR_ITEMS, MIN_POPULAR_EVENTS = 300, 200, 3


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def main() -> None:
    event_header, events = read_rows(SOURCE / "events.csv")
    item_header, items = read_rows(SOURCE / "items.csv")
    user_col, item_col = event_header.index("user_id"), event_header.index("item_id")
    popular = {item for item, _ in Counter(row[item_col] for row in events).most_common(POPULAR_ITEMS)}
    on_popular = Counter(row[user_col] for row in events if row[item_col] in popular)
    eligible = sorted((u for u, n in on_popular.items() if n >= MIN_POPULAR_EVENTS), key=lambda u: hashlib.sha256(u.encode()).hexdigest())
    chosen = set(eligible[:USERS])
    kept = [row for row in events if row[user_col] in chosen]  # in file order: each user's own order
    touched = {row[item_col] for row in kept}
    TARGET.mkdir(parents=True, exist_ok=True)
    write_rows(TARGET / "events.csv", event_header, kept)
    write_rows(TARGET / "items.csv", item_header, [row for row in items if row[item_header.index("item_id")] in touched])
    print(f"{len(chosen)} users, {len(kept)} events, {len(touched)} items -> {TARGET}")


if __name__ == "__main__":
    main()
