"""recommend(): ranking, cold start, filters, padding, bad input, batch path, hot swaps and Redis outages."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ranking.artifact_check import write_manifest
from ranking.model_watcher import ModelWatcher, ServingState
from ranking.recommender import MAX_CATEGORY_LENGTH, MAX_K, Purchases, Recommender, check_category, check_id
from tests.servers import free_port, start_redis
from tests.shops import register_dir
from vitrine.errors import InvalidInput
from vitrine.paths import DataDir


@pytest.fixture(scope="module")
def data(served: DataDir) -> DataDir:
    return served


@pytest.fixture(scope="module")
def recommender(data: DataDir) -> Recommender:
    return Recommender.from_data(data)


@pytest.fixture(scope="module")
def events(data: DataDir) -> pd.DataFrame:
    from vitrine.shop.store import read_events

    return read_events(data)


@pytest.fixture(scope="module")
def known_users(recommender: Recommender, events: pd.DataFrame) -> list[str]:
    """Users with fresh features, most active first."""
    assert recommender.users is not None
    ids = events["user_id"].value_counts().index.tolist()[:60]
    rows = recommender.users.read(ids)
    return [u for u, row in zip(ids, rows) if row is not None]


def catalog(data: DataDir) -> pd.DataFrame:
    from vitrine.shop.store import read_items

    return read_items(data)


def test_known_user_gets_k_ranked_explained_items(recommender: Recommender, known_users: list[str], data: DataDir) -> None:
    result = recommender.recommend(known_users[0], k=10)
    assert len(result) == 10 and not result.cold_start and not result.degraded
    ids = [r.item_id for r in result]
    assert len(set(ids)) == 10 and set(ids) <= set(catalog(data)["item_id"])
    scores = [r.score for r in result]
    assert scores == sorted(scores, reverse=True)
    ranked = [r for r in result if r.source == "ranked"]
    assert ranked, "a known user must get retrieved-and-ranked items"
    assert all(r.retriever_score is not None and r.reasons for r in ranked)
    assert all(reason.feature in recommender.bundle.reranker.feature_names for r in ranked for reason in r.reasons)
    assert set(result.versions) == {"retriever", "ranker", "items"}
    assert set(result.timings_ms) == {"features", "retrieve", "rank_features", "score", "filter"}


def test_unknown_user_gets_the_cold_start_list(recommender: Recommender) -> None:
    result = recommender.recommend("U-never-seen", k=8)
    assert result.cold_start and not result.degraded
    items = recommender.bundle.items
    expected = [str(items.table.item_ids[row]) for row in items.cold_start_rows()[:8]]
    assert [r.item_id for r in result] == expected
    assert all(r.source == "popular" and r.retriever_score is None for r in result)


def test_category_filter_holds_for_known_and_cold_users(recommender: Recommender, known_users: list[str], data: DataDir) -> None:
    items = catalog(data)
    category = items["category"].value_counts().index[0]
    in_category = set(items.loc[items["category"] == category, "item_id"])
    for user in (known_users[0], "U-never-seen"):
        result = recommender.recommend(user, k=5, category=category)
        assert len(result) == 5
        assert {r.item_id for r in result} <= in_category


def test_purchased_items_are_excluded_only_when_asked(recommender: Recommender, events: pd.DataFrame) -> None:
    buys = events[events["event_type"] == "purchase"]
    user = buys["user_id"].value_counts().index[0]
    bought = set(buys.loc[buys["user_id"] == user, "item_id"])
    assert bought <= recommender.purchases.of(user)
    everything = recommender.recommend(user, k=MAX_K, exclude_purchased=True)
    assert not bought & {r.item_id for r in everything}
    with_bought = recommender.recommend(user, k=MAX_K, exclude_purchased=False)
    assert bought <= {r.item_id for r in with_bought}  # k covers the whole catalog


def test_the_ranker_sees_exactly_the_shortlist_it_was_trained_on(
    recommender: Recommender, events: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search widens by the purchase count; the leftovers must not reach the ranker at rank >= n."""
    import ranking.recommender as module
    from ranking.ranker_features import FEATURE_NAMES

    seen: list[np.ndarray] = []
    original = module.build_features

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        matrix = original(*args, **kwargs)
        seen.append(matrix[:, FEATURE_NAMES.index("retriever_rank")])
        return matrix

    monkeypatch.setattr(module, "build_features", spy)
    buys = events[events["event_type"] == "purchase"]
    buyer = buys["user_id"].value_counts().index[0]
    assert recommender.purchases.of(buyer)
    # Fewer candidates than the test catalog has items, so that the purchase slack is real.
    narrow = Recommender(recommender.bundle, recommender.users, recommender.purchases, candidates=30)
    for exclude in (True, False):
        narrow.recommend(buyer, k=10, exclude_purchased=exclude)
        assert np.array_equal(np.sort(seen.pop()), np.arange(30))


