"""The documentation cannot drift from the code: every relative link in README.md, CONTRIBUTING.md and docs/
resolves (files and #anchors), every fenced `sanasr ...` command parses against the real Typer app (the
subcommand exists, every option is one of its click parameters, option values and positional arguments fit;
nothing runs, no --help), and every Python block of docs/python-api.md runs as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)

DOC_FILES = sorted(
    [
        REPO_ROOT / "README.md",
        *[p for p in [REPO_ROOT / "CONTRIBUTING.md"] if p.exists()],
        *(REPO_ROOT / "docs").rglob("*.md"),
    ]
)
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SHELL_END = {"&&", "||", "|", ";", ">", ">>", "2>", "2>&1"}


# ---------------------------------------------------------------- links


def github_anchor(heading: str) -> str:
    """The #fragment GitHub (and mkdocs' toc with the same slugify) gives a heading."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    outside_code = FENCE.sub("", markdown)
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", outside_code, re.M)}


def dead_links(doc: Path) -> list[str]:
    """Each relative link of `doc` whose file, or whose #anchor in that file, does not exist."""
    text = doc.read_text()
    dead = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            dead.append(f"{doc.relative_to(REPO_ROOT)}: {target} (no such file)")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text()):
            dead.append(f"{doc.relative_to(REPO_ROOT)}: {target} (no such heading in {file.name})")
    return dead


def test_every_relative_link_resolves():
    assert len(DOC_FILES) >= 14, DOC_FILES  # README + the docs pages: the test reads them all
    problems = [p for doc in DOC_FILES for p in dead_links(doc)]
    assert not problems, "\n".join(problems)


def test_the_link_check_catches_a_dead_file_and_a_dead_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO_ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# A page\n\n## Its `section`: one\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md) [ok](other.md#its-section-one) [ok](#here)\n\n# Here\n")
    assert dead_links(doc) == []
    doc.write_text("[gone](missing.md) [gone](other.md#nothing)\n```\n[in code](ignored.md)\n```\n")
    assert dead_links(doc) == [
        "doc.md: missing.md (no such file)",
        "doc.md: other.md#nothing (no such heading in other.md)",
    ]


# ---------------------------------------------------------------- commands


def sanasr_commands(markdown: str) -> list[list[str]]:
    """The argument lists of every `sanasr ...` (or `... -m sanasr_cli ...`) command in the fenced blocks."""
    commands = []
    for _, body in FENCE.findall(markdown):
        for line in body.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            for i, word in enumerate(words):
                module = word == "-m" and i + 1 < len(words) and words[i + 1] == "sanasr_cli"
                if word == "sanasr" or word.endswith("/sanasr") or module:
                    rest = words[i + (2 if module else 1) :]
                    cut = next((k for k, w in enumerate(rest) if w in SHELL_END), len(rest))
                    commands.append(rest[:cut])
                    break
    return commands


def command_problem(args: list[str]) -> str | None:
    """Why `sanasr ARGS` would not parse (None: it parses): the subcommand, each option against the click
    command's parameters (and whether it takes a value), and the number of positional arguments. Duck-typed
    over click's classes: typer >= 0.17 carries its own copy of click."""
    import typer
    from typer.main import get_command

    from sanasr_cli.cli import app

    command = get_command(app)
    path, args = ["sanasr"], list(args)
    while hasattr(command, "list_commands") and args and not args[0].startswith("-"):
        sub = command.get_command(typer.Context(command), args[0])
        if sub is None:
            return f"{' '.join(path)}: no subcommand '{args[0]}'"
        path.append(args.pop(0))
        command = sub
    if hasattr(command, "list_commands"):
        return None if args in ([], ["--version"]) else f"{' '.join(path)}: needs a subcommand"
    parser = command.make_parser(typer.Context(command, info_name=" ".join(path)))
    try:
        _, positional, _ = parser.parse_args(args)
    except Exception as e:  # click's UsageError (NoSuchOption, BadOptionUsage, ...), whichever click it is
        return f"{' '.join(path)}: {getattr(e, 'format_message', e.__str__)()}"
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    if any(a.nargs == -1 for a in arguments):
        return None
    if len(positional) > sum(a.nargs for a in arguments):
        return f"{' '.join(path)}: unexpected arguments {positional}"
    return None


