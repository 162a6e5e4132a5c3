"""Hostile shop files: each one gives counted reject rows with a named reason, never a crash, and never a
read outside the shop's folder (issue 18, "Hostile data").

Every test ingests a small incoming shop (three good items, four good events, two good users, as CSV
and, where the format matters, Parquet) holding one hostile value, and checks that the hostile row is
rejected (or kept with a warning row) for its reason, that the good rows are stored, and that the
report's counts are the reject rows'. A CSV file that is not UTF-8 is the one whole-file refusal: see
`vitrine.shop.ingest._check_utf8` for why.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embeddings.catalog import ImageReport, open_image
from vitrine.errors import UnusableFile
from vitrine.paths import DataDir
from vitrine.shop import contract, store
from vitrine.shop import ingest as ingest_module
from vitrine.shop.ingest import IngestReport, ingest

RecordProperty = Callable[[str, object], None]


# --- a small incoming shop -----------------------------------------------------------------------


def png_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def good_items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": ["I1", "I2", "I3"],
        "title": ["Red shirt", "Blue shoe", "Green bag"],
        "description": ["a shirt", "a shoe", "a bag"],
        "price": ["19.5", "60", "35.25"],
        "image_path": ["images/I1.png", "images/I2.png", None],
        "created_at": ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"],
        "colour": ["red", "blue", "green"],
    })  # fmt: skip


def good_events() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2"],
        "item_id": ["I1", "I1", "I2", "I3"],
        "event_type": ["view", "purchase", "click", "add_to_cart"],
        "timestamp": ["2024-01-03T10:00:00Z", "2024-01-03T10:05:00Z", "2024-01-04T09:00:00Z", "2024-01-04T09:01:00Z"],
        "session_id": ["s1", "s1", "s2", "s2"],
    })  # fmt: skip


def good_users() -> pd.DataFrame:
    return pd.DataFrame({"user_id": ["u1", "u2"], "signup_at": ["2023-05-01T00:00:00Z", "2023-06-01T00:00:00Z"]})


GOOD = {"items": good_items, "events": good_events, "users": good_users}


def plus_row(table: str, **values: Any) -> pd.DataFrame:
    """The good rows of `table` and, last, a hostile row: a copy of the first good row with `values`."""
    frame = GOOD[table]()
    row = frame.iloc[[0]].copy()
    for column, value in values.items():
        row[column] = [value]
    if table == "items" and "item_id" not in values:
        row["item_id"] = "I4"
    if table == "users" and "user_id" not in values:
        row["user_id"] = "u3"
    return pd.concat([frame, row], ignore_index=True)


def incoming(root: Path, fmt: str = "csv", **frames: pd.DataFrame) -> Path:
    """A source dir with items, events and users (the good ones unless given) and the images of I1 and I2."""
    source = root / "incoming"
    (source / "images").mkdir(parents=True)
    (source / "images" / "I1.png").write_bytes(png_bytes("red"))
    (source / "images" / "I2.png").write_bytes(png_bytes("blue"))
    for table, make in GOOD.items():
        frame = frames.get(table, make())
        if fmt == "csv":
            frame.to_csv(source / f"{table}.csv", index=False)
        else:
            frame.to_parquet(source / f"{table}.parquet", index=False)
    return source


def rejects(data: DataDir, table: str) -> pd.DataFrame:
    path = data.rejects / f"{table}.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=list(ingest_module.REJECT_COLUMNS))


def stored(data: DataDir, table: str) -> pd.DataFrame:
    return {"items": store.read_items, "events": store.read_events, "users": store.read_users}[table](data)


def assert_counted(report: IngestReport, data: DataDir, table: str, *, read: int, accepted: int, reasons: dict[str, int]) -> None:
    """The report's counts for `table` are its reject rows' and its stored rows'."""
    counts = report.tables[table]
    bad = rejects(data, table)
    assert counts.reasons == Counter(bad["reject_reason"]) == reasons
    assert counts.reasons.keys() <= set(ingest_module.REASONS)
    dropped = bad[~bad["reject_reason"].isin(ingest_module.KEEP_ROW_REASONS)]
    assert (counts.read, counts.accepted, counts.rejected) == (
        read,
        accepted,
        dropped[["reject_file", "reject_row"]].drop_duplicates().shape[0],
    )
    assert counts.read == counts.accepted + counts.rejected
    assert len(stored(data, table)) == accepted