def test_never_fewer_than_k_when_the_catalog_has_them(data: DataDir, recommender: Recommender, known_users: list[str]) -> None:
    few = Recommender(recommender.bundle, recommender.users, recommender.purchases, candidates=3)
    result = few.recommend(known_users[0], k=40)
    assert len(result) == 40 and len({r.item_id for r in result}) == 40
    sources = [r.source for r in result]
    assert sources[:3] == ["ranked"] * 3 and set(sources[3:]) == {"popular"}
    scores = [r.score for r in result]
    assert scores == sorted(scores, reverse=True)
    n_items = len(catalog(data))
    assert len(recommender.recommend(known_users[0], k=MAX_K, exclude_purchased=False)) == min(MAX_K, n_items)


def test_ann_padding_never_leaks(recommender: Recommender, known_users: list[str], data: DataDir) -> None:
    # More candidates than the index holds: FAISS pads with -1, which must not come out as an item.
    wide = Recommender(recommender.bundle, recommender.users, recommender.purchases, candidates=10_000)
    ids = {r.item_id for r in wide.recommend(known_users[1], k=MAX_K, exclude_purchased=False)}
    assert "-1" not in ids and ids <= set(catalog(data)["item_id"])


@pytest.mark.parametrize("bad", ["", "a" * 65, "../../etc/passwd", "U 1", "U1\r\nFLUSHALL", "-U1", "U1*", "ü1"])
def test_malformed_ids_are_refused_before_any_lookup(recommender: Recommender, bad: str) -> None:
    with pytest.raises(InvalidInput, match="user_id"):
        recommender.recommend(bad)


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1])
def test_k_out_of_range_is_refused(recommender: Recommender, k: int) -> None:
    with pytest.raises(InvalidInput, match="k: must be an integer from 1"):
        recommender.recommend("U1", k=k)


def test_batch_goes_through_the_same_path(recommender: Recommender, known_users: list[str]) -> None:
    users = known_users[:5] + ["U-new-1"]
    batch = recommender.recommend_batch(users, k=7)
    for user, listed in zip(users, batch):
        single = recommender.recommend(user, k=7, explain=False)
        assert [r.item_id for r in listed] == [r.item_id for r in single]
        assert listed.cold_start == single.cold_start
        np.testing.assert_allclose([r.score for r in listed], [r.score for r in single], rtol=1e-5)


def test_swap_during_traffic_fails_no_request(recommender: Recommender, known_users: list[str]) -> None:
    old = recommender.bundle
    errors: list[BaseException] = []
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            try:
                assert len(recommender.recommend(known_users[2], k=5)) == 5
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for worker in workers:
        worker.start()
    for _ in range(30):
        recommender.swap(old)
        time.sleep(0.005)
    done.set()
    for worker in workers:
        worker.join()
    assert errors == []


