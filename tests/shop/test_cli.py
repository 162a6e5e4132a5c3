"""`vitrine ingest`, `vitrine import amazon-reviews` and `vitrine generate` as a user runs them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from vitrine.paths import DataDir
from vitrine.shop import store


def tiny_source(root: Path, *, drop: str | None = None) -> Path:
    root.mkdir(parents=True)
    pd.DataFrame({"item_id": ["I1", "I2"], "title": ["Red shirt", "Blue shoe"], "price": [10.0, -2.0]}).to_csv(
        root / "items.csv", index=False
    )
    events = pd.DataFrame(
        {"user_id": ["u1", "u2"], "item_id": ["I1", "I1"], "event_type": ["view", "purchase"],
         "timestamp": ["2024-03-01T10:00:00Z", "2024-03-02T11:00:00Z"]}
    )
    events.drop(columns=[drop] if drop else []).to_csv(root / "events.csv", index=False)
    return root


def test_ingest_prints_json_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vitrine_cli: Callable[..., tuple[int, str, str]]) -> None:
    source = tiny_source(tmp_path / "src")
    code, out, _ = vitrine_cli("ingest", "--source", str(source), "--data-dir", str(tmp_path / "data"), "--json")

    assert code == 0
    payload = json.loads(out)
    assert payload["tables"]["items"]["rejected"] == 1
    assert payload["tables"]["items"]["reasons"] == {"non_positive_price": 1}
    assert payload["tables"]["events"]["accepted"] == 2


def test_ingest_table_names_the_rejects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vitrine_cli: Callable[..., tuple[int, str, str]]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    source = tiny_source(tmp_path / "src")
    code, out, _ = vitrine_cli("ingest", "--source", str(source), "--data-dir", str(tmp_path / "data"))

    assert code == 0
    assert "non_positive_price 1" in out and "rejects" in out


def test_missing_column_exits_2_naming_file_and_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    vitrine_cli: Callable[..., tuple[int, str, str]],
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    source = tiny_source(tmp_path / "src", drop="timestamp")
    code, out, err = vitrine_cli("ingest", "--source", str(source), "--data-dir", str(tmp_path / "data"))

    assert code == 2
    assert "events.csv" in err and "'timestamp'" in err
    assert not (tmp_path / "data" / "shop" / "events").exists()


def test_data_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vitrine_cli: Callable[..., tuple[int, str, str]]) -> None:
    data = DataDir.resolve(tmp_path / "env-data")
    tiny_source(data.incoming)
    monkeypatch.setenv("VITRINE_DATA_DIR", str(data.root))
    code, _, _ = vitrine_cli("ingest", "--json")

    assert code == 0
    assert len(store.read_events(data)) == 2


def test_import_amazon_reviews_json(
    amazon_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    vitrine_cli: Callable[..., tuple[int, str, str]],
) -> None:
    code, out, _ = vitrine_cli("import", "amazon-reviews",
        "--reviews", str(amazon_sample / "Gift_Cards_5.json"), "--meta", str(amazon_sample / "meta_Gift_Cards.json"),
        "--images", str(amazon_sample / "images"), "--data-dir", str(tmp_path / "data"), "--json",
    )

    assert code == 0
    payload = json.loads(out)
    # What the committed sample holds (tests/data/make_giftcards_sample.py).
    assert payload["converted"]["purchases"] == 825
    assert payload["ingest"]["tables"]["items"]["accepted"] == 40
    assert payload["ingest"]["images"] == 24


def test_import_of_a_missing_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vitrine_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = vitrine_cli("import", "amazon-reviews", "--reviews", str(tmp_path / "nope.json"),
        "--meta", str(tmp_path / "meta.json"), "--data-dir", str(tmp_path / "data"),
    )
    assert code == 2 and "nope.json" in err


def test_generate_writes_and_ingests_a_tiny_shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vitrine_cli: Callable[..., tuple[int, str, str]]) -> None:
    data = DataDir.resolve(tmp_path / "data")
    # Leftovers of an earlier import in incoming/ must not be ingested with the new shop.
    data.incoming.mkdir(parents=True)
    (data.incoming / "events.parquet").write_bytes(b"stale")
    code, out, _ = vitrine_cli("generate", "--users", "60", "--items", "40", "--days", "3", "--seed", "7",
        "--data-dir", str(data.root), "--json",
    )

    assert code == 0, out
    payload = json.loads(out)
    tables = payload["ingest"]["tables"]
    assert tables["items"]["read"] == 40
    assert tables["events"]["read"] > 0 and tables["events"]["accepted"] == tables["events"]["read"]
    assert len(store.read_items(data)) == 40
    assert len(store.read_events(data)) == tables["events"]["accepted"]


def test_json_output_is_the_document_alone_whatever_else_prints(vitrine_cli, tmp_path, monkeypatch) -> None:
    """A stage that prints to stdout under --json (Feast's materialize does) cannot break `| jq`."""
    import functools
    import json

    import vitrine.shop.commands as commands

    real = commands.generate

    @functools.wraps(real)  # the same options: typer reads the wrapped signature
    def chatty(*args, **kwargs):
        print("Materializing 1 feature views ...")  # what a library writes to stdout
        return real(*args, **kwargs)

    monkeypatch.setattr(commands, "generate", chatty)
    code, out, err = vitrine_cli("generate", "--users", "30", "--items", "20", "--days", "3", "--data-dir", str(tmp_path / "data"), "--json")
    assert code == 0, err
    assert json.loads(out)["generate"]["users"] == 30 and "Materializing" in err


def test_ingest_live_prints_new_and_already_stored_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vitrine_cli: Callable[..., tuple[int, str, str]]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    data = DataDir.resolve(tmp_path / "data")
    assert vitrine_cli("ingest", "--source", str(tiny_source(tmp_path / "src")), "--data-dir", str(data.root))[0] == 0
    data.live_events.mkdir(parents=True)
    (data.live_events / "events-2024-03-01-7.csv").write_text(
        "user_id,item_id,event_type,timestamp,session_id,quantity,price\nu3,I1,click,2024-03-01T10:30:00.000000Z,,,\n"
    )

    code, out, _ = vitrine_cli("ingest", "--live", "--data-dir", str(data.root), "--json")
    again, table, _ = vitrine_cli("ingest", "--live", "--data-dir", str(data.root))

    assert code == 0 and again == 0
    payload = json.loads(out)
    assert (payload["merge"], payload["tables"]["events"]["new"], payload["tables"]["events"]["already_stored"]) == (True, 1, 0)
    assert payload["moved"] == [str(data.live / "ingested" / "events-2024-03-01-7.csv")]  # 2024-03-01 is long past
    assert "already stored" in table and "(merge)" in table
    assert sorted(store.read_events(data)["user_id"]) == ["u1", "u2", "u3"]


def test_ingest_live_with_a_source_exits_2(tmp_path: Path, vitrine_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = vitrine_cli("ingest", "--live", "--source", str(tmp_path), "--data-dir", str(tmp_path / "data"))

    assert code == 2 and "--live" in err