def assert_untouched(report: IngestReport, data: DataDir, *tables: str) -> None:
    """`tables` read and stored in full, without a single reject row."""
    for table in tables:
        n = len(GOOD[table]())
        assert_counted(report, data, table, read=n, accepted=n, reasons={})


# --- encodings and line ends ---------------------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path, data_dir: DataDir, record_property: RecordProperty) -> None:
    source = incoming(tmp_path)
    for table in GOOD:  # Excel's "CSV UTF-8" starts every file with one
        path = source / f"{table}.csv"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())

    report = ingest(data_dir, source)

    assert_untouched(report, data_dir, "items", "events", "users")
    assert stored(data_dir, "items")["item_id"].tolist() == ["I1", "I2", "I3"]
    assert stored(data_dir, "users")["user_id"].tolist() == ["u1", "u2"]
    record_property("outcome", "BOM skipped: header read as item_id/user_id, all 9 rows accepted, 0 rejects")


def test_crlf_line_endings_are_read_like_lf(tmp_path: Path, data_dir: DataDir, record_property: RecordProperty) -> None:
    items = good_items()
    items.loc[0, "description"] = "two\r\nlines"  # a quoted cell with a line break of its own
    source = incoming(tmp_path, items=items)
    for table in GOOD:
        path = source / f"{table}.csv"
        path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    report = ingest(data_dir, source)

    assert_untouched(report, data_dir, "items", "events", "users")
    got = stored(data_dir, "items")
    # The last column carries no stray carriage return.
    assert got["colour"].tolist() == ["red", "blue", "green"]
    assert stored(data_dir, "events")["session_id"].tolist() == ["s1", "s1", "s2", "s2"]
    record_property("outcome", "CRLF accepted: all 9 rows stored, no trailing \\r in the last column, 0 rejects")


def test_a_file_not_in_utf8_is_refused_naming_the_file_byte_and_line(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty
) -> None:
    ingest(data_dir, incoming(tmp_path / "before"))
    items_before = stored(data_dir, "items")
    source = incoming(tmp_path / "cp1252")
    (source / "items.csv").write_text(
        good_items().assign(title=["Red shirt", "Chaussure bleue: 60 €", "Sac vert"]).to_csv(index=False), encoding="cp1252"
    )
    raw = (source / "items.csv").read_bytes()
    at = raw.index(b"\x80")  # cp1252's euro sign; never a first byte in UTF-8

    with pytest.raises(UnusableFile, match=rf"items\.csv: not UTF-8 at byte {at:,} \(line 3: b'\\x80.*cp1252.*save it as UTF-8"):
        ingest(data_dir, source)

    # Nothing written: the previous shop stands.
    pd.testing.assert_frame_equal(stored(data_dir, "items"), items_before)
    record_property("outcome", f"refused whole: UnusableFile naming items.csv, byte {at}, line 3, cp1252; previous shop kept")


@pytest.mark.parametrize("where", ["line-34", "last-byte"])
def test_a_bad_byte_past_the_first_block_is_located_exactly(
    tmp_path: Path, data_dir: DataDir, monkeypatch: pytest.MonkeyPatch, record_property: RecordProperty, where: str
) -> None:
    events = pd.concat([good_events()] * 10, ignore_index=True)
    events["session_id"] = [f"sé{i}" for i in range(len(events))]  # "é" is two bytes in UTF-8
    source = incoming(tmp_path, events=events)
    raw = (source / "events.csv").read_bytes()
    # Blocks that cut the first "é" in two: the check must carry its first byte over to the next block.
    monkeypatch.setattr(ingest_module, "UTF8_CHECK_BLOCK", raw.index("é".encode()) + 1)
    if where == "line-34":
        line = 34
        at = sum(len(text) + 1 for text in raw.split(b"\n")[: line - 1]) + 2  # after the line's "u1" or "u2"
        raw = raw[:at] + b"\xff" + raw[at + 1 :]
    else:  # a file cut inside its last character
        raw += "é".encode()[:1]
        at, line = len(raw) - 1, raw.count(b"\n") + 1
    (source / "events.csv").write_bytes(raw)

    with pytest.raises(UnusableFile, match=rf"events\.csv: not UTF-8 at byte {at:,} \(line {line}: b'\\x"):
        ingest(data_dir, source)
    record_property("outcome", f"refused whole: UnusableFile naming events.csv, byte {at}, line {line} (bad byte at {where})")