@pytest.fixture
def registry_copy(data: DataDir, tmp_path: Path) -> DataDir:
    """A copy of the served shop whose registry the test may move."""
    shutil.copytree(data.root, tmp_path / "data", ignore=shutil.ignore_patterns("*.partial"))
    return DataDir.resolve(tmp_path / "data")


def download(data: DataDir, name: str, into: Path) -> Path:
    import mlflow

    from vitrine.tracking import configure

    configure(data)
    version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(into)))


def test_watcher_refuses_broken_champions_and_takes_good_ones(registry_copy: DataDir, tmp_path: Path) -> None:
    import faiss
    import mlflow

    from feature_repo.store import open_store

    data = registry_copy
    state = ServingState()
    watcher = ModelWatcher(data, open_store(data), state)
    assert watcher.poll_once() and state.recommender is not None
    serving = dict(state.recommender.bundle.versions)

    # Each broken model below is sealed by a manifest, as its (buggy) saver would have written it: the
    # checks of a load, not the manifest's, must refuse it (tests/reliability/test_artifacts.py tampers).
    # A ranker whose feature list is the right one in another order.
    ranker_dir = download(data, "vitrine-ranker", tmp_path / "ranker")
    meta = json.loads((ranker_dir / "ranker.json").read_text())
    meta["feature_names"] = meta["feature_names"][::-1]
    (ranker_dir / "ranker.json").write_text(json.dumps(meta))
    write_manifest(ranker_dir)
    bad_ranker = register_dir(data, "vitrine-ranker", ranker_dir)
    assert not watcher.poll_once()
    assert state.recommender.bundle.versions == serving
    assert f"vitrine-ranker v{bad_ranker}" in (state.last_error or "") and "order" in (state.last_error or "")
    assert len(state.recommender.recommend("U-watch", k=3)) == 3  # the old bundle keeps serving
    client = mlflow.MlflowClient()
    first_ranker = serving["ranker"].split("/")[-1]
    client.set_registered_model_alias("vitrine-ranker", "champion", first_ranker)

    # A retriever whose weights file was truncated.
    truncated = download(data, "vitrine-retriever", tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    write_manifest(truncated)
    bad_retriever = register_dir(data, "vitrine-retriever", truncated)
    assert not watcher.poll_once()
    assert state.recommender.bundle.versions == serving
    assert f"vitrine-retriever v{bad_retriever}" in (state.last_error or "") and "safetensor" in (state.last_error or "").lower()

    # A retriever whose index holds vectors of another dimension than its user tower.
    wrong_dim = download_version(data, "vitrine-retriever", serving["retriever"], tmp_path / "wrong-dim")
    index = faiss.read_index(str(wrong_dim / "index.faiss"))
    other = faiss.IndexFlatIP(index.d + 3)
    other.add(np.random.default_rng(0).normal(size=(index.ntotal, index.d + 3)).astype(np.float32))
    faiss.write_index(other, str(wrong_dim / "index.faiss"))
    write_manifest(wrong_dim)
    register_dir(data, "vitrine-retriever", wrong_dim)
    assert not watcher.poll_once()
    assert state.recommender.bundle.versions == serving and "-d vectors" in (state.last_error or "")

    # Healthy champions again: the retriever alias moves back, a good ranker version arrives.
    client.set_registered_model_alias("vitrine-retriever", "champion", serving["retriever"])
    healthy = register_dir(data, "vitrine-ranker", download_version(data, "vitrine-ranker", first_ranker, tmp_path / "healthy"))
    assert watcher.poll_once()
    assert state.last_error is None
    assert state.recommender.bundle.versions["ranker"].endswith(f"/{healthy}")
    assert state.recommender.bundle.versions["retriever"] == serving["retriever"]


def test_item_table_equals_feast_and_follows_materialization(registry_copy: DataDir) -> None:
    from datetime import datetime, timedelta, timezone

    from feature_repo import store as feature_store
    from ranking.ranker_features import ITEM_NUMERIC_COLUMNS

    data = registry_copy
    store = feature_store.open_store(data)
    state = ServingState()
    watcher = ModelWatcher(data, store, state)
    assert watcher.poll_once() and state.recommender is not None
    items = state.recommender.bundle.items
    sample = [str(i) for i in items.table.item_ids[:15]]
    columns = [c for c in ITEM_NUMERIC_COLUMNS if c in {f.name for f in store.get_feature_view("item_stats").features}]
    feast = store.get_online_features(features=[f"item_stats:{c}" for c in columns], entity_rows=[{"item_id": i} for i in sample]).to_dict()
    for n, item in enumerate(sample):
        row = items.table.rows[item]
        for column in columns:
            ours = items.table.numeric[row, ITEM_NUMERIC_COLUMNS.index(column)]
            theirs = feast[column][n]
            assert (np.isnan(ours) and theirs is None) or np.isclose(ours, theirs, rtol=1e-6), (item, column)
    assert not watcher.poll_once()  # nothing changed: no reload
    before = state.recommender.bundle
    now = datetime.now(timezone.utc)
    feature_store.materialize(data, now - timedelta(days=90), now, views=["item_stats"])
    assert watcher.poll_once()
    after = state.recommender.bundle
    assert after.items.version != before.items.version
    assert after.retriever is before.retriever and after.reranker is before.reranker  # only the table was rebuilt


def download_version(data: DataDir, name: str, version: str, into: Path) -> Path:
    import mlflow

    source = mlflow.MlflowClient().get_model_version(name, version).source
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into)))


