"""The data contract as `ingest` enforces it: reject rows, whole-file errors, formats, append, merge, the live spool."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vitrine.errors import UnusableFile
from vitrine.paths import DataDir
from vitrine.shop import ingest as ingest_module
from vitrine.shop import store
from vitrine.shop.ingest import REJECT_COLUMNS, ingest, ingest_live

ITEM_COLUMNS = ["item_id", "title", "description", "category", "brand", "price", "image_path", "created_at"]


def png_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def good_items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["I1", "I2", "I3"],
            "title": ["Red shirt", "Blue shoe", "Green bag"],
            "description": ["a shirt", None, "a bag"],
            "category": ["apparel", "shoes", "bags"],
            "brand": ["Acme", None, "Bolt"],
            "price": ["19.5", "60", "35.25"],
            "image_path": ["images/I1.png", "images/I2.png", None],
            "created_at": ["2024-01-01T00:00:00Z", "2024-01-02", "2023-12-30T08:00:00+02:00"],
            "colour": ["red", "blue", "green"],
        }
    )


def good_events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["I1", "I1", "I2", "I3"],
            "event_type": ["view", "purchase", "click", "add_to_cart"],
            "timestamp": ["2024-01-03T10:00:00Z", "2024-01-03T10:05:00Z", "2024-01-04T09:00:00", "2024-01-04T09:01:00Z"],
            "session_id": ["s1", "s1", "s2", "s2"],
            "quantity": ["1", "1", "1", "2"],
            "price": ["19.5", "19.5", None, None],
        }
    )


def write_shop(
    source: Path, items: pd.DataFrame | None, events: pd.DataFrame, fmt: str = "csv", users: pd.DataFrame | None = None
) -> Path:
    """The contract files in `source`, images for I1 and I2 included."""
    (source / "images").mkdir(parents=True, exist_ok=True)
    (source / "images" / "I1.png").write_bytes(png_bytes("red"))
    (source / "images" / "I2.png").write_bytes(png_bytes("blue"))
    tables = {"items": items, "events": events, "users": users}
    for name, frame in tables.items():
        if frame is None:
            continue
        if fmt == "csv":
            frame.to_csv(source / f"{name}.csv", index=False)
        else:
            frame.to_parquet(source / f"{name}.parquet", index=False)
    return source


def rejects(data: DataDir, table: str) -> pd.DataFrame:
    return pd.read_parquet(data.rejects / f"{table}.parquet")


# (table, row index, column, bad value as written, expected reject_value, expected reason)
BAD_CELLS = [
    ("events", 2, "event_type", "buy", "buy", "unknown_event_type"),
    ("events", 1, "item_id", "I404", "I404", "unknown_item"),
    ("events", 3, "timestamp", "yesterday", "yesterday", "unparsable_timestamp"),
    ("events", 0, "user_id", "", None, "missing_value"),
    ("events", 0, "quantity", "0", "0", "invalid_quantity"),
    ("events", 1, "price", "-3", "-3", "non_positive_price"),
    ("items", 1, "price", "-5", "-5", "non_positive_price"),
    ("items", 0, "price", "0", "0", "non_positive_price"),
    ("items", 2, "price", "cheap", "cheap", "not_a_number"),
    ("items", 2, "created_at", "soon", "soon", "unparsable_timestamp"),
    ("items", 2, "item_id", "I1", "I1", "duplicate_id"),
]


@pytest.mark.parametrize(("table", "row", "column", "bad", "value", "reason"), BAD_CELLS)
def test_each_bad_value_gives_its_reject_row_and_the_other_rows_go_on(
    tmp_path: Path, data_dir: DataDir, table: str, row: int, column: str, bad: str, value: str | None, reason: str
) -> None:
    frames = {"items": good_items(), "events": good_events()}
    frames[table].loc[row, column] = bad
    source = write_shop(tmp_path / "src", frames["items"], frames["events"])

    report = ingest(data_dir, source)

    bad_rows = rejects(data_dir, table)
    assert len(bad_rows) == 1
    got = bad_rows.iloc[0]
    assert (got.reject_file, got.reject_row, got.reject_field, got.reject_reason) == (f"{table}.csv", row + 1, column, reason)
    assert got.reject_value == value
    # The original row travels with the reject, as text.
    other = "session_id" if table == "events" else "colour"
    assert got[other] == frames[table].loc[row, other]
    counts = report.tables[table]
    assert (counts.read, counts.accepted, counts.rejected) == (len(frames[table]), len(frames[table]) - 1, 1)
    assert counts.reasons == {reason: 1}
    stored = store.read_items(data_dir) if table == "items" else store.read_events(data_dir)
    assert len(stored) == len(frames[table]) - 1


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path, data_dir: DataDir) -> None:
    events = good_events()
    events.loc[0, "event_type"] = "like"
    events.loc[0, "timestamp"] = "never"  # a second problem on the same row
    events.loc[2, "item_id"] = "I999"
    source = write_shop(tmp_path / "src", good_items(), events)

    report = ingest(data_dir, source)

    bad = rejects(data_dir, "events")
    assert sorted(zip(bad.reject_row, bad.reject_reason)) == [
        (1, "unknown_event_type"), (1, "unparsable_timestamp"), (3, "unknown_item"),
    ]
    assert list(bad.columns[-len(REJECT_COLUMNS):]) == list(REJECT_COLUMNS)
    assert report.tables["events"].rejected == 2  # rows, each counted once
    assert report.tables["events"].accepted == 2


def test_events_of_a_rejected_item_are_rejected_as_unknown(tmp_path: Path, data_dir: DataDir) -> None:
    items = good_items()
    items.loc[0, "price"] = "-1"  # I1 is rejected, so both events of I1 refer to an unknown item
    source = write_shop(tmp_path / "src", items, good_events())

    report = ingest(data_dir, source)

    assert report.tables["events"].reasons == {"unknown_item": 2}
    assert set(store.read_events(data_dir)["item_id"]) == {"I2", "I3"}


@pytest.mark.parametrize("blank", ["", "   ", None])
def test_an_item_without_a_title_is_kept_with_its_sales_and_a_warning(tmp_path: Path, data_dir: DataDir, blank: str | None) -> None:
    items = good_items()
    items.loc[1, "title"] = blank  # I2, which u2 clicked
    items.loc[2, "title"] = blank  # I3, with a duplicate row after it: the first row is still the one kept
    items = pd.concat([items, items.iloc[[2]].assign(title="Green bag again")], ignore_index=True)
    source = write_shop(tmp_path / "src", items, good_events())

    report = ingest(data_dir, source)

    counts = report.tables["items"]
    assert (counts.read, counts.accepted, counts.rejected) == (4, 3, 1)  # only the duplicate is dropped
    assert counts.reasons == {"missing_title_kept": 2, "duplicate_id": 1}
    warnings = rejects(data_dir, "items").sort_values("reject_row")
    assert list(zip(warnings.reject_row, warnings.reject_field, warnings.reject_reason)) == [
        (2, "title", "missing_title_kept"), (3, "title", "missing_title_kept"), (4, "item_id", "duplicate_id"),
    ]
    stored = store.read_items(data_dir).set_index("item_id")
    assert stored.loc["I2", "title"] == "" and stored.loc["I3", "title"] == ""
    assert stored.loc["I3", "description"] == "a bag"  # what the encoder's text is then made of, with category and brand
    assert report.tables["events"].rejected == 0
    assert sorted(store.read_events(data_dir)["item_id"]) == ["I1", "I1", "I2", "I3"]


@pytest.mark.parametrize(("image", "reason"), [(None, "image_missing"), (b"\x89PNG\r\n\x1a\n garbage", "image_corrupt")])
def test_a_bad_image_keeps_the_item_without_image_and_says_so(
    tmp_path: Path, data_dir: DataDir, image: bytes | None, reason: str
) -> None:
    source = write_shop(tmp_path / "src", good_items(), good_events())
    if image is None:
        (source / "images" / "I2.png").unlink()
    else:
        (source / "images" / "I2.png").write_bytes(image)

    report = ingest(data_dir, source)

    stored = store.read_items(data_dir)
    assert list(stored.columns) == [*ITEM_COLUMNS, "colour"]
    items = stored.set_index("item_id")
    assert len(items) == 3
    assert pd.isna(items.at["I2", "image_path"])
    assert items.at["I1", "image_path"] == "images/I1.png"
    assert Image.open(data_dir.shop / items.at["I1", "image_path"]).getpixel((0, 0)) == (255, 0, 0)
    bad = rejects(data_dir, "items")
    assert list(zip(bad.reject_row, bad.reject_field, bad.reject_value, bad.reject_reason)) == [
        (2, "image_path", "images/I2.png", reason)
    ]
    assert report.images == 1
    assert report.tables["items"].rejected == 0 and report.tables["items"].reasons == {reason: 1}


def test_a_truncated_image_is_corrupt(tmp_path: Path, data_dir: DataDir) -> None:
    source = write_shop(tmp_path / "src", good_items(), good_events())
    whole = (source / "images" / "I2.png").read_bytes()
    (source / "images" / "I2.png").write_bytes(whole[: len(whole) // 2])

    report = ingest(data_dir, source)

    assert report.tables["items"].reasons == {"image_corrupt": 1}


def test_an_image_path_outside_the_source_is_not_followed(tmp_path: Path, data_dir: DataDir) -> None:
    (tmp_path / "secret.png").write_bytes(png_bytes())
    items = good_items()
    items.loc[0, "image_path"] = "../secret.png"
    source = write_shop(tmp_path / "src", items, good_events())

    report = ingest(data_dir, source)

    assert report.tables["items"].reasons == {"image_outside_source": 1}
    assert not (data_dir.images / "secret.png").exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_missing_required_column_makes_the_file_unusable_and_writes_nothing(
    tmp_path: Path, data_dir: DataDir, fmt: str
) -> None:
    ingest(data_dir, write_shop(tmp_path / "first", good_items(), good_events()))
    before = store.read_events(data_dir)

    source = write_shop(tmp_path / "src", good_items(), good_events().drop(columns="event_type"), fmt=fmt)
    with pytest.raises(UnusableFile, match=rf"events\.{fmt}.*'event_type'"):
        ingest(data_dir, source)

    pd.testing.assert_frame_equal(store.read_events(data_dir), before)


def test_a_column_that_cannot_be_read_as_its_type_makes_the_file_unusable(tmp_path: Path, data_dir: DataDir) -> None:
    events = good_events()
    events["timestamp"] = ["monday", "tuesday", "wednesday", "thursday"]
    source = write_shop(tmp_path / "src", good_items(), events)

    with pytest.raises(UnusableFile, match=r"events\.csv: column 'timestamp'.*'monday'"):
        ingest(data_dir, source)


def test_numeric_timestamps_are_refused_rather_than_guessed(tmp_path: Path, data_dir: DataDir) -> None:
    events = good_events()
    events["timestamp"] = [1_704_276_000, 1_704_276_300, 1_704_358_800, 1_704_358_860]
    source = write_shop(tmp_path / "src", good_items(), events, fmt="parquet")

    with pytest.raises(UnusableFile, match="timestamp.*ISO 8601"):
        ingest(data_dir, source)


def test_no_items_file_is_unusable_for_a_new_shop(tmp_path: Path, data_dir: DataDir) -> None:
    source = write_shop(tmp_path / "src", None, good_events())
    with pytest.raises(UnusableFile, match="no items.parquet or items.csv"):
        ingest(data_dir, source)


def test_csv_and_parquet_give_the_same_shop(tmp_path: Path) -> None:
    shops = {}
    for fmt in ("csv", "parquet"):
        data = DataDir.resolve(tmp_path / fmt / "data")
        items = good_items()
        if fmt == "parquet":  # typed columns, as a real export would have them
            items["price"] = items["price"].astype(float)
            items["created_at"] = pd.to_datetime(items["created_at"], utc=True, format="ISO8601")
        ingest(data, write_shop(tmp_path / fmt / "src", items, good_events(), fmt=fmt))
        shops[fmt] = (store.read_items(data), store.read_events(data))

    for csv_frame, parquet_frame in zip(shops["csv"], shops["parquet"]):
        pd.testing.assert_frame_equal(csv_frame, parquet_frame)
    items, events = shops["csv"]
    assert str(items["created_at"].dtype) == "datetime64[ns, UTC]"
    assert items.set_index("item_id").at["I3", "created_at"] == pd.Timestamp("2023-12-30T06:00:00Z")
    assert str(events["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert events["quantity"].tolist() == [1.0, 1.0, 1.0, 2.0]


def test_ids_in_csv_stay_text(tmp_path: Path, data_dir: DataDir) -> None:
    items = good_items()
    items["item_id"] = ["00123", "123", "0x1"]
    events = good_events()
    events["item_id"] = ["00123", "00123", "123", "0x1"]
    ingest(data_dir, write_shop(tmp_path / "src", items, events))

    assert store.read_items(data_dir)["item_id"].tolist() == ["00123", "123", "0x1"]
    assert store.read_events(data_dir)["item_id"].tolist() == ["00123", "00123", "123", "0x1"]


def test_optional_columns_may_be_absent(tmp_path: Path, data_dir: DataDir) -> None:
    items = good_items()[["item_id", "title"]]
    events = good_events()[["user_id", "item_id", "event_type", "timestamp"]]
    report = ingest(data_dir, write_shop(tmp_path / "src", items, events))

    stored = store.read_items(data_dir)
    # Absent optional columns are stored as typed, empty columns so that readers see one schema.
    assert {"description", "category", "brand", "price", "image_path", "created_at"} <= set(stored.columns)
    assert stored["price"].isna().all() and stored["image_path"].isna().all()
    assert len(store.read_events(data_dir)) == 4
    assert report.tables["items"].reasons == {} and report.tables["events"].reasons == {}
    assert not (data_dir.rejects / "items.parquet").exists()


def test_users_are_validated_when_given(tmp_path: Path, data_dir: DataDir) -> None:
    users = pd.DataFrame({"user_id": ["u1", "u2", "u1"], "signup_at": ["2023-05-01", "tomorrow", "2023-06-01"], "age": ["31", "40", "22"]})
    report = ingest(data_dir, write_shop(tmp_path / "src", good_items(), good_events(), users=users))

    bad = rejects(data_dir, "users")
    assert list(zip(bad.reject_row, bad.reject_field, bad.reject_reason)) == [
        (2, "signup_at", "unparsable_timestamp"), (3, "user_id", "duplicate_id"),
    ]
    stored = store.read_users(data_dir)
    assert stored["user_id"].tolist() == ["u1"]
    assert list(stored.columns) == ["user_id", "signup_at", "age"]  # extra attributes are kept
    assert report.tables["users"].accepted == 1
    # Events of users without a users row are fine: users are optional.
    assert report.tables["events"].accepted == 4


def test_an_events_folder_of_parts_in_both_formats(tmp_path: Path, data_dir: DataDir) -> None:
    source = write_shop(tmp_path / "src", good_items(), good_events().iloc[:0])
    (source / "events.csv").unlink()
    (source / "events").mkdir()
    first, second = good_events().iloc[:2].copy(), good_events().iloc[2:].copy()
    second.loc[3, "event_type"] = "wishlist"
    first.to_csv(source / "events" / "part-0.csv", index=False)
    second.to_parquet(source / "events" / "part-1.parquet", index=False)

    report = ingest(data_dir, source)

    assert report.tables["events"].files == ["events/part-0.csv", "events/part-1.parquet"]
    bad = rejects(data_dir, "events")
    # Rows count within each part.
    assert list(zip(bad.reject_file, bad.reject_row, bad.reject_reason)) == [("events/part-1.parquet", 2, "unknown_event_type")]
    assert len(store.read_events(data_dir)) == 3


def test_rows_are_numbered_across_chunks(tmp_path: Path, data_dir: DataDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "EVENT_CHUNK_ROWS", 2)
    events = pd.concat([good_events()] * 3, ignore_index=True)
    events.loc[[1, 6, 11], "event_type"] = "bogus"
    source = write_shop(tmp_path / "src", good_items(), events, fmt="parquet")

    report = ingest(data_dir, source)

    assert rejects(data_dir, "events")["reject_row"].tolist() == [2, 7, 12]
    assert (report.tables["events"].read, report.tables["events"].accepted) == (12, 9)
    assert len(store.read_events(data_dir)) == 9


def test_append_adds_new_days_and_leaves_old_partitions_untouched(tmp_path: Path, data_dir: DataDir) -> None:
    ingest(data_dir, write_shop(tmp_path / "day1", good_items(), good_events()))
    old_part = next((data_dir.events / "event_date=2024-01-03").glob("*.parquet"))
    old_stat = old_part.stat()

    later = good_events()
    later["timestamp"] = ["2024-01-05T10:00:00Z"] * 4
    later.loc[0, "item_id"] = "I4"  # a new item, in this delivery's items
    later.loc[1, "item_id"] = "I5"  # known nowhere
    new_items = pd.DataFrame({"item_id": ["I4", "I2"], "title": ["Yellow hat", "Blue shoe v2"]})
    source = tmp_path / "day2"
    source.mkdir()
    new_items.to_csv(source / "items.csv", index=False)
    later.to_csv(source / "events.csv", index=False)

    report = ingest(data_dir, source, append=True)

    assert report.event_days == ["2024-01-05"]
    assert report.tables["events"].reasons == {"unknown_item": 1}
    assert store.event_days(data_dir) == ["2024-01-03", "2024-01-04", "2024-01-05"]
    after = old_part.stat()
    assert (after.st_ino, after.st_mtime_ns) == (old_stat.st_ino, old_stat.st_mtime_ns)
    assert len(store.read_events(data_dir)) == 4 + 3
    items = store.read_items(data_dir).set_index("item_id")
    assert sorted(items.index) == ["I1", "I2", "I3", "I4"]
    assert items.at["I2", "title"] == "Blue shoe v2"  # upserted
    assert items.at["I1", "image_path"] == "images/I1.png" and (data_dir.shop / "images" / "I1.png").exists()


def test_append_without_items_checks_events_against_the_stored_items(tmp_path: Path, data_dir: DataDir) -> None:
    ingest(data_dir, write_shop(tmp_path / "day1", good_items(), good_events()))
    source = tmp_path / "day2"
    source.mkdir()
    later = good_events()
    later["timestamp"] = ["2024-01-06T00:00:00Z"] * 4
    later.loc[2, "item_id"] = "I7"
    later.to_parquet(source / "events.parquet", index=False)

    report = ingest(data_dir, source, append=True)

    assert (report.tables["events"].accepted, report.tables["events"].reasons) == (3, {"unknown_item": 1})
    assert report.tables["items"].read == 0
    assert len(store.read_items(data_dir)) == 3


def test_report_prints_counts_as_json_and_table(tmp_path: Path, data_dir: DataDir) -> None:
    events = good_events()
    events.loc[0, "event_type"] = "like"
    report = ingest(data_dir, write_shop(tmp_path / "src", good_items(), events))

    payload = report.to_dict()
    assert payload["tables"]["events"] == {
        "files": ["events.csv"], "read": 4, "accepted": 3, "rejected": 1, "reasons": {"unknown_event_type": 1}
    }
    assert payload["event_days"] == {"count": 2, "first": "2024-01-03", "last": "2024-01-04"}
    assert report.to_table().row_count == 3


@pytest.mark.parametrize(
    ("stamps", "expected"),
    [
        (["2024-01-03T10:00:00Z", "2024-01-03T12:00:00+02:00"], ["2024-01-03T10:00:00Z", "2024-01-03T10:00:00Z"]),
        (["2024-01-03 10:00:00", "2024-01-04"], ["2024-01-03T10:00:00Z", "2024-01-04T00:00:00Z"]),
        (["2024-01-03 10:00:00", "2024-01-03T11:00:00Z"], ["2024-01-03T10:00:00Z", "2024-01-03T11:00:00Z"]),
    ],
    ids=["all-zoned", "all-naive", "mixed"],
)
def test_text_timestamps_are_utc_whatever_the_mix(tmp_path: Path, data_dir: DataDir, stamps: list[str], expected: list[str]) -> None:
    events = good_events().iloc[:2].copy()
    events["timestamp"] = stamps
    ingest(data_dir, write_shop(tmp_path / "src", good_items(), events))

    assert store.read_events(data_dir)["timestamp"].tolist() == [pd.Timestamp(e) for e in expected]


def test_a_log_spanning_years_of_days_is_stored_day_by_day(tmp_path: Path, data_dir: DataDir) -> None:
    """Arrow writes at most 1,024 partitions at once; a real review log spans thousands of days."""
    days = pd.date_range("2011-01-01", periods=1_500, freq="D", tz="UTC")
    events = pd.DataFrame({"user_id": [f"u{i % 7}" for i in range(len(days))], "item_id": "I1", "event_type": "purchase",
                           "timestamp": days.strftime("%Y-%m-%dT%H:%M:%SZ")})  # fmt: skip
    report = ingest(data_dir, write_shop(tmp_path / "src", good_items(), events))

    assert report.tables["events"].accepted == 1_500 and len(report.event_days) == 1_500
    assert len(store.event_days(data_dir)) == 1_500 and len(store.read_events(data_dir)) == 1_500


# --- merging, and the service's spool ---------------------------------------------------------------

SPOOL_HEADER = "user_id,item_id,event_type,timestamp,session_id,quantity,price\n"


def spool_line(user: str, item: str, minute: int, day: str = "2024-01-03") -> str:
    """One line as `ranking.event_spool` writes it."""
    return f"{user},{item},purchase,{day}T11:{minute:02d}:00.000000Z,s9,1.0,19.5\n"


def write_spool(data: DataDir, name: str, text: str) -> Path:
    data.live_events.mkdir(parents=True, exist_ok=True)
    path = data.live_events / name
    path.write_text(text)
    return path


def test_merge_adds_to_the_days_the_shop_holds_and_a_second_run_adds_nothing(tmp_path: Path, data_dir: DataDir) -> None:
    ingest(data_dir, write_shop(tmp_path / "export", good_items(), good_events()))  # 2 events on 2024-01-03
    source = tmp_path / "later"
    source.mkdir()
    (source / "events.csv").write_text(SPOOL_HEADER + spool_line("u7", "I2", 1) + spool_line("u8", "I3", 2))

    first = ingest(data_dir, source, append=True, merge=True)
    after_first = store.read_events(data_dir)
    second = ingest(data_dir, source, append=True, merge=True)

    assert first.to_dict()["tables"]["events"] | {"files": None, "reasons": None} == {
        "files": None, "read": 2, "accepted": 2, "rejected": 0, "reasons": None, "new": 2, "already_stored": 0,
    }  # fmt: skip
    assert first.event_days == ["2024-01-03"] and first.merge
    day = after_first[after_first["timestamp"].dt.strftime("%Y-%m-%d") == "2024-01-03"]
    assert sorted(day["user_id"]) == ["u1", "u1", "u7", "u8"]  # the export's two events kept
    assert (second.tables["events"].accepted, second.tables["events"].already_stored, second.event_days) == (2, 2, [])
    pd.testing.assert_frame_equal(store.read_events(data_dir), after_first)
    assert "already stored" in [column.header for column in second.to_table().columns]


def test_merge_needs_append(tmp_path: Path, data_dir: DataDir) -> None:
    with pytest.raises(ValueError, match="append=True"):
        ingest(data_dir, write_shop(tmp_path / "src", good_items(), good_events()), merge=True)


@pytest.mark.parametrize(
    ("half", "cut"),
    [("u9,I1,purch", "event_type"), ("u9,I1,purchase,2024-01-03T11:09:00.0", "timestamp"), ("u9,I1,purchase,2024-01-03T11:09:00.000000Z,s9,1.0,19", "price")],
    ids=["in-event-type", "in-timestamp", "in-price"],
)
def test_a_half_written_last_line_is_one_reject_and_is_stored_once_finished(
    tmp_path: Path, data_dir: DataDir, half: str, cut: str
) -> None:
    """A line cut in its price ("19" of "19.5") or timestamp would parse as a wrong event: it is never read as one."""
    ingest(data_dir, write_shop(tmp_path / "export", good_items(), good_events()))
    path = write_spool(data_dir, "events-2024-01-03-7.csv", SPOOL_HEADER + spool_line("u7", "I2", 1) + spool_line("u8", "I3", 2) + half)

    report = ingest_live(data_dir, now=pd.Timestamp("2024-01-03T12:00Z"))

    events = report.tables["events"]
    assert (events.read, events.accepted, events.rejected, dict(events.reasons)) == (3, 2, 1, {"half_written_line": 1})
    reject = rejects(data_dir, "events").iloc[0]
    assert (reject["reject_file"], reject["reject_row"], reject["reject_reason"], reject["reject_field"]) == (
        "events/events-2024-01-03-7.csv", 3, "half_written_line", cut,
    )  # fmt: skip
    assert half.endswith(reject["reject_value"])
    assert sorted(store.read_events(data_dir)["user_id"]) == ["u1", "u1", "u2", "u2", "u7", "u8"]

    with path.open("a") as handle:  # the service finishes the line
        handle.write(spool_line("u9", "I1", 9)[len(half) :])
    again = ingest_live(data_dir, now=pd.Timestamp("2024-01-03T12:05Z"))

    assert (again.tables["events"].new, again.tables["events"].already_stored) == (1, 2)
    stored = store.read_events(data_dir)
    assert sorted(stored["user_id"]) == ["u1", "u1", "u2", "u2", "u7", "u8", "u9"]
    assert stored.loc[stored["user_id"] == "u9", "price"].tolist() == [19.5]
    assert not (data_dir.rejects / "events.parquet").exists()


def test_a_file_with_no_finished_line_yet_is_one_reject_not_a_crash(data_dir: DataDir, tmp_path: Path) -> None:
    ingest(data_dir, write_shop(tmp_path / "export", good_items(), good_events()))
    write_spool(data_dir, "events-2024-01-03-7.csv", SPOOL_HEADER[:20])

    report = ingest_live(data_dir, now=pd.Timestamp("2024-01-03T12:00Z"))

    assert (report.tables["events"].read, dict(report.tables["events"].reasons)) == (1, {"half_written_line": 1})
    assert rejects(data_dir, "events").iloc[0]["reject_field"] == "line"
    assert len(store.read_events(data_dir)) == 4


def test_ingest_live_moves_past_days_files_and_keeps_todays(tmp_path: Path, data_dir: DataDir) -> None:
    ingest(data_dir, write_shop(tmp_path / "export", good_items(), good_events()))
    old = write_spool(data_dir, "events-2024-01-03-7.csv", SPOOL_HEADER + spool_line("u7", "I2", 1))
    just_ended = write_spool(data_dir, "events-2024-01-04-7.csv", SPOOL_HEADER + spool_line("u8", "I2", 2, day="2024-01-04"))
    today = write_spool(data_dir, "events-2024-01-05-7.csv", SPOOL_HEADER + spool_line("u9", "I2", 3, day="2024-01-05"))
    assert not list(data_dir.live.glob("items.*")) and not list(data_dir.live.glob("users.*"))  # live/ holds events only

    # 00:05: yesterday's file may still get a post received before midnight (SPOOL_SETTLE).
    report = ingest_live(data_dir, now=pd.Timestamp("2024-01-05T00:05Z"))

    ingested = data_dir.live / "ingested"
    assert report.moved == [ingested / old.name]
    assert report.to_dict()["moved"] == [str(ingested / old.name)]
    assert not old.exists() and just_ended.exists() and today.exists()
    assert sorted(store.read_events(data_dir)["user_id"]) == ["u1", "u1", "u2", "u2", "u7", "u8", "u9"]

    later = ingest_live(data_dir, now=pd.Timestamp("2024-01-05T09:00Z"))

    assert later.moved == [ingested / just_ended.name] and today.exists()
    assert (later.tables["events"].accepted, later.tables["events"].already_stored) == (2, 2)
    assert len(store.read_events(data_dir)) == 7


def test_ingest_live_without_any_post_is_an_empty_ingest(tmp_path: Path, data_dir: DataDir) -> None:
    ingest(data_dir, write_shop(tmp_path / "export", good_items(), good_events()))
    before = store.read_events(data_dir)

    report = ingest_live(data_dir)

    assert (report.tables["events"].read, report.tables["events"].already_stored, report.moved) == (0, 0, [])
    pd.testing.assert_frame_equal(store.read_events(data_dir), before)
