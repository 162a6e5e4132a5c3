"""`vitrine features materialize`: without --end, the range ends where the data does, not at the wall clock."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from feature_repo.snapshots.build import build, last_snapshot_day
from tests.conftest import CliRunner
from vitrine.errors import InvalidInput
from vitrine.paths import DataDir
from vitrine.shop.store import write_events, write_items

# Events end long ago: a wall-clock end would hide how old the data is (the watermark serving judges by).
LAST_EVENT = pd.Timestamp("2019-03-10 17:00", tz="UTC")


def old_shop(root: Path) -> DataDir:
    data = DataDir.resolve(root)
    write_items(data, pd.DataFrame({"item_id": ["A", "B"], "title": ["a", "b"], "category": ["toys", "games"]}))
    stamps = [LAST_EVENT - pd.Timedelta(days=d) for d in (9, 4, 0)]
    write_events(data, pd.DataFrame({"user_id": ["u1", "u2", "u1"], "item_id": ["A", "B", "B"], "event_type": "purchase",
                                     "timestamp": pd.to_datetime(stamps, utc=True)}))  # fmt: skip
    return data


def test_materialize_without_end_ends_the_day_after_the_last_snapshot(tmp_path: Path, vitrine_cli: CliRunner) -> None:
    data = old_shop(tmp_path / "data")

    code, _, err = vitrine_cli("features", "materialize", "--data-dir", str(data.root), "--json")
    assert code == InvalidInput.exit_code and "vitrine features build" in err  # nothing to end at

    build(data)
    assert last_snapshot_day(data) == (LAST_EVENT.normalize() + pd.Timedelta(days=1)).date()  # events before it
    code, out, err = vitrine_cli("features", "materialize", "--data-dir", str(data.root), "--view", "item_stats", "--json")
    assert code == 0, err
    # As the pipeline's feast step: the last snapshot day's rows are loaded, the range ends the day after.
    assert json.loads(out)["end"] == "2019-03-12T00:00:00+00:00"