# --- cells ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(("table", "column"), [("items", "title"), ("items", "colour"), ("events", "session_id"), ("users", "user_id")])
def test_a_nul_byte_in_a_cell_rejects_its_row(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, fmt: str, table: str, column: str
) -> None:
    frames = {table: plus_row(table, **{column: "bad\x00value"})}
    report = ingest(data_dir, incoming(tmp_path, fmt, **frames))

    n = len(GOOD[table]())
    assert_counted(report, data_dir, table, read=n + 1, accepted=n, reasons={"nul_byte": 1})
    got = rejects(data_dir, table).iloc[0]
    assert (got.reject_file, got.reject_row, got.reject_field, got.reject_value) == (f"{table}.{fmt}", n + 1, column, "bad\x00value")
    assert not stored(data_dir, table).astype(str).apply(lambda c: c.str.contains("\x00")).any().any()
    assert_untouched(report, data_dir, *(t for t in GOOD if t != table))
    record_property("outcome", f"rejected: nul_byte in {table}.{column} ({fmt}), {n} good rows kept")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(("table", "column"), [("items", "description"), ("events", "timestamp")])
def test_a_10_mb_cell_is_rejected_and_only_its_start_is_kept(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, fmt: str, table: str, column: str
) -> None:
    huge = "2024-01-01" + "x" * 10_000_000
    report = ingest(data_dir, incoming(tmp_path, fmt, **{table: plus_row(table, **{column: huge})}))

    n = len(GOOD[table]())
    assert_counted(report, data_dir, table, read=n + 1, accepted=n, reasons={"value_too_long": 1})
    bad = rejects(data_dir, table)
    assert bad.iloc[0].reject_field == column
    assert bad.iloc[0].reject_value == huge[: ingest_module.MAX_REJECT_VALUE_CHARS]
    # The original row travels with the reject, cut too: the rejects file stays small.
    assert (
        bad.drop(columns=list(ingest_module.REJECT_COLUMNS)).map(lambda v: len(str(v))).max().max() <= ingest_module.MAX_REJECT_VALUE_CHARS
    )
    assert (data_dir.rejects / f"{table}.parquet").stat().st_size < 100_000
    record_property("outcome", f"rejected: value_too_long in {table}.{column} ({fmt}), reject_value cut to 500 chars, {n} good rows kept")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_formula_prefixes_are_kept_as_the_text_they_are(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, fmt: str
) -> None:
    """A title such as `=HYPERLINK(...)` is a valid title: it is stored unchanged, in Parquet, which no
    spreadsheet evaluates. Vitrine writes no CSV a spreadsheet would open (its rejects, shop and batch
    recommendations are Parquet), so there is nothing to neutralise on the way out."""
    formulas = ['=HYPERLINK("http://evil.example","click")', "+1 cable", "-20% jacket", "@SUM(A1:A9)", "=cmd|' /C calc'!A0"]
    items = pd.DataFrame({
        "item_id": ["I1", "I2", "I3", "I4", "I5"],
        "title": formulas,
        "description": ["=1+1", None, None, None, None],
        "price": ["+19.5", "60", "35.25", "5", "7"],
    })  # fmt: skip
    report = ingest(data_dir, incoming(tmp_path, fmt, items=items))

    assert_counted(report, data_dir, "items", read=5, accepted=5, reasons={})
    got = stored(data_dir, "items").set_index("item_id")
    assert got["title"].tolist() == formulas
    assert got.at["I1", "description"] == "=1+1"
    assert got.at["I1", "price"] == 19.5  # a number with a sign in a numeric column is a number
    record_property("outcome", f"kept verbatim ({fmt}): 5 formula-prefixed titles stored as text in Parquet, 0 rejects")


# --- images --------------------------------------------------------------------------------------

_TOUCHED: list[str] | None = None


