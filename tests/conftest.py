"""Shared fixtures: tiny random models built from configs in code, tiny images made here. Never any download."""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import REPO_ROOT, make_photo_like  # noqa: F401 - re-exported: many tests import them here

# Tests run offline: any accidental hub access fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The prompt-encoding disk cache (models/embedding_cache.py) is off: a test never finds what another one (or a user's
# earlier run) encoded; the tests of the cache point it at a folder of their own.
os.environ["SANASR_PROMPT_CACHE"] = "off"
# The network guard (tests/netguard/sitecustomize.py): in this process and in every Python process a test starts
# (its folder first on PYTHONPATH), sockets reach loopback only; an attempt beyond is refused and recorded in
# NETLOG, and fails the test that made it (`_no_network` below) unless the test expects it (`network_attempts`).
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
NETLOG = Path(tempfile.mkstemp(prefix="sanasr-test-netlog-")[1])
os.environ["SANASR_TEST_NETGUARD"] = "1"
os.environ["SANASR_TEST_NETLOG"] = str(NETLOG)
os.environ["PYTHONPATH"] = os.pathsep.join([str(NETGUARD_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
netguard = importlib.import_module("tests.netguard.sitecustomize")  # installs the guard here too
# SANASR_TEST_THREADS=N runs every test with N intra-op threads (the module's TORCH_THREADS and the numerics rule
# below included): .ci/run's second numerics pass uses 1, where the first ran them at 2.
FORCED_THREADS = int(os.environ["SANASR_TEST_THREADS"]) if os.environ.get("SANASR_TEST_THREADS") else None
DEFAULT_THREADS = FORCED_THREADS or min(2, os.cpu_count() or 1)
torch.set_num_threads(DEFAULT_THREADS)


def pytest_report_header(config):
    return f"torch threads: {DEFAULT_THREADS}, ATen CPU kernels: {torch.backends.cpu.get_cpu_capability()}"


class NetworkAttempts:
    """What the guard refused since the test began (this process and the ones it started)."""

    def __init__(self) -> None:
        self.memory = len(netguard.ATTEMPTS)
        self.log = NETLOG.stat().st_size
        self.seen: list[str] = []

    def new(self) -> list[str]:
        with open(NETLOG, encoding="utf-8") as f:
            f.seek(self.log)
            logged = f.read().splitlines()
        own = [a for a in netguard.ATTEMPTS[self.memory :] if a not in logged]  # in-process ones are logged too
        return [*logged, *own]

    def read(self) -> list[str]:
        """The attempts so far, which the test then answers for (they no longer fail it)."""
        self.seen = self.new()
        return list(self.seen)


@pytest.fixture(autouse=True)
def _no_network(request):
    """Every test runs with the network guard: an attempt to reach anything but loopback fails it, naming the
    host (a library that catches the refusal and carries on silently is caught too)."""
    attempts = NetworkAttempts()
    request.node._sanasr_network = attempts
    yield
    unexpected = [a for a in attempts.new() if a not in attempts.seen]
    if unexpected:
        pytest.fail(f"network access attempted (refused by the guard): {'; '.join(unexpected[:5])}", pytrace=False)


@pytest.fixture
def network_attempts(request):
    """For a test that expects an attempt (e.g. a download the user asked for): `.read()` lists the refused ones."""
    return request.node._sanasr_network


@pytest.fixture(autouse=True, scope="module")
def _module_torch_threads(request):
    """A test module that sets TORCH_THREADS runs with that many intra-op threads. Tiny tensors on the shared
    2-core machine: one thread avoids OpenMP spin-waits (measured ~10x faster per tiny step when loaded)."""
    threads = getattr(request.module, "TORCH_THREADS", None)
    if threads is None or FORCED_THREADS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _numerics_torch_threads(request):
    """A test marked `numerics` (model outputs against references, with tolerances) runs with DEFAULT_THREADS even
    in a module that sets TORCH_THREADS = 1, so that SANASR_TEST_THREADS=1 really changes its thread count."""
    if request.node.get_closest_marker("numerics") is None or FORCED_THREADS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SanaSR (random weights, seed 0) shared by read-only tests. Do not modify it in a test."""
    from sanasr_cli.models.sanasr import load_model

    return load_model("tiny", device="cpu", dtype=torch.float32, seed=0)


@pytest.fixture
def fresh_tiny_model():
    """A tiny SanaSR a test may modify (add adapters, prune, ...)."""
    from sanasr_cli.models.sanasr import load_model

    return load_model("tiny", device="cpu", dtype=torch.float32, seed=0)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder with three small RGB PNG/JPEG images of different (odd) sizes."""
    folder = tmp_path / "lq"
    folder.mkdir()
    Image.fromarray(make_photo_like(16, 16, 1)).save(folder / "a.png")
    Image.fromarray(make_photo_like(13, 21, 2)).save(folder / "b.png")
    Image.fromarray(make_photo_like(20, 12, 3)).save(folder / "c.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A folder with a tiny random CLIP: config.json, model.safetensors, tokenizer, preprocessor_config (built
    in code, no download)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from sanasr_cli.models.presets import build_local_tokenizer

    tok = build_local_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- ONNX exports shared by the test files
# Each export of tiny traces three stages with torch.export (tens of seconds): one of each kind per session.


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """The tiny preset (seed 0) exported by the CLI, fp32, default prompt. The command says each step as it starts
    (issue 35: a minute or more of silence where no spinner shows, e.g. in a pipe)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny_onnx"
    from tests.helpers import run

    result = run("export", "tiny", "-o", out)
    assert result.exit_code == 0, result.output
    steps = [line.split(" s  ", 1)[1] for line in result.output.splitlines() if " s  " in line]
    assert [s.split(" (")[0] for s in steps] == [
        "hashing the weights", "tracing the encoder", "tracing the restorer", "tracing the decoder",
        "folding constants", "composing model.onnx", "hashing the files",
    ], result.output  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_bench_backends(tiny_onnx, tmp_path_factory):
    """`sanasr bench --compare-backends` on tiny at 32 and 48 px, with tiny_onnx already in --export-dir as
    ort_fp32 (reused), ort_int8 exported by the command: (result, export dir, the JSON report, ort_fp32's model.onnx
    mtime before the run). tests/test_onnx_export.py checks the run; its int8 export (weights inside the graphs,
    as any export of tiny) is tests/test_onnx_external_data.py's reference."""
    import json
    import shutil

    from tests.helpers import run

    root = tmp_path_factory.mktemp("bench_backends")
    exports = root / "exports"
    shutil.copytree(tiny_onnx, exports / "ort_fp32")
    before = (exports / "ort_fp32" / "model.onnx").stat().st_mtime_ns
    args = ["--model", "tiny", "--random-weights", "--compare-backends", "--size", "32", "--size", "48"]
    result = run("bench", *args, "--repeats", "3", "--warmup", "0", "--export-dir", exports, "--json", root / "b.json")
    assert result.exit_code == 0, result.output
    return result, exports, json.loads((root / "b.json").read_text()), before
