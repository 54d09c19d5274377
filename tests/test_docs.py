"""The documentation cannot drift from the code: every relative link in README.md, CONTRIBUTING.md and docs/
resolves (files and #anchors), every fenced `sanasr ...` command parses against the real Typer app (the
subcommand exists, every option is one of its click parameters, option values and positional arguments fit), and
every example runs as written: each command and Python block of README.md and docs/, or, where it cannot run on
an offline CPU, its line says what it needs (docs/testing.md, "The docs' examples run as written")."""

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


# ---------------------------------------------------------------- every example runs as written
#
# Every fenced `sanasr ...` command and Python block of README.md and docs/ runs, page by page and in the page's
# order, in a folder that holds the clone's examples/ and the small inputs the pages name (EXAMPLE_INPUTS; listed
# in docs/testing.md). A line that cannot run on an offline CPU says on the same line what it needs, one of NEEDS;
# a line that needs a GPU or hub weights is run too, and must stop at once with one line saying so.

NEEDS = {
    "gpu": re.compile(r"\bneeds (?:a|\d+|several) GPUs?\b"),
    "hub": re.compile(r"\bneeds hub weights\b"),
    "data": re.compile(r"\bneeds (?:your own )?data\b"),
    "package": re.compile(r"\bneeds SeeSR's ram package\b"),
    "server": re.compile(r"\bserves until Ctrl-C\b"),
    "minutes": re.compile(r"\bneeds minutes\b"),  # runs here, too slow for every test run (another test runs it)
}
RUN_PAGES = [
    "README.md",
    "docs/upscale.md",
    "docs/models/index.md",
    "docs/prompts.md",
    "docs/python-api.md",
    "docs/export.md",
    "docs/demo.md",
    "docs/degradation.md",
    "docs/train.md",
    "docs/prune-merge.md",
    "docs/distill.md",
    "docs/eval-bench.md",
]
# the pages whose commands make an input themselves (README's tour trains runs/sr and degrades into pairs/)
OWN_INPUTS = {"README.md": {"runs/sr", "pairs"}}


def _photo(path: Path, size: int, source: str = "cat", blur: float = 0.0) -> None:
    from PIL import Image, ImageFilter

    im = Image.open(REPO_ROOT / "examples" / "hq" / f"{source}.png").convert("RGB").resize((size, size))
    path.parent.mkdir(parents=True, exist_ok=True)
    (im.filter(ImageFilter.GaussianBlur(blur)) if blur else im).save(path)


def example_inputs(root: Path, skip: set[str] = frozenset()) -> None:
    """The inputs the docs' examples name, small (docs/testing.md lists them): photos/ (two 128x128 photos),
    photo.jpg, huge.tif (160x160), gt/ (their 512x512 references) and results/ (restored 512x512 ones), lq/ and
    val_lq/ (as photos/), pairs/ and data/calib_pairs/, data/val_pairs/ (LQ 32x32 + HQ 128x128 pairs),
    my_degradation.json, and runs/sr: a training run of the real SANA-600M (its checkpoint-100000 description:
    the weights would come from the hub)."""
    import json

    (root / "examples").symlink_to(REPO_ROOT / "examples")
    for stem in ("cat", "coffee"):
        _photo(root / "photos" / f"{stem}.png", 128, stem)
        _photo(root / "lq" / f"{stem}.png", 128, stem)
        _photo(root / "val_lq" / f"{stem}.png", 128, stem)
        _photo(root / "gt" / f"{stem}.png", 512, stem)
        _photo(root / "results" / f"{stem}.png", 512, stem, blur=1.5)
        for pairs in ("pairs", "data/calib_pairs", "data/val_pairs"):
            if pairs not in skip:
                _photo(root / pairs / "hq" / f"{stem}.png", 128, stem)
                _photo(root / pairs / "lq" / f"{stem}.png", 32, stem)
    _photo(root / "photo.jpg", 128, "motorcycle")
    _photo(root / "huge.tif", 160, "astronaut")
    (root / "my_degradation.json").write_text(json.dumps({"jpeg_range": [60, 95]}))
    if "runs/sr" not in skip:
        ckpt = root / "runs" / "sr" / "checkpoint-100000"
        ckpt.mkdir(parents=True)
        description = {"format": "sanasr-model", "version": 1, "base_preset": "sana-600m-512",
                       "base_source": "Efficient-Large-Model/Sana_600M_512px_diffusers"}  # fmt: skip
        (ckpt / "sanasr.json").write_text(json.dumps(description))