def test_redis_outage_degrades_and_recovers_without_restart(data: DataDir, tmp_path: Path, known_users: list[str], monkeypatch) -> None:
    from feature_repo import store as feature_store

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    start_redis(port, tmp_path)
    try:
        monkeypatch.setenv("VITRINE_REDIS", f"127.0.0.1:{port}")
        copy = DataDir.resolve(tmp_path / "data")
        shutil.copytree(data.root, copy.root)
        feature_store.apply(copy, online="redis")
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        feature_store.materialize(copy, now - pd.Timedelta(days=90), now, online="redis")
        live = Recommender.from_data(copy, online="redis")
        user = known_users[0]
        assert not live.recommend(user, k=5).cold_start
        # The pipelined reader decodes the project's Redis store exactly as Feast's SDK does.
        assert live.users is not None
        store = feature_store.open_store(copy, online="redis")
        refs = [f"{view.name}:{name}" for view in live.users.views for name in view.features]
        theirs = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in known_users[:5]]).to_dict()
        for n, ours in enumerate(live.users.read(known_users[:5])):
            assert ours is not None
            assert ours == {name: theirs[name][n] for name in ours}
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)
        started = time.perf_counter()
        down = live.recommend(user, k=5)
        assert down.degraded and len(down) == 5
        assert time.perf_counter() - started < 0.5
        start_redis(port, tmp_path)
        feature_store.materialize(copy, now - pd.Timedelta(days=90), now, online="redis")
        time.sleep(1.1)  # the breaker's REDIS_RETRY_AFTER_S
        back = live.recommend(user, k=5)
        assert not back.degraded and not back.cold_start
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)


def test_check_id_accepts_real_ids() -> None:
    for good in ("U000042", "A1B2C3D4E5", "user-1_2.3:4"):
        assert check_id(good) == good
    assert Purchases({}).of("U1") == frozenset()


def test_ids_and_categories_with_control_characters_are_refused_even_at_the_end() -> None:
    """A trailing newline passes `re.match(...$)`: the checks match the whole value, as the API schema's patterns do."""
    for bad in ("U1\n", "U1\x00", "-U1"):
        with pytest.raises(InvalidInput):
            check_id(bad)
    assert check_category("Toys & Games") == "Toys & Games"
    for bad in ("Toys\n", "To\x06ys", "", "x" * (MAX_CATEGORY_LENGTH + 1)):
        with pytest.raises(InvalidInput):
            check_category(bad)


