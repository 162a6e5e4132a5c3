"""CLI commands of this stage, named in `vitrine.cli`, which imports them when they run.

    vitrine train encoder [--base HUB_ID_OR_DIR] [--epochs N] [--freeze-text/--train-text] [--freeze-vision] [--json]
    vitrine embed [--model DIR|HUB_ID|registry|models:/...] [--image-weight W] [--json]
    vitrine tag [--model ...] [--json]
    vitrine search "red leather handbag" [--k 10] [--json]
    vitrine similar ITEM_ID [--k 10] [--json]
    vitrine evaluate encoder [--model ...] [--json]
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vitrine.options import DataDirOption, JsonOption, data_dir, print_json

out = Console()

ModelOption = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        help="Encoder: a folder, a cached hub id, 'registry' (vitrine-encoder@champion) or a models:/ URI. "
        "Default: data/models/encoder.",
    ),
]
KOption = Annotated[int, typer.Option("--k", min=1, max=1000, help="How many items to return.")]


def _print_hits(title: str, hits: list[tuple[str, float]]) -> None:
    # The title holds the shopper's text and cells hold catalog ids: data, escaped so `[` is not rich markup.
    table = Table(title=escape(title))
    table.add_column("rank", justify="right")
    table.add_column("item_id")
    table.add_column("score", justify="right")
    for rank, (item_id, score) in enumerate(hits, 1):
        table.add_row(str(rank), escape(item_id), f"{score:.3f}")
    out.print(table)


def train_encoder_command(
    base: Annotated[
        Optional[str], typer.Option("--base", help="CLIP hub id (cached) or folder to fine-tune; default: build the MiniLM + ViT dual encoder.")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Most epochs (early stopping may end sooner).")] = None,
    freeze_text: Annotated[
        Optional[bool], typer.Option("--freeze-text/--train-text", help="Freeze the text tower (default: frozen for the default encoder, trained for a CLIP base).")
    ] = None,
    freeze_vision: Annotated[bool, typer.Option("--freeze-vision/--train-vision", help="Freeze the vision tower.")] = False,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log to MLflow and register vitrine-encoder.")] = True,
    max_items: Annotated[
        Optional[int], typer.Option("--max-items", min=1, help="Train on a fixed sample of at most N items (large catalogs); default all.")
    ] = None,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the item encoder contrastively on the shop's image-caption pairs and register it."""
    from dataclasses import replace

    from embeddings.train_encoder import TrainEncoderConfig, train_encoder

    config = TrainEncoderConfig(base=base, freeze_text=freeze_text, freeze_vision=freeze_vision, track=track, max_items=max_items)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    result = train_encoder(data_dir(data_dir_option), config, progress=True)
    if as_json:
        print_json(result)
        return
    test = result["test"]["cross_modal"]
    out.print(
        f"encoder {result['model_version']} saved to {result['model_dir']} in {result['train_seconds']} s "
        f"({result['epochs_run']} epochs, best {result['best_epoch']}); image weight {result['image_weight']}"
    )
    out.print(
        f"held-out i->t recall@10 {test['image_to_text_recall@10']}, t->i {test['text_to_image_recall@10']} "
        f"(random {test['random_recall@10']})"
    )
    if "mlflow" in result:
        out.print(f"registered {result['mlflow']['registered_model']} v{result['mlflow']['version']} @champion")


def embed_command(
    model: ModelOption = None,
    image_weight: Annotated[
        Optional[float], typer.Option("--image-weight", min=0.0, max=1.0, help="Image share of the fused vector (default: chosen in training).")
    ] = None,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write one fused, normalised vector per item to data/embeddings/item_embeddings.parquet."""
    from embeddings.encode import embed

    result = embed(data_dir(data_dir_option), model, image_weight, progress=not as_json)
    if as_json:
        print_json(result)
        return
    images = result["images"]
    out.print(
        f"{result['items']} items embedded ({result['with_image']} with image, {result['text_only']} text only; "
        f"{images['missing']} missing and {images['corrupt']} corrupt images) -> {result['path']}"
    )
    out.print(f"{result['encoded']} encoded, {result['reused']} reused unchanged, {result['removed']} removed ({result['mode']})")
    out.print(f"model {result['model_version']}, dim {result['dim']}, {result['items_per_second']} items/s")
    if result["replaced_version"]:
        out.print(f"replaced vectors of model {result['replaced_version']}")


def tag_command(model: ModelOption = None, data_dir_option: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Zero-shot category and attribute tags from images; accuracy on held-out items vs catalog labels."""
    from embeddings.tag import tag

    result = tag(data_dir(data_dir_option), model)
    if as_json:
        print_json(result)
        return
    table = Table(title=f"zero-shot tagging, {result['held_out_items']} held-out items")
    for column in ("attribute", "accuracy", "majority", "random", "items", "labels"):
        table.add_column(column)
    for name, figures in result["attributes"].items():
        table.add_row(name, str(figures["accuracy"]), str(figures["majority_baseline"]), str(figures["random_baseline"]),
                      str(figures["items"]), str(figures["labels"]))
    out.print(table)
    out.print(f"tags for {result['tagged_items']} items -> {result['tags_path']}")


def search_command(
    text: Annotated[str, typer.Argument(help="What the shopper typed, e.g. 'red leather handbag'.")],
    k: KOption = 10,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Items whose vectors best match a text query."""
    from embeddings.search import ProductSearch

    hits = ProductSearch.load(data_dir(data_dir_option)).search(text, k)
    if as_json:
        print_json({"query": text, "results": [{"item_id": i, "score": s} for i, s in hits]})
        return
    _print_hits(f"search: {text}", hits)


def similar_command(
    item_id: Annotated[str, typer.Argument(help="A catalog item_id.")],
    k: KOption = 10,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Items most similar to an item (fused image + text vector)."""
    from embeddings.search import ProductSearch

    hits = ProductSearch.load(data_dir(data_dir_option)).similar(item_id, k)
    if as_json:
        print_json({"item_id": item_id, "results": [{"item_id": i, "score": s} for i, s in hits]})
        return
    _print_hits(f"similar to {item_id}", hits)


def evaluate_encoder_command(
    model: ModelOption = None,
    image_weight: Annotated[Optional[float], typer.Option("--image-weight", min=0.0, max=1.0)] = None,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Held-out cross-modal recall@10 vs random, fused-vector ablations, zero-shot accuracy."""
    from embeddings.evaluate import evaluate_encoder

    result = evaluate_encoder(data_dir(data_dir_option), model, image_weight)
    if as_json:
        print_json(result)
        return
    out.print_json(data=result, default=str)

