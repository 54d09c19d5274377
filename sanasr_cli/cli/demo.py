"""`sanasr demo`: a local web page to try a model on your own photo (the library: sanasr_cli/demo/)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import sys
import threading
import time

import typer

from sanasr_cli.cli import options as opt
from sanasr_cli.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    console,
    fail,
    load_model_or_fail,
    one_line_errors,
    quiet_libraries,
    resolve_device,
    resolve_precision,
)
from sanasr_cli.demo import DEFAULT_MAX_MEGAPIXELS

MODEL = typer.Option(
    "nano", "--model", "-m", help="The model selected when the page opens: a preset (nano, nano-fast, tiny, "
    "sana-600m-512) or a model directory. The page can switch to any other.",
)  # fmt: skip
HOST = typer.Option(
    "127.0.0.1", "--host", help="Address to serve on. The default is this machine only; 0.0.0.0 serves every "
    "network interface (a warning is printed: anyone who can reach the machine can use it).",
)  # fmt: skip
PORT = typer.Option(7860, "--port", min=1, max=65535, help="TCP port (it must be free).")
SHARE = typer.Option(
    False, "--share/--no-share", help="Also open a public *.gradio.live link through Gradio's relay (off by "
    "default: nothing leaves this machine).",
)  # fmt: skip
MAX_PIXELS = typer.Option(
    DEFAULT_MAX_MEGAPIXELS, "--max-pixels", help="Refuse photos above this many megapixels with a message on the "
    "page (0.1: a 316 x 316 photo, about a minute with nano on one busy CPU core; raise it on a GPU).",
)  # fmt: skip


def demo(
    model: str = MODEL,
    host: str = HOST,
    port: int = PORT,
    share: bool = SHARE,
    max_pixels: float = MAX_PIXELS,
    device: str = opt.device("auto, cpu, cuda, cuda:N."),
    precision: str = opt.PRECISION,
    base: str = opt.base("Hub id or local folder of the SANA base (default: $SANASR_BASE or the hub)."),
    seed: int = opt.seed("Seed of random-weight presets (tiny)."),
):
    """Serve a web page to upscale your own photo: upload, pick the model and settings, compare bicubic and
    SANA-SR on a before/after slider, download the PNG. It runs `SanaSRPipeline`, so the page gives the same
    pixels as the Python API.

    Needs Gradio: pip install 'sanasr\\[demo]'. Stop it with Ctrl-C.

    Exit code: 0 when stopped with Ctrl-C, 1 when Gradio is missing or the model cannot load (missing
    weights), 2 for usage errors (a bad model directory, a port in use).
    """
    from sanasr_cli.demo.app import DemoSettings, private_workspace

    if not math.isfinite(max_pixels) or max_pixels <= 0:
        raise fail(f"--max-pixels must be a number > 0, not {max_pixels}", EXIT_USAGE)
    from sanasr_cli.hub import downloads_forbidden

    # a page never downloads (a model or tagger missing here is one line on the page), and everything the demo
    # writes, Gradio's cache of the photos included, is in one private folder removed on exit
    with downloads_forbidden(), private_workspace() as workspace:
        page = _start(model, host, port, device, precision, base, seed, workspace)
        page.build(DemoSettings(model=model, max_pixels=int(max_pixels * 1e6)))
        _stop_on_signals(str(workspace))  # Ctrl-C and `kill` stop it: server closed, files removed
        try:
            page.serve(share)
        except KeyboardInterrupt:
            pass
        finally:
            page.close()
    console.print("sanasr demo: stopped")


class _Page:
    """The page of one `sanasr demo` run: its model cache, the Blocks, where results go."""

    def __init__(self, cache, host: str, port: int, results):
        self.cache, self.host, self.port, self.results, self.blocks = cache, host, port, results, None

    def build(self, settings) -> None:
        from sanasr_cli.demo.app import build_demo

        self.blocks = build_demo(settings, self.cache, self.results)

    def serve(self, share: bool) -> None:
        from sanasr_cli.demo.app import serve

        serve(self.blocks, host=self.host, port=self.port, share=share, on_ready=_ready)

    def close(self) -> None:
        if self.blocks is not None:
            self.blocks.close()


def _start(model, host, port, device, precision, base, seed, workspace) -> _Page:
    """The checks before serving (host, port, Gradio), then the first model, loaded now: a bad --model is one
    line here, not an error on the page after the first upload."""
    from sanasr_cli.demo.app import GradioMissingError, bare_host, import_gradio, is_loopback

    if not is_loopback(host):
        console.print(
            f"[yellow]warning:[/] --host {host} serves the demo beyond this machine: anyone who can reach it on port "
            f"{port} can upload photos and use its CPU/GPU (there is no login)",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
    _check_port_free(bare_host(host), port)
    try:
        import_gradio()
    except GradioMissingError as e:
        raise fail(str(e), EXIT_FAILED) from None  # fail() prints text: the [demo] of the extra stays
    quiet_libraries()
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    # the result PNGs in the workspace's temp folder: Gradio serves files from the temp folder (or its own cache)
    return _Page(_cache(model, dev, dtype, base, seed), host, port, workspace / "tmp" / "results")


def _ready(local_url: str, share_url: str | None) -> None:
    console.print(f"sanasr demo: serving on {local_url} (Ctrl-C stops it)", highlight=False)
    if share_url:
        console.print(f"sanasr demo: public link {share_url} (anyone with it can use the demo)", highlight=False)


STOP_GRACE_S = 15.0


def _stop_on_signals(out_dir: str) -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (Gradio closes its server and the temp folder is removed); should
    Gradio's shutdown not finish within STOP_GRACE_S (its server threads can hang on a loaded machine: seen in the
    browser test), a watchdog removes the folder and exits 0 anyway, so a stopped demo never lingers."""

    def handler(*_):
        threading.Thread(target=_exit_after_grace, args=(out_dir,), daemon=True).start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _exit_after_grace(out_dir: str) -> None:
    time.sleep(STOP_GRACE_S)
    shutil.rmtree(out_dir, ignore_errors=True)
    console.print("sanasr demo: stopped")
    sys.stdout.flush()
    os._exit(0)


def _cache(model, dev, dtype, base, seed):
    from sanasr_cli.demo.session import PipelineCache
    from sanasr_cli.pipeline.sana_sr import SanaSRPipeline

    cache = PipelineCache(device=dev, dtype=dtype, base=base, seed=seed)
    loaded = load_model_or_fail(model, dev, dtype, base, seed, f"loading model {model} on {dev} ...")
    cache.add(model, SanaSRPipeline(loaded))  # what from_pretrained builds, loaded with the CLI's one-line errors
    return cache


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError as e:  # a busy port, an address not on this machine, no IPv6 here
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise fail(f"cannot serve on {where} ({e.strerror or e}): pick another --port", EXIT_USAGE) from None


def register(app: typer.Typer) -> None:
    app.command("demo")(one_line_errors(demo))