def test_users_file_rows_without_an_id_are_refused_not_skipped(tmp_path: Path) -> None:
    from ranking.batch import read_user_file

    good = tmp_path / "users.csv"
    good.write_text("user_id\nU1\nU2\n")
    assert read_user_file(good) == ["U1", "U2"]
    holes = tmp_path / "holes.parquet"
    pd.DataFrame({"user_id": ["U1", None, "U3"]}).to_parquet(holes)
    with pytest.raises(InvalidInput, match=r"1 rows without a user_id \(rows \[2\]"):
        read_user_file(holes)


def test_batch_file_has_k_rows_per_user_and_a_strict_json_summary(recommender: Recommender, known_users: list[str], tmp_path: Path) -> None:
    from ranking.batch import recommend_to_file

    users = [*known_users[:2], "U-never-seen"]
    summary = recommend_to_file(recommender, users, 4, tmp_path / "recs.parquet")
    json.dumps(summary, allow_nan=False)  # `--json` output must be valid JSON (no Infinity)
    rows = pd.read_parquet(tmp_path / "recs.parquet")
    assert summary["rows"] == len(rows) == 12 and rows.groupby("user_id")["rank"].max().tolist() == [4, 4, 4]


def test_batch_in_two_processes_writes_what_one_process_writes(data: DataDir, known_users: list[str], tmp_path: Path) -> None:
    from ranking.batch import recommend_users_to_file

    users = [*known_users[:7], "U-never-seen"]
    one = recommend_users_to_file(data, users, 5, tmp_path / "one.parquet", processes=1)
    two = recommend_users_to_file(data, users, 5, tmp_path / "two.parquet", processes=2)
    assert two["processes"] == 2 and one["versions"] == two["versions"]
    expected, got = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "two.parquet")
    assert got["user_id"].drop_duplicates().tolist() == users  # input order kept across shards
    # Scores are float32 products whose BLAS blocking depends on how many users a process scores at
    # once: 0.0017454922 vs 0.0017455518 was seen on one machine. Equal to 1e-4 relative, lists exact.
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-4, atol=1e-6)
    assert not list(tmp_path.glob("vitrine-batch-*"))  # shard parts cleaned up