def test_every_documented_command_parses_against_the_app():
    checked, problems = 0, []
    for doc in DOC_FILES:
        for args in sanasr_commands(doc.read_text()):
            checked += 1
            problem = command_problem(args)
            if problem:
                problems.append(f"{doc.relative_to(REPO_ROOT)}: sanasr {shlex.join(args)}\n    {problem}")
    assert not problems, "\n".join(problems)
    assert checked >= 60, checked  # the docs' examples: every page's commands are read


def test_the_command_check_catches_a_wrong_flag_a_missing_value_and_a_wrong_subcommand():
    block = (
        "```bash\n"
        "sanasr upscale photos/ -o out/ --tile 512        # fine\n"
        "sanasr upscale photos/ -o out/ --tiles 512\n"
        "python3 -m venv .venv && .venv/bin/sanasr upscale a -o b --model\n"
        "accelerate launch -m sanasr_cli trian --hq x -o y\n"
        "sanasr distill encoder tiny -o OUT --hq data/hq \\\n    --no-such-flag\n"
        "sanasr merge-lora a b c -o d\n"
        "```\n"
    )
    found = [command_problem(args) for args in sanasr_commands(block)]
    assert found[0] is None
    assert "--tiles" in found[1]
    assert "--model" in found[2] and "requires an argument" in found[2]
    assert "no subcommand 'trian'" in found[3]
    assert "--no-such-flag" in found[4]
    assert "unexpected arguments" in found[5]


# ---------------------------------------------------------------- the Python API page


def test_every_python_block_of_the_api_page_runs(tmp_path, monkeypatch):
    """Run in order in one namespace (the page says so), from a folder that has the clone's examples/, so the
    files they write land in tmp_path."""
    blocks = [
        body for lang, body in FENCE.findall((REPO_ROOT / "docs" / "python-api.md").read_text()) if lang == "python"
    ]
    assert len(blocks) >= 3
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, body in enumerate(blocks):
        exec(compile(body, f"docs/python-api.md, python block {i}", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "cat_x4.png").exists()  # the first block's output


@pytest.mark.parametrize("doc", ["README.md"])
def test_the_readme_stays_short(doc):
    assert len((REPO_ROOT / doc).read_text().splitlines()) <= 250


def test_the_docs_site_builds_strict(tmp_path):
    """mkdocs.yml renders docs/ with no warning: every page in the nav exists, every link and #anchor resolves."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (site / "models" / "nano" / "index.html").is_file() and (site / "images" / "nano_side_by_side.png").is_file()


# ---------------------------------------------------------------- the "Tested with" tables

VERSION = re.compile(r"[0-9]+(?:\.[0-9A-Za-z]+)+|[0-9]+")


def pyproject_floors() -> dict[str, set[str]]:
    """Each package with a `>=` floor in pyproject.toml ([project] and the extras) -> its floors."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    floors: dict[str, set[str]] = {}
    for spec in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", spec.strip())
        if m:
            floors.setdefault(m.group(1).lower(), set()).add(m.group(2))
    return floors


def floors_in_tested_with_table(markdown: str) -> dict[str, set[str]]:
    """The "Tested with" table (header `| package | floor ...`): package -> the versions its floor column names."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| package | floor"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`").lower()] = set(VERSION.findall(cells[1]))
    return rows


def test_the_tested_with_tables_state_the_floors_of_pyproject():
    """docs/testing.md lists every floored package with exactly its floors; the README's rows agree with it."""
    floors = pyproject_floors()
    full = floors_in_tested_with_table((REPO_ROOT / "docs" / "testing.md").read_text())
    assert full == floors
    readme = floors_in_tested_with_table((REPO_ROOT / "README.md").read_text())
    assert readme and all(full[name] == versions for name, versions in readme.items())
