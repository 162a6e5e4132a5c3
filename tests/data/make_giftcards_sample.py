"""Rebuild `amazon-giftcards-sample/` from the full Gift Cards set in ../shared (run by hand, never by the tests).

The tests must pass on a clone without ../shared, so they read this committed slice of the real
data: 40 items (the 24 with the smallest photos, their photos, and 16 without one), their metadata
lines and every review of them, byte for byte. Under 1 MB in all.

    python tests/data/make_giftcards_sample.py [../shared/data/amazon-giftcards-2018]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "amazon-giftcards-2018"
TARGET = HERE / "amazon-giftcards-sample"
WITH_PHOTO, WITHOUT_PHOTO = 24, 16


def main() -> None:
    meta = [line for line in (SOURCE / "meta_Gift_Cards.json").read_text().splitlines() if line.strip()]
    asins = [json.loads(line)["asin"] for line in meta]
    photos = {p.stem: p for p in (SOURCE / "images").glob("*.jpg")}
    with_photo = sorted((a for a in asins if a in photos), key=lambda a: (photos[a].stat().st_size, a))[:WITH_PHOTO]
    without = sorted(a for a in asins if a not in photos)[:WITHOUT_PHOTO]
    keep = set(with_photo) | set(without)
    if TARGET.exists():
        shutil.rmtree(TARGET)
    (TARGET / "images").mkdir(parents=True)
    (TARGET / "meta_Gift_Cards.json").write_text("".join(f"{l}\n" for l, a in zip(meta, asins) if a in keep))
    reviews = (SOURCE / "Gift_Cards_5.json").read_text().splitlines()
    (TARGET / "Gift_Cards_5.json").write_text("".join(f"{l}\n" for l in reviews if l.strip() and json.loads(l)["asin"] in keep))
    for asin in with_photo:
        shutil.copyfile(photos[asin], TARGET / "images" / f"{asin}.jpg")


if __name__ == "__main__":
    main()