def test_recommend_users_command_writes_the_file_and_prints_json(
    data: DataDir, known_users: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from vitrine import cli

    users = tmp_path / "users.txt"
    users.write_text("\n".join(known_users[:3]) + "\n")
    out = tmp_path / "recs.parquet"
    argv = ["vitrine", "recommend", "--users", str(users), "--out", str(out), "--k", "3", "--processes", "1", "--json", "--data-dir", str(data.root)]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        cli.main()
    except SystemExit as exc:  # main() maps errors to exit codes; success returns or exits 0
        assert not exc.code
    summary = json.loads(capsys.readouterr().out)
    assert summary["users"] == 3 and summary["rows"] == 9 == len(pd.read_parquet(out))


@pytest.fixture(scope="module")
def replayed() -> tuple[DataDir, datetime]:
    """A shop whose features end REPLAY_SHIFT_DAYS ago (older than the ttl), and the moment to replay."""
    from tests.shops import replayed_shop

    return replayed_shop()


@pytest.fixture(scope="module")
def active_replayed_users(replayed) -> list[str]:
    from vitrine.shop.store import read_events

    data, _ = replayed
    return [str(u) for u in read_events(data)["user_id"].value_counts().index[:5]]


def test_replaying_the_last_day_with_as_of_personalises_what_now_serves_stale_and_flagged(replayed, active_replayed_users: list[str]) -> None:
    from ranking.ranker_features import ITEM_NUMERIC_COLUMNS

    data, end = replayed
    user = active_replayed_users[0]
    now = Recommender.from_data(data)
    stale = now.recommend(user, k=5)
    assert stale.cold_start and stale.degraded and len(stale) == 5
    assert stale.reason and "user_stats" in stale.reason and "vitrine features materialize" in stale.reason and "--as-of" in stale.reason
    assert {view.view for view in now.stale_views()} == {"user_stats", "user_recent_items", "item_stats"}  # item vectors have no ttl
    assert all(view.age_s is not None and view.age_s > view.ttl_s for view in now.stale_views())

    replay = Recommender.from_data(data, as_of=end)
    assert replay.stale_views() == ()
    for user in active_replayed_users:
        result = replay.recommend(user, k=5)
        assert not result.cold_start and not result.degraded and result.reason is None
        assert result[0].source == "ranked" and result[0].reasons
    # The item table is judged at the same moment: its stats are there in the replay, gone now.
    views = ITEM_NUMERIC_COLUMNS.index("views_30d")
    assert np.isfinite(replay.bundle.items.table.numeric[:, views]).any()
    assert not np.isfinite(now.bundle.items.table.numeric[:, views]).any()


def test_batch_replays_as_of_in_every_process_and_flags_stale_rows_without_it(replayed, active_replayed_users: list[str], tmp_path: Path) -> None:
    from ranking.batch import recommend_to_file, recommend_users_to_file

    data, end = replayed
    users = active_replayed_users[:4]
    summary = recommend_users_to_file(data, users, 3, tmp_path / "replay.parquet", processes=2, as_of=end)
    rows = pd.read_parquet(tmp_path / "replay.parquet")
    assert summary["processes"] == 2 and summary["stale_features"] == [] and summary["as_of"] == end.isoformat()
    assert not rows["cold_start"].any() and not rows["degraded"].any() and rows["reason"].isna().all()

    stale = recommend_to_file(Recommender.from_data(data), users, 3, tmp_path / "stale.parquet")
    rows = pd.read_parquet(tmp_path / "stale.parquet")
    assert {view["view"] for view in stale["stale_features"]} >= {"user_stats", "user_recent_items"}
    assert rows["cold_start"].all() and rows["degraded"].all() and rows["reason"].str.contains("user_stats").all()


def test_recommend_command_warns_on_stale_features_and_replays_with_as_of(
    replayed, active_replayed_users: list[str], monkeypatch: pytest.MonkeyPatch, vitrine_cli: Callable[..., tuple[int, str, str]]
) -> None:
    data, end = replayed
    user = active_replayed_users[0]
    monkeypatch.delenv("VITRINE_AS_OF", raising=False)
    code, out, err = vitrine_cli("recommend", user, "--k", "3", "--json", "--data-dir", str(data.root))
    assert code == 0, err
    [body] = json.loads(out)
    assert body["degraded"] and body["cold_start"] and "user_stats" in body["reason"]
    assert "warning" in err and "user_stats" in err and "vitrine features materialize" in err and "--as-of" in err

    code, out, err = vitrine_cli("recommend", user, "--k", "3", "--data-dir", str(data.root))
    assert code == 0 and "degraded" in out and "vitrine features materialize" in err  # the table says it too

    # The replay: --as-of, or VITRINE_AS_OF, naive ISO read as UTC.
    naive = end.replace(tzinfo=None).isoformat()
    code, out, err = vitrine_cli("recommend", user, "--k", "3", "--json", "--as-of", naive, "--data-dir", str(data.root))
    assert code == 0 and "warning" not in err
    [body] = json.loads(out)
    assert not body["degraded"] and not body["cold_start"] and body["reason"] is None
    monkeypatch.setenv("VITRINE_AS_OF", naive)
    code, out, err = vitrine_cli("recommend", user, "--k", "3", "--json", "--data-dir", str(data.root))
    assert code == 0 and "warning" not in err and not json.loads(out)[0]["cold_start"]

    code, _, err = vitrine_cli("recommend", user, "--as-of", "last tuesday", "--data-dir", str(data.root))
    assert code == 2 and "--as-of" in err and "ISO 8601" in err