# Audit event -> how many of its first arguments are paths: open(path, mode, flags), link(src, dst, ...).
_PATH_EVENTS = {"open": 1, "os.link": 2, "os.symlink": 2, "shutil.copyfile": 2}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _TOUCHED is not None and event in _PATH_EVENTS:
        _TOUCHED.extend(os.fsdecode(a) for a in args[: _PATH_EVENTS[event]] if isinstance(a, (str, bytes, os.PathLike)))


@contextmanager
def files_touched() -> Iterator[list[str]]:
    """The paths opened, linked or copied by this process (any thread) inside the block, from Python's audit events."""
    global _TOUCHED
    if not getattr(sys, "_vitrine_hostile_audit", False):  # an audit hook cannot be removed: add it once
        sys.addaudithook(_audit)
        setattr(sys, "_vitrine_hostile_audit", True)
    _TOUCHED = []
    try:
        yield _TOUCHED
    finally:
        _TOUCHED = None


def ingest_with_image(
    tmp_path: Path, data_dir: DataDir, image_path: str, prepare: Callable[[Path], None] | None = None
) -> tuple[IngestReport, list[str]]:
    """Ingest a shop whose fourth item (I4) names `image_path`; `prepare(source)` runs first."""
    source = incoming(tmp_path, items=plus_row("items", image_path=image_path))
    if prepare is not None:
        prepare(source)
    with files_touched() as touched:
        report = ingest(data_dir, source)
    return report, touched


def assert_image_refused(report: IngestReport, data: DataDir, image_path: str, reason: str) -> None:
    """I4 is kept without an image, with one warning row; I1 and I2 keep theirs."""
    assert_counted(report, data, "items", read=4, accepted=4, reasons={reason: 1})
    got = rejects(data, "items").iloc[0]
    assert (got.reject_row, got.reject_field, got.reject_value) == (4, "image_path", image_path)
    items = stored(data, "items").set_index("item_id")
    assert pd.isna(items.at["I4", "image_path"])
    assert items.at["I1", "image_path"] == "images/I1.png" and items.at["I2", "image_path"] == "images/I2.png"
    assert sorted(p.name for p in data.images.iterdir()) == ["I1.png", "I2.png"]
    assert report.images == 2


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(png_bytes("black"))
    return secret


ESCAPES: dict[str, Callable[[Path, Path], str]] = {
    # name -> (tmp_path, secret) -> image_path, after making what it needs inside the source
    "dot-dot": lambda tmp, secret: "../outside/secret.png",
    "dot-dot-inside": lambda tmp, secret: "images/../../outside/secret.png",
    "absolute": lambda tmp, secret: str(secret),
    "symlink-file": lambda tmp, secret: "images/link.png",
    "symlink-folder": lambda tmp, secret: "linked/secret.png",
}


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_an_image_path_out_of_the_source_is_neither_read_nor_copied(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, escape: str
) -> None:
    secret = _secret(tmp_path)
    image_path = ESCAPES[escape](tmp_path, secret)

    def links(source: Path) -> None:
        (source / "images" / "link.png").symlink_to(secret)
        (source / "linked").symlink_to(secret.parent, target_is_directory=True)

    report, touched = ingest_with_image(tmp_path, data_dir, image_path, links)

    assert_image_refused(report, data_dir, image_path, "image_outside_source")
    assert secret.resolve() not in {Path(p).resolve() for p in touched}
    assert all(p.stat().st_ino != secret.stat().st_ino and p.read_bytes() != secret.read_bytes() for p in data_dir.images.iterdir())
    record_property(
        "outcome", f"kept without image: image_outside_source for {escape} ({image_path!r}); the outside file never opened or copied"
    )


def test_an_image_path_naming_a_system_file_is_not_opened(tmp_path: Path, data_dir: DataDir, record_property: RecordProperty) -> None:
    report, touched = ingest_with_image(tmp_path, data_dir, "/etc/passwd")

    assert_image_refused(report, data_dir, "/etc/passwd", "image_outside_source")
    assert "/etc/passwd" not in touched
    record_property("outcome", "kept without image: image_outside_source for '/etc/passwd', never opened")


