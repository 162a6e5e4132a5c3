"""Dependencies run one way, from the bottom: core <- embeddings <- feature_repo <- ranking <- training <- CLI.

Every import counts: module level, inside functions and under `TYPE_CHECKING`, because each of them
is a place where a lower stage would need a higher one (serving loading the trainers, say).
`vitrine.cli` sits on top and names the stages' commands as strings, so it imports none of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first; a module may import its own layer and the ones below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vitrine",),  # core: paths, errors, options, tracking, the shop contract and generator
    ("embeddings",),
    ("feature_repo",),
    ("ranking",),  # the models shared by training and serving, and the online path
    ("training",),
    ("vitrine.cli",),
)
PACKAGES = ("vitrine", "embeddings", "feature_repo", "ranking", "training")


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name (the longest matching prefix wins), None outside the project."""
    best: tuple[int, int] | None = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return None if best is None else best[0]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, wherever it stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from pkg import module` imports pkg.module
                yield f"{base}.{alias.name}", node.lineno


def project_imports() -> list[tuple[str, str, int]]:
    """(importer, imported project module, line)."""
    modules = project_modules()
    found = []
    for module, path in modules.items():
        for target, line in imports_of(module, path):
            if target in modules and target != module:
                found.append((module, target, line))
    return found


def test_no_import_runs_against_the_direction() -> None:
    wrong = [
        f"{importer}:{line} imports {target} (layer {layer_of(target)} above {layer_of(importer)})"
        for importer, target, line in project_imports()
        if (layer_of(target) or 0) > (layer_of(importer) or 0)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circles() -> None:
    graph = nx.DiGraph((importer, target) for importer, target, _ in project_imports())
    circles = [sorted(component) for component in nx.strongly_connected_components(graph) if len(component) > 1]
    assert not circles, circles


def test_the_cli_knows_the_stages_by_name_only() -> None:
    from vitrine import cli

    imported = {target for importer, target, _ in project_imports() if importer == "vitrine.cli"}
    assert imported <= {"vitrine.errors", "vitrine.options"}, imported  # the error tree and the --json stream
    # Every name it maps resolves to a function of a stage's commands module.
    pending = list(cli.COMMANDS.items())
    while pending:
        name, entry = pending.pop()
        if isinstance(entry, cli.Group):
            pending.extend(entry.commands.items())
            continue
        module, _, function = entry.partition(":")
        assert module.endswith("commands"), (name, entry)
        assert callable(getattr(__import__(module, fromlist=[function]), function)), (name, entry)


@pytest.mark.parametrize(
    "module, expected",
    [("vitrine.paths", 0), ("vitrine.cli", 5), ("feature_repo.plugins.sqlite_online_store", 2), ("training.pipeline", 4), ("json", None)],
)
def test_layer_of(module: str, expected: int | None) -> None:
    assert layer_of(module) == expected
