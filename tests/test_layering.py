"""The import graph of sanasr_cli/ keeps the layering written in docs/architecture.md: no import circle between
modules (lazy imports inside functions count; `if TYPE_CHECKING:` blocks do not), a module imports only its own
package and the layers below it, and no command module of cli/ imports another one."""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "sanasr_cli"
CLI_HELPERS = {"__init__", "common", "options", "prompt_options"}  # cli/ modules that are not commands


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every import node, at any depth (functions included), except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same top-level package it imports (`from pkg import submodule` is an
    import of the submodule)."""
    top = root.name
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == top}
            elif node.module and node.level == 0 and node.module.split(".")[0] == top:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                targets |= subs or {node.module}
        graph[name] = targets - {name}
    return graph


def documented_layers(architecture: Path) -> list[set[str]]:
    """The layers of the fenced block that starts with 'layers' in docs/architecture.md, bottom first: one
    line each, the top-level modules or sub-packages of sanasr_cli on it separated by spaces (`#` comments)."""
    block = re.search(r"^```text\nlayers[^\n]*\n(.*?)^```", architecture.read_text(), re.S | re.M)
    assert block, f"no ```text block starting with 'layers' in {architecture}"
    lines = [line.split("#")[0].split() for line in block.group(1).splitlines()]
    return [set(words) for words in lines if words]


def is_command(module: str) -> bool:
    """A command module of cli/ (not the app in cli/__init__.py, not a shared helper)."""
    parts = module.split(".")
    return len(parts) == 3 and parts[1] == "cli" and parts[2] not in CLI_HELPERS


def layering_problems(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """Each import circle, each import of a higher layer (or of an unlisted part), each command-to-command import."""
    problems = []
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        problems.append("import circle: " + " -> ".join(e.args[1]))
    floor = {part: i for i, layer in enumerate(layers) for part in layer}

    def part(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = part(module), part(target)
            if a not in floor or b not in floor:
                problems.append(f"{module} -> {target}: {a if a not in floor else b} is in no layer")
            elif a != b and floor[b] > floor[a]:
                problems.append(f"{module} -> {target}: {a} (layer {floor[a]}) imports {b} (layer {floor[b]})")
            if is_command(module) and is_command(target):
                problems.append(f"{module} -> {target}: a command module imports another (shared code: cli/common.py)")
    return problems


def test_sanasr_cli_keeps_the_documented_layering():
    graph = import_graph(PACKAGE)
    layers = documented_layers(REPO_ROOT / "docs" / "architecture.md")
    assert len(graph) >= 75 and sum(map(len, graph.values())) > 200  # the real package was read
    problems = layering_problems(graph, layers)
    assert not problems, "\n".join(problems)
    listed = set().union(*layers)
    assert {m.split(".")[1] for m in graph if "." in m} <= listed  # every sub-package has its layer


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "sanasr_cli"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


LAYERS = [{"sanasr_cli", "errors"}, {"data"}, {"models"}, {"cli"}]


def test_a_planted_circle_fails_also_through_a_lazy_import(tmp_path):
    root = _package(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/a.py": "from sanasr_cli.models.b import f\n",
            "models/b.py": "def f():\n    from sanasr_cli.models import a\n",
            "data/__init__.py": "import typing\nif typing.TYPE_CHECKING:\n    from sanasr_cli.models import a\n",
        },
    )
    problems = layering_problems(import_graph(root), LAYERS)
    assert len(problems) == 1 and problems[0].startswith("import circle: sanasr_cli.models.")
    assert "sanasr_cli.models.a" in problems[0] and "sanasr_cli.models.b" in problems[0]


def test_an_import_of_a_higher_layer_and_between_commands_fails(tmp_path):
    root = _package(
        tmp_path,
        {
            "data/io.py": "import sanasr_cli.models.vae\n",
            "models/vae.py": "from sanasr_cli.errors import E\n",
            "errors.py": "",
            "cli/__init__.py": "from sanasr_cli.cli import prune, merge\n",
            "cli/common.py": "from sanasr_cli.models import vae\n",
            "cli/merge.py": "from sanasr_cli.cli.common import x\n",
            "cli/prune.py": "def f():\n    from sanasr_cli.cli.merge import check\n",
        },
    )
    problems = layering_problems(import_graph(root), LAYERS)
    assert problems == [
        "sanasr_cli.cli.prune -> sanasr_cli.cli.merge: a command module imports another (shared code: cli/common.py)",
        "sanasr_cli.data.io -> sanasr_cli.models.vae: data (layer 1) imports models (layer 2)",
    ]


def test_the_recipes_have_no_import_circle():
    """recipes/ (nano's stages and their shared loop, photos and ladder) imports without a circle, lazy imports
    included: shared code lives in modules of its own (recipes/nano/loop.py, v1_photos.py), not in the dispatcher."""
    graph = import_graph(PACKAGE.parent / "recipes")
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        raise AssertionError("import circle: " + " -> ".join(e.args[1])) from None