def test_a_symlink_that_stays_inside_the_source_is_followed(tmp_path: Path, data_dir: DataDir, record_property: RecordProperty) -> None:
    report, _ = ingest_with_image(
        tmp_path, data_dir, "pictures/I1.png", lambda source: (source / "pictures").symlink_to(source / "images", target_is_directory=True)
    )

    assert_counted(report, data_dir, "items", read=4, accepted=4, reasons={})
    assert stored(data_dir, "items").set_index("item_id").at["I4", "image_path"] == "images/I4.png"
    # The file the link leads to lands in the shop, not the link.
    assert not (data_dir.images / "I4.png").is_symlink()
    assert (data_dir.images / "I4.png").read_bytes() == png_bytes("red")
    record_property("outcome", "accepted: a symlinked folder inside the source is followed, 4 images, 0 rejects")


def test_a_symlink_loop_is_a_missing_image(tmp_path: Path, data_dir: DataDir, record_property: RecordProperty) -> None:
    def loop(source: Path) -> None:
        (source / "images" / "a.png").symlink_to(source / "images" / "b.png")
        (source / "images" / "b.png").symlink_to(source / "images" / "a.png")

    report, _ = ingest_with_image(tmp_path, data_dir, "images/a.png", loop)

    assert_image_refused(report, data_dir, "images/a.png", "image_missing")
    record_property("outcome", "kept without image: image_missing for a symlink loop")


