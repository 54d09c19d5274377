"""Issue 14: every command is a thin face of the library. No function under sanasr_cli/cli/ is longer than 60
lines (signature and docstring included), and the options every command shares (--device, --precision, --base,
--seed, --prompt) are declared in one module (cli/options.py), as is the progress bar."""

import ast
import re
from pathlib import Path

from tests.helpers import REPO_ROOT

CLI = REPO_ROOT / "sanasr_cli" / "cli"
MAX_LINES = 60
SHARED_FLAGS = ("--device", "--precision", "--base", "--seed", "--prompt")


def _functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_cli_function_is_longer_than_60_lines():
    long = [
        f"{path.relative_to(REPO_ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path in sorted(CLI.glob("*.py"))
        for fn in _functions(path)
        if fn.end_lineno - fn.lineno + 1 > MAX_LINES
    ]
    assert long == []


def _option_flags(path: Path) -> set[str]:
    """The flags of every typer.Option(...) call in the module."""
    flags = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Option":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return flags


def test_shared_options_and_the_progress_bar_are_declared_once():
    for path in sorted(CLI.glob("*.py")):
        if path.name == "options.py":
            continue
        assert not [f for f in SHARED_FLAGS if f in _option_flags(path)], path.name
        assert not re.search(r"\bProgress\(", path.read_text(encoding="utf-8")), f"{path.name}: use progress_bar"
    assert set(SHARED_FLAGS) <= _option_flags(CLI / "options.py")


def test_help_does_not_import_torch():
    """`sanasr --help` and every `sanasr CMD --help` answer without loading torch (3 s of the 4.5 s it took)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sanasr_cli.cli import app\n"
        "for args in ([], ['upscale'], ['train'], ['eval'], ['prune'], ['merge-lora'], ['degrade'], ['distill'],"
        " ['bench'], ['export'], ['demo']):\n"
        "    result = CliRunner().invoke(app, [*args, '--help'])\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft', 'gradio') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == ""


# Installed with sanasr, none used by an upscale of a model without an adapter: peft (diffusers imports it whenever
# it is installed) and bitsandbytes (peft and transformers import it; on a CPU it asks the hub for a kernel and
# prints on stderr), pyiqa and cv2 (eval's metrics), lpips (training's loss), gradio (demo), onnxruntime (an ONNX
# export). pyiqa, lpips and gradio take 2-3 s of CPU each to import after torch (2-core EPYC).
NOT_FOR_AN_UPSCALE = ("bitsandbytes", "cv2", "gradio", "lpips", "onnxruntime", "peft", "pyiqa")


def test_help_and_an_upscale_import_only_what_they_use(tmp_path):
    """Issue 35: start-up is nearly all of a small upscale, and the upscale path imported peft and bitsandbytes:
    seconds before the first output. A model without an adapter (nano) needs neither (an adapter still loads:
    tests/test_merge.py, tests/test_train_cli.py), nor any other package of NOT_FOR_AN_UPSCALE: a module-level import
    of one of them on the upscale path fails here. `--help` imports none of them and not torch."""
    import subprocess
    import sys

    from PIL import Image

    from tests.helpers import make_photo_like

    Image.fromarray(make_photo_like(8, 8)).save(tmp_path / "one.png")
    code = (  # what `python -m sanasr_cli ARGS` runs (the console script runs the same main)
        "import sys\n"
        "from sanasr_cli.cli import main\n"
        "sys.argv = ['sanasr', *sys.argv[1:]]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"loaded = sorted(m for m in {(*NOT_FOR_AN_UPSCALE, 'torch')} if sys.modules.get(m) is not None)\n"
        "print('LOADED', ','.join(loaded))\n"
    )
    runs = {
        "help": ["--help"],
        "upscale": ["upscale", str(tmp_path / "one.png"), "-o", str(tmp_path / "out"), "--model", "nano"],
    }
    for name, args in runs.items():
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO_ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        loaded = out.stdout.split("LOADED", 1)[1].strip()
        assert loaded == ("" if name == "help" else "torch"), (name, loaded)  # torch: the upscale really ran
        assert "bitsandbytes" not in out.stderr and "gemm_4bit" not in out.stderr, out.stderr
    assert (tmp_path / "out" / "one.png").is_file()


def test_which_models_load_an_adapter_is_read_from_sanasr_json_alone(tmp_path):
    """The `sanasr` process leaves peft out only for a model that loads no adapter: read from its sanasr.json
    (a run folder's newest checkpoint, an export's source model), True whenever unsure."""
    import json

    from sanasr_cli.models.description import loads_an_adapter

    def describe(folder, **fields):
        folder.mkdir(parents=True)
        (folder / "sanasr.json").write_text(json.dumps({"format": "sanasr-model", "version": 1, **fields}))
        return folder

    merged = describe(tmp_path / "merged", base_preset="tiny", random_seed=0)
    ckpt = describe(tmp_path / "run" / "checkpoint-3", base_preset="tiny", random_seed=0, adapter="adapter")
    export = tmp_path / "export"
    export.mkdir()
    contract = {"format": "sanasr-onnx", "version": 1, "stages": {}, "source_model": str(ckpt)}
    (export / "sanasr-onnx.json").write_text(json.dumps(contract))
    (export / "prompt.npz").write_bytes(b"")
    assert [loads_an_adapter(m) for m in ("nano", "nano-fast", "tiny", "sana-600m-512", merged)] == [False] * 5
    assert loads_an_adapter(ckpt) and loads_an_adapter(tmp_path / "run") and loads_an_adapter(export)
    assert loads_an_adapter(tmp_path / "missing")


def test_the_sanasr_process_skips_the_collection_at_exit():
    """Issue 35: the interpreter's shutdown walked every object torch and diffusers had made (about 1 s of CPU of a
    small upscale); `main` freezes them after the last atexit handler (cli/common.skip_the_collection_at_exit).
    Checked from an atexit handler registered before `main`, which runs after it; exit codes stay as they were."""
    import subprocess
    import sys

    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('FROZEN', gc.get_freeze_count() > 0, flush=True))\n"
        "from sanasr_cli.cli import main\n"
        "sys.argv = ['sanasr', *sys.argv[1:]]\n"
        "main()\n"
    )
    for args, exit_code in ((["--help"], 0), (["no-such-command"], 2)):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO_ROOT)
        assert out.returncode == exit_code, (args, out.returncode, out.stderr[-2000:])
        assert "FROZEN True" in out.stdout, (args, out.stdout[-2000:])
