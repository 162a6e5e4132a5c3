"""The stage's CLI commands print JSON a script can use, and fail with the error tree's classes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder
from tests.conftest import CliRunner
from vitrine.errors import ModelUnavailable
from vitrine.paths import DataDir


@pytest.fixture
def run_json(vitrine_cli: CliRunner) -> Callable[..., dict]:
    """`vitrine <args>` that must succeed; its stdout parsed as JSON."""

    def run(*args: str) -> dict:
        code, out, err = vitrine_cli(*args)
        assert code == 0, err
        return json.loads(out)

    return run


def test_embed_search_similar_tag_and_evaluate_print_json(shop: DataDir, tiny_spec: DualEncoderSpec, run_json: Callable[..., dict]) -> None:
    _run = run_json
    build_dual_encoder(tiny_spec, seed=0).save(shop.models / "encoder")
    where = ("--data-dir", str(shop.root), "--json")

    embedded = _run("embed", *where)
    assert embedded["items"] == 120 and embedded["dim"] == tiny_spec.projection_dim

    found = _run("search", "red wool scarf", "--k", "5", *where)
    assert len(found["results"]) == 5
    similar = _run("similar", "I00003", "--k", "3", *where)
    assert [r["item_id"] for r in similar["results"]] != [] and "I00003" not in [r["item_id"] for r in similar["results"]]

    tagged = _run("tag", *where)
    assert set(tagged["attributes"]) >= {"category", "colour"}
    assert 0.0 <= tagged["attributes"]["colour"]["accuracy"] <= 1.0

    figures = _run("evaluate", "encoder", *where)
    cross = figures["cross_modal"]
    assert cross["random_recall@10"] == pytest.approx(min(10, cross["items"]) / cross["items"], abs=1e-4)
    ablation = figures["fusion_ablation"]
    assert set(ablation["search_recall@10"]) == {"fused", "image_only", "text_only", "random"}
    assert {"category", "colour"} <= set(figures["zero_shot"])
    # Held-out items are tagged with the whole catalog's labels as choices, as `vitrine tag` writes them.
    from vitrine.shop.store import read_items

    colours = read_items(shop)["colour"].dropna().nunique()
    assert tagged["attributes"]["colour"]["labels"] == figures["zero_shot"]["colour"]["labels"] == colours


def test_embed_without_a_trained_encoder_says_what_to_run(shop: DataDir, vitrine_cli: CliRunner) -> None:
    code, _, err = vitrine_cli("embed", "--data-dir", str(shop.root))
    assert code == ModelUnavailable.exit_code and "vitrine train encoder" in err


def test_held_out_tag_accuracy_chooses_among_the_whole_catalogs_labels(shop: DataDir, tiny_spec: DualEncoderSpec) -> None:
    """Test items that all share one colour still get scored against every colour the catalog uses."""
    from embeddings.catalog import split_of
    from embeddings.tag import tag
    from vitrine.shop.store import read_items, write_items

    items = read_items(shop)
    held_out = items["item_id"].map(split_of) == "test"
    items.loc[held_out, "colour"] = "red"
    write_items(shop, items)
    build_dual_encoder(tiny_spec, seed=0).save(shop.models / "encoder")

    report = tag(shop)

    assert report["attributes"]["colour"]["labels"] == items["colour"].dropna().nunique() > 1


def test_search_table_prints_queries_with_brackets(
    shop: DataDir, tiny_spec: DualEncoderSpec, run_json: Callable[..., dict], vitrine_cli: CliRunner
) -> None:
    """The shopper's text is data, not rich markup: `[/bold]` in a query must not crash the table."""
    build_dual_encoder(tiny_spec, seed=0).save(shop.models / "encoder")
    run_json("embed", "--data-dir", str(shop.root), "--json")
    code, out, err = vitrine_cli("search", "wool scarf [/bold]", "--k", "2", "--data-dir", str(shop.root))
    assert code == 0, err
    assert "wool scarf [/bold]" in out