def png_header_only(width: int, height: int, rows: int) -> bytes:
    """A 1-bit greyscale PNG of `width` x `height` whose data holds its first `rows` rows, all black (zlib
    squeezes them to almost nothing): a few KB on disk, up to width x height pixels once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + bytes((width + 7) // 8)  # filter byte, then the packed pixels
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * rows, 9)) + chunk(b"IEND", b"")


BOMBS = {
    # 49M pixels: past contract.MAX_IMAGE_PIXELS, under PIL's own limit, so only Vitrine's cap stops it.
    "under-pil-limit": (7_000, 7_000),
    # 10 billion pixels: PIL itself refuses to open it.
    "over-pil-limit": (100_000, 100_000),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, bomb: str
) -> None:
    width, height = BOMBS[bomb]
    assert width * height > contract.MAX_IMAGE_PIXELS
    data = png_header_only(width, height, height if width * height < 100_000_000 else 10)
    assert len(data) < 100_000

    report, _ = ingest_with_image(tmp_path, data_dir, "images/bomb.png", lambda source: (source / "images" / "bomb.png").write_bytes(data))

    assert_image_refused(report, data_dir, "images/bomb.png", "image_too_large")
    # The encoder applies the same cap to a file that reaches it some other way.
    catalog_report = ImageReport()
    assert open_image(tmp_path / "incoming" / "images" / "bomb.png", catalog_report) is None
    assert len(catalog_report.corrupt) == 1
    record_property("outcome", f"kept without image: image_too_large for a {len(data):,}-byte PNG of {width}x{height} pixels")


NOT_IMAGES = {
    "text": b"this is not a picture\n",
    "empty": b"",
    "html": b"<html><script>alert(1)</script></html>",
    "jpeg-magic-then-garbage": b"\xff\xd8\xff\xe0" + b"\x00" * 64,
}


@pytest.mark.parametrize("content", list(NOT_IMAGES))
def test_a_file_with_an_image_suffix_that_is_no_image(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, content: str
) -> None:
    report, _ = ingest_with_image(
        tmp_path, data_dir, "images/fake.jpg", lambda source: (source / "images" / "fake.jpg").write_bytes(NOT_IMAGES[content])
    )

    assert_image_refused(report, data_dir, "images/fake.jpg", "image_corrupt")
    record_property("outcome", f"kept without image: image_corrupt for images/fake.jpg holding {content} bytes")


# --- ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(("table", "key"), [("items", "item_id"), ("users", "user_id")])
def test_a_duplicate_id_keeps_the_first_row(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, fmt: str, table: str, key: str
) -> None:
    first = GOOD[table]().iloc[0]
    report = ingest(data_dir, incoming(tmp_path, fmt, **{table: plus_row(table, **{key: first[key], "created_at": None})}))

    n = len(GOOD[table]())
    assert_counted(report, data_dir, table, read=n + 1, accepted=n, reasons={"duplicate_id": 1})
    got = rejects(data_dir, table).iloc[0]
    assert (got.reject_row, got.reject_field, got.reject_value) == (n + 1, key, first[key])
    assert stored(data_dir, table)[key].tolist() == GOOD[table]()[key].tolist()
    record_property("outcome", f"rejected: duplicate_id for a second {first[key]} in {table} ({fmt}), the first kept")


# (first id, later id, reason the later row gets; None: two ids, both kept)
COLLISIONS = [
    ("A1", "A1 ", "duplicate_id"),  # surrounding blanks are trimmed from every text field
    ("A1", "\tA1", "duplicate_id"),
    ("A1", "Ａ1", "colliding_id"),  # fullwidth A: NFKC maps it to A
    ("ﬁ1", "fi1", "colliding_id"),  # the fi ligature
    ("A²", "A2", "colliding_id"),  # superscript two
    ("Ａ1", "A1", "colliding_id"),  # whichever comes first is kept, as given
    ("A1", "a1", None),  # case is part of an id: not folded
]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(("first", "later", "reason"), COLLISIONS)
def test_ids_that_collide_once_normalised_keep_the_first(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, fmt: str, first: str, later: str, reason: str | None
) -> None:
    items = pd.concat(
        [good_items(), plus_row("items", item_id=first).iloc[[-1]], plus_row("items", item_id=later).iloc[[-1]]], ignore_index=True
    )
    events = pd.concat([good_events(), good_events().iloc[[0]].assign(item_id=later)], ignore_index=True)
    users = pd.concat([good_users(), pd.DataFrame({"user_id": [first, later], "signup_at": [None, None]})], ignore_index=True)
    report = ingest(data_dir, incoming(tmp_path, fmt, items=items, events=events, users=users))

    if reason is None:
        assert_counted(report, data_dir, "items", read=5, accepted=5, reasons={})
        assert stored(data_dir, "items")["item_id"].tolist()[-2:] == [first, later]
        assert_counted(report, data_dir, "events", read=5, accepted=5, reasons={})
        record_property("outcome", f"accepted: {first!r} and {later!r} are two ids")
        return
    assert_counted(report, data_dir, "items", read=5, accepted=4, reasons={reason: 1})
    assert_counted(report, data_dir, "users", read=4, accepted=3, reasons={reason: 1})
    got = rejects(data_dir, "items").iloc[0]
    assert (got.reject_row, got.reject_field, got.reject_value, got.reject_reason) == (5, "item_id", later, reason)
    assert stored(data_dir, "items")["item_id"].tolist() == ["I1", "I2", "I3", first.strip()]
    assert stored(data_dir, "users")["user_id"].tolist() == ["u1", "u2", first.strip()]
    # An event naming the later form reaches the kept item only when trimming alone makes them one id.
    expected_events = {"duplicate_id": ({}, 5), "colliding_id": ({"unknown_item": 1}, 4)}[reason]
    assert_counted(report, data_dir, "events", read=5, accepted=expected_events[1], reasons=expected_events[0])
    record_property("outcome", f"rejected: {reason} for {later!r} after {first!r} ({fmt}) in items and users, the first kept")


@pytest.mark.parametrize(("delivered", "reason"), [("A1", "colliding_id"), ("Ａ1", None)])
def test_an_appended_id_is_checked_against_the_shop_it_joins(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, delivered: str, reason: str | None
) -> None:
    ingest(data_dir, incoming(tmp_path / "first", items=plus_row("items", item_id="Ａ1")))
    later = tmp_path / "later"
    later.mkdir()
    pd.DataFrame({"item_id": [delivered, "I2"], "title": ["Fullwidth again", "Blue shoe v2"]}).to_csv(later / "items.csv", index=False)
    good_events().to_csv(later / "events.csv", index=False)

    report = ingest(data_dir, later, append=True)

    got = stored(data_dir, "items").set_index("item_id")
    assert sorted(got.index) == ["I1", "I2", "I3", "Ａ1"]
    assert got.at["I2", "title"] == "Blue shoe v2"
    counts = report.tables["items"]
    assert counts.reasons == Counter(rejects(data_dir, "items")["reject_reason"]) == ({reason: 1} if reason else {})
    if reason is None:  # the same id: an upsert
        assert (counts.read, counts.accepted, counts.rejected) == (2, 2, 0)
        assert got.at["Ａ1", "title"] == "Fullwidth again"
        record_property("outcome", "accepted: the stored id 'Ａ1' delivered again is an upsert")
        return
    assert (counts.read, counts.accepted, counts.rejected) == (2, 1, 1)
    assert got.at["Ａ1", "title"] == "Red shirt"
    record_property("outcome", f"rejected: {reason} for an appended {delivered!r} when the shop holds 'Ａ1'; the stored item unchanged")


# --- timestamps ----------------------------------------------------------------------------------


def _iso(moment: pd.Timestamp) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# (label, timestamp as text, reason; None: accepted)
STAMPS: list[tuple[str, Callable[[], str], str | None]] = [
    ("year-2200", lambda: "2200-01-01T00:00:00Z", "future_timestamp"),
    ("two-days-ahead", lambda: _iso(pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=2)), "future_timestamp"),
    ("an-hour-ahead", lambda: _iso(pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)), None),
    ("last-second-of-1969", lambda: "1969-12-31T23:59:59Z", "pre_1970_timestamp"),
    ("year-1900", lambda: "1900-01-01", "pre_1970_timestamp"),
    ("epoch", lambda: "1970-01-01T00:00:00Z", None),
]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(("table", "column"), [("events", "timestamp"), ("items", "created_at"), ("users", "signup_at")])
@pytest.mark.parametrize(("label", "stamp", "reason"), STAMPS, ids=[s[0] for s in STAMPS])
def test_timestamps_before_1970_or_far_ahead_are_rejected(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty,
    fmt: str, table: str, column: str, label: str, stamp: Callable[[], str], reason: str | None,
) -> None:  # fmt: skip
    frames = {table: plus_row(table, **{column: stamp()})}
    if fmt == "parquet":  # typed timestamps, as a real export has them
        frames = {name: frame.assign(**{column: pd.to_datetime(frame[column], utc=True, format="ISO8601")})
                  for name, frame in frames.items()}  # fmt: skip
    report = ingest(data_dir, incoming(tmp_path, fmt, **frames))

    n = len(GOOD[table]())
    if reason is None:
        assert_counted(report, data_dir, table, read=n + 1, accepted=n + 1, reasons={})
        record_property("outcome", f"accepted: {label} in {table}.{column} ({fmt})")
        return
    assert_counted(report, data_dir, table, read=n + 1, accepted=n, reasons={reason: 1})
    got = rejects(data_dir, table).iloc[0]
    assert (got.reject_row, got.reject_field) == (n + 1, column)
    record_property("outcome", f"rejected: {reason} for {label} in {table}.{column} ({fmt}), {n} good rows kept")


@pytest.mark.parametrize("year", [1, 9999])
def test_parquet_timestamps_past_the_nanosecond_range_are_rejected_not_a_crash(
    tmp_path: Path, data_dir: DataDir, record_property: RecordProperty, year: int
) -> None:
    """Years outside 1677-2262 fit a Parquet timestamp (microseconds) but not the shop's nanoseconds."""
    source = incoming(tmp_path, "parquet")
    events = pa.Table.from_pandas(
        good_events().assign(timestamp=pd.to_datetime(good_events()["timestamp"], utc=True)), preserve_index=False
    )
    stamps = pa.array([*events.column("timestamp").to_pylist(), datetime(year, 1, 1, tzinfo=timezone.utc)], pa.timestamp("us", "UTC"))
    extra = {
        name: pa.array([*events.column(name).to_pylist(), events.column(name)[0].as_py()])
        for name in events.column_names
        if name != "timestamp"
    }
    pq.write_table(pa.table({**extra, "timestamp": stamps}), source / "events.parquet")

    report = ingest(data_dir, source)

    reason = "pre_1970_timestamp" if year < 1970 else "future_timestamp"
    assert_counted(report, data_dir, "events", read=5, accepted=4, reasons={reason: 1})
    assert rejects(data_dir, "events").iloc[0].reject_value.startswith(f"{year:04d}-01-01")
    record_property("outcome", f"rejected: {reason} for year {year} in a Parquet timestamp, 4 good events kept")