def page_examples(markdown: str) -> list[tuple[str, object, str]]:
    """The page's examples in order: ("cli", args, line) for each `sanasr ...` command of a fenced block and
    ("python", code, first line) for each Python block."""
    steps = []
    for lang, body in FENCE.findall(markdown):
        if lang == "python":
            steps.append(("python", body, body.strip().splitlines()[0]))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            for args in sanasr_commands(f"```\n{line}\n```\n"):
                steps.append(("cli", args, line))
    return steps


def need_of(line: str) -> str | None:
    """What the line says it needs (a key of NEEDS), from its trailing comment; None: it runs here."""
    comment = line.split("#", 1)[1] if "#" in line else ""
    return next((kind for kind, pattern in NEEDS.items() if pattern.search(comment)), None)


def output_of(args: list[str]) -> str | None:
    """The -o / --output of a command line, as written (a later line may read it)."""
    for flag in ("-o", "--output"):
        if flag in args[:-1]:
            return args[args.index(flag) + 1].rstrip("/")
    return None


def run_example(args: list[str], line: str, unmade: set[str]) -> str | None:
    """Run one documented command in-process (in the current folder); why it does not hold, or None. `unmade`:
    the outputs of earlier lines that need what this machine lacks; a line that reads one needs the same."""
    from tests.helpers import invoke

    need = need_of(line)
    if need is not None:
        out = output_of(args)
        reads = [a for a in args[1:] if a.rstrip("/") != out]
        unmade.add(out)
        if any(a.rstrip("/") in unmade or a.split("/")[0] in unmade for a in reads):
            return None  # it reads what an earlier line could not make here
    if args[:1] == ["demo"] and need not in ("server", "gpu"):  # it would serve here until the test is killed
        return "a demo line says it serves until Ctrl-C (or that it needs a GPU, which stops it first)"
    if need in ("data", "package", "server", "minutes"):
        return None  # it names what it needs; the command line itself parses (test above)
    if need == "gpu" and not ("cuda" in args or "accelerate launch" in line):
        return "says it needs a GPU but asks for none (--device cuda, accelerate launch)"
    if need == "gpu" and ("accelerate launch" in line or torch_cuda()):
        return None
    result = invoke(*args)
    text = " ".join(result.output.split())
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"raised {type(result.exception).__name__}: {result.exception}"
    if need is None:
        return None if result.exit_code == 0 else f"exit {result.exit_code}: {text[-600:]}"
    if result.exit_code == 0:
        return f"needs {need} but ran: {text[-600:]}"
    said = ("no CUDA GPU",) if need == "gpu" else HUB_SAID
    return None if any(s in text for s in said) else f"needs {need} but does not say so: {text[-600:]}"


# what a command that needs hub weights says offline: the base's missing-weights line, the CLIP tagger's, eval's
# note on the metrics that need downloads
HUB_SAID = ("Hugging Face", "the hub repo", "a local copy of the base", "need downloaded weights")


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("page", RUN_PAGES)
def test_every_example_runs_as_written_or_says_what_it_needs(page, tmp_path, monkeypatch, network_attempts):
    """Also under the test suite's network guard (tests/conftest.py): a line that needs hub weights may try to
    fetch them (refused, as offline); any other line that tries the network is named as a problem."""
    doc = REPO_ROOT / page
    steps = page_examples(doc.read_text())
    example_inputs(tmp_path, OWN_INPUTS.get(page, set()))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    problems, unmade = [], set()
    for kind, body, line in steps:
        if kind == "python":
            if need_of(line) is None:
                exec(compile(body, f"{page}: {line}", "exec"), namespace)  # noqa: S102
            problem = None
        else:
            problem = run_example(body, line, unmade)
        tried = network_attempts.new()[len(network_attempts.seen) :]  # since the line before
        if tried and need_of(line) != "hub":
            problem = f"{problem + '; ' if problem else ''}tried the network: {'; '.join(tried[:3])}"
        network_attempts.read()  # answered for here, line by line
        if problem:
            problems.append(f"{page}: {line.strip()}\n    {problem}")
    assert not problems, "\n".join(problems)


def test_every_page_with_examples_is_run():
    """A new page with a `sanasr` command or a Python block joins RUN_PAGES (or the docs' commands go untested)."""
    with_examples = {str(doc.relative_to(REPO_ROOT)) for doc in DOC_FILES if page_examples(doc.read_text())}
    assert with_examples <= set(RUN_PAGES), with_examples - set(RUN_PAGES)
