"""The stage's CLI commands print JSON a script can use, and fail with the error tree's classes."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from embeddings import commands
from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder
from vitrine.cli import Groups
from vitrine.errors import ModelUnavailable
from vitrine.paths import DataDir


def _cli() -> typer.Typer:
    root = typer.Typer()
    groups = Groups(root=root, train=typer.Typer(), evaluate=typer.Typer(), features=typer.Typer(), pipeline=typer.Typer())
    root.add_typer(groups.train, name="train")
    root.add_typer(groups.evaluate, name="evaluate")
    commands.register(groups)
    return root


def _run(*args: str) -> dict:
    result = CliRunner().invoke(_cli(), list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_embed_search_similar_tag_and_evaluate_print_json(shop: DataDir, tiny_spec: DualEncoderSpec) -> None:
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


def test_embed_without_a_trained_encoder_says_what_to_run(shop: DataDir) -> None:
    with pytest.raises(ModelUnavailable, match="vitrine train encoder"):
        CliRunner().invoke(_cli(), ["embed", "--data-dir", str(shop.root)], catch_exceptions=False)


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


def test_search_table_prints_queries_with_brackets(shop: DataDir, tiny_spec: DualEncoderSpec) -> None:
    """The shopper's text is data, not rich markup: `[/bold]` in a query must not crash the table."""
    build_dual_encoder(tiny_spec, seed=0).save(shop.models / "encoder")
    _run("embed", "--data-dir", str(shop.root), "--json")
    result = CliRunner().invoke(_cli(), ["search", "wool scarf [/bold]", "--k", "2", "--data-dir", str(shop.root)])
    assert result.exit_code == 0, result.output
    assert "wool scarf [/bold]" in result.output
