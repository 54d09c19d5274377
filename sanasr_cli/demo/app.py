"""The `sanasr demo` page (Gradio Blocks): upload a photo, pick the model and the `upscale` settings, compare
bicubic and SANA-SR on a before/after slider, download the full-resolution PNG.

Private and offline by design: Gradio's analytics, update check and run history are off, the page is served on
loopback unless another host is asked for, no share link unless asked, and the theme uses fonts Gradio serves
itself (no Google Fonts), so the browser fetches nothing from outside. The server fetches nothing either: a
request naming a file by URL is refused (`RefuseForeignRequests`), as is a request another site makes the
browser send; nothing is downloaded (`hub.downloads_forbidden`, around the whole of `sanasr demo`). Everything
the demo writes (uploads, results, temp files) lives in one private folder removed when it stops
(`private_workspace`). Requests are queued one at a time (one model, and on a CPU one request already uses every
core).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sanasr_cli.demo import DEFAULT_MAX_MEGAPIXELS
from sanasr_cli.demo.session import (
    MODEL_RULE,
    DemoInputError,
    DemoRequest,
    PipelineCache,
    check_photo,
    check_request,
    runnable_models,
    upscale_photo,
)
from sanasr_cli.errors import SanaSRError

QUEUE_SIZE = 16  # requests waiting beyond this are refused with Gradio's "queue full" instead of piling up
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lq"  # in a source checkout
TILE_CHOICES = ["auto", "none", "256", "512", "1024"]


class GradioMissingError(SanaSRError):
    """The optional Gradio package is not installed."""


@dataclass
class DemoSettings:
    model: str = "nano"  # the model selected when the page opens
    max_pixels: int = int(DEFAULT_MAX_MEGAPIXELS * 1e6)
    examples: list[Path] = field(default_factory=lambda: sorted(EXAMPLES.glob("*.png")) if EXAMPLES.is_dir() else [])


def import_gradio():
    """gradio, with its analytics, version check and run history off (read from the environment);
    GradioMissingError when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_RUN_HISTORY"] = "False"  # nothing of a user's photo kept in the browser either
    try:
        import gradio
    except ImportError:
        raise GradioMissingError("the demo needs Gradio, which is not installed: pip install 'sanasr[demo]'") from None
    return gradio


def is_loopback(host: str) -> bool:
    host = bare_host(host)
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def bare_host(host: str) -> str:
    """An address without the brackets of a URL's IPv6 host ([::1] -> ::1)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def url_host(host: str) -> str:
    """The host as a URL writes it: an IPv6 address in brackets (::1 -> [::1]), which Gradio binds without them."""
    host = bare_host(host)
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def private_workspace(prefix: str = "sanasr-demo-") -> Iterator[Path]:
    """One folder only this user can read (0700; files made meanwhile 0600, folders 0700: umask 077) holding
    everything the demo writes: Gradio's cache of uploads and results ($GRADIO_TEMP_DIR), the temp files of
    uploads being received and anything else that asks `tempfile` ($TMPDIR: the result PNGs too), torch's compile
    cache. Removed with all it holds on the way out, so a stopped demo leaves nothing behind; the
    environment, the umask and `tempfile.tempdir` are restored."""
    umask = os.umask(0o077)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    names = ("GRADIO_TEMP_DIR", "TMPDIR", "TORCHINDUCTOR_CACHE_DIR")
    saved, saved_tempdir = {k: os.environ.get(k) for k in names}, tempfile.tempdir
    for name, sub in zip(names, ("gradio", "tmp", "torchinductor"), strict=True):
        (folder / sub).mkdir()
        os.environ[name] = str(folder / sub)
    tempfile.tempdir = str(folder / "tmp")
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.umask(umask)
        shutil.rmtree(folder, ignore_errors=True)


def _names_a_url(value) -> bool:
    """True when a JSON value holds a file given by URL: a Gradio FileData whose `path` is http(s)://, which Gradio
    would download. (Its `url` is where the page got an upload back from this server; Gradio does not fetch it.)"""
    if isinstance(value, dict):
        path = value.get("path")
        if isinstance(path, str) and path.strip().lower().startswith(("http://", "https://", "//")):
            return True
        return any(_names_a_url(v) for v in value.values())
    if isinstance(value, list):
        return any(_names_a_url(v) for v in value)
    return False


class RefuseForeignRequests:
    """ASGI middleware in front of the demo's Gradio app.

    - A request that changes something (not GET, HEAD or OPTIONS) whose Origin is another site is refused (403):
      a page elsewhere cannot make the user's browser upload to, or run, the demo (cross-site request forgery;
      Gradio's CORS rules only stop that page from reading the answer). Requests without an Origin (scripts,
      gradio_client) are not from a browser page and pass.
    - A JSON request naming a file by URL (a FileData whose path is http(s)://) is refused (400): the server would
      otherwise download it, and look its host up first. The page itself only ever sends uploads."""

    MAX_JSON = 16 << 20  # a request of the page is a few KB of JSON; uploads are multipart and not read here

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            return await self._reply(send, 403, "a request from another site is refused by sanasr demo")
        if not headers.get("content-type", "").lower().startswith("application/json"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.MAX_JSON:
                return await self._reply(send, 413, "request too large")
        try:
            refused = _names_a_url(json.loads(body or b"null"))
        except (ValueError, RecursionError):
            refused = False  # not JSON after all: Gradio answers it
        if refused:
            return await self._reply(send, 400, "sanasr demo takes uploaded files only, never a URL to fetch")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _reply(send, status: int, text: str) -> None:
        data = json.dumps({"error": text}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def theme(gr):
    """Gradio's default look with fonts that ship inside Gradio (LocalFont) or the system's: never a GoogleFont,
    which the browser would fetch from Google. LocalFont from where it is defined: `gr.themes` exports it only since
    a later 6.x than the floor (6.0 has the class, not the name; .ci/oldest)."""
    from gradio.themes.utils.fonts import LocalFont

    return gr.themes.Default(
        font=(LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"),
        font_mono=(LocalFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace"),
    )


def build_demo(settings: DemoSettings, cache: PipelineCache, out_dir: Path):
    """The page as a gr.Blocks (not launched; `serve` launches it)."""
    gr = import_gradio()
    from sanasr_cli.pipeline.color import COLOR_FIXES
    from sanasr_cli.prompts.taggers import TAGGERS

    models = runnable_models(settings.model, cache.base)  # only what runs here: no download, no counting preset
    taggers = [MODEL_RULE, *(t for t in sorted(TAGGERS) if t != "file")]  # an upload has no <image>.txt beside it
    limit = f"{settings.max_pixels / 1e6:.3g} MP"
    with gr.Blocks(title="sanasr demo", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "## sanasr demo: one-step diffusion super-resolution\n"
            f"Upload a photo (up to {limit}), press **Upscale**, drag the slider to compare bicubic with SANA-SR."
        )
        with gr.Row():
            with gr.Column():
                photo = gr.File(label="Photo (png, jpg, webp, tif, bmp, gif)", type="filepath", elem_id="photo")
                preview = gr.Image(
                    label="Input",
                    interactive=False,
                    format="png",
                    height=200,
                    buttons=["fullscreen"],
                    elem_id="preview",
                )
                if settings.examples:
                    gr.Examples([[str(p)] for p in settings.examples], inputs=[photo], label="Examples (examples/lq)")
                model = gr.Dropdown(
                    models,
                    value=settings.model,
                    allow_custom_value=True,
                    elem_id="model",
                    label="Model: a preset, or the path of a model folder (as `upscale --model`)",
                )
                with gr.Row():
                    scale = gr.Number(4.0, step=0.5, label="Scale (1 to 16)", elem_id="scale")
                    color_fix = gr.Radio(list(COLOR_FIXES), value="wavelet", label="Colour fix", elem_id="color_fix")
                with gr.Row():
                    tile = gr.Dropdown(
                        TILE_CHOICES,
                        value="auto",
                        allow_custom_value=True,
                        elem_id="tile",
                        label="Tile (pixels of the x4 image)",
                    )
                    tagger = gr.Dropdown(taggers, value=MODEL_RULE, label="Tagger", elem_id="tagger")
                prompt = gr.Textbox(label="Prompt: extra words before the tags", elem_id="prompt")
                run = gr.Button("Upscale", variant="primary", elem_id="run")
            with gr.Column():
                slider = gr.ImageSlider(
                    label="bicubic | SANA-SR",
                    type="pil",
                    format="png",
                    interactive=False,
                    buttons=["fullscreen"],
                    elem_id="result",
                )
                download = gr.File(label="Full-resolution PNG", interactive=False, elem_id="download")
                info = gr.Markdown(elem_id="info")

        def show(path):
            if not path:
                return None, ""
            try:
                w, h = check_photo(path, settings.max_pixels)
            except DemoInputError as e:
                return None, f"**error:** {e}"
            return path, f"{Path(path).name}: {w} x {h}"

        def upscale(photo_, model_, scale_, color_fix_, tile_, tagger_, prompt_, progress=gr.Progress()):
            # the values as the client sent them (preprocess=False): every one is checked here, so that whatever
            # arrives (a scale of "abc", a colour fix not offered) is one line on the page, not a Gradio toast
            path, name = _upload(photo_)
            if not path:
                return None, None, "**error:** upload a photo first (or pick an example)"
            progress(0, desc="loading the model and tagging")
            try:
                request = _request(model_, scale_, color_fix_, tile_, tagger_, prompt_)
                check_request(request, taggers)
                r = upscale_photo(
                    cache,
                    path,
                    request,
                    out_dir,
                    settings.max_pixels,
                    on_tile=lambda done, total: progress((done, total), desc="LinearDiT tiles"),
                )
            except SanaSRError as e:  # a bad photo, setting or model folder: one line on the page
                return None, None, f"**error:** {_as_uploaded(str(e), path, name)}"
            loaded = f", model loaded in {r.load_seconds:.2f} s" if r.load_seconds else ""
            w, h = r.sr.size
            return (
                (r.bicubic, r.sr),
                str(r.png),
                (
                    f"**prompt:** {r.prompt}  \n**seconds:** {r.seconds:.2f}{loaded}  \n"
                    f"**size:** {r.input_size[0]} x {r.input_size[1]} -> {w} x {h} ({request.model} on {cache.device}, "
                    f"{r.plan.reason or 'whole image'}, {r.plan.dit_tiles} LinearDiT tile(s))"
                ),
            )

        photo.change(show, photo, [preview, info], queue=False)
        run.click(
            upscale,
            [photo, model, scale, color_fix, tile, tagger, prompt],
            [slider, download, info],
            concurrency_limit=1,
            preprocess=False,  # the raw values reach `upscale`, which checks each (see there)
        )
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def _upload(photo) -> tuple[str | None, str]:
    """(the server's path of the upload, the name it was uploaded under) from the File's raw value."""
    if isinstance(photo, dict):
        path = photo.get("path")
        if isinstance(path, str) and path:
            name = photo.get("orig_name")
            return path, name if isinstance(name, str) and name else Path(path).name
        return None, ""
    if isinstance(photo, str) and photo:
        return photo, Path(photo).name
    return None, ""


def _request(model, scale, color_fix, tile, tagger, prompt) -> DemoRequest:
    """A DemoRequest from the raw values of the page's fields; DemoInputError for a scale that is not a number."""
    try:
        number = float(scale)
    except (TypeError, ValueError):
        raise DemoInputError(f"scale must be a number from 1 to 16, not {str(scale)[:40]!r}") from None
    return DemoRequest(str(model or "").strip(), number, str(color_fix), str(tile), str(tagger), str(prompt or ""))


def _as_uploaded(message: str, path: str, name: str) -> str:
    """An error line that names the upload as the user named it, never the server's copy of it."""
    message = message.replace(str(Path(path)), name).replace(str(Path(path).parent), "")
    return message.replace(Path(path).name, name) if Path(path).name != name else message


def serve(demo, host: str = "127.0.0.1", port: int = 7860, share: bool = False, on_ready=None) -> None:
    """Serve the page until interrupted (Ctrl-C, or SIGTERM turned into it by the caller): loopback by default
    (an IPv6 address as well: ::1), no share link unless asked, nothing fetched from outside (no server-side
    rendering through Node, no MCP server, no PWA, no run history), requests from other sites and files given
    by URL refused (`RefuseForeignRequests`). on_ready(local_url, share_url) is called once it answers."""
    import inspect

    from starlette.middleware import Middleware

    gr = import_gradio()
    extra = {"run_history": False} if "run_history" in inspect.signature(demo.launch).parameters else {}
    demo.launch(
        server_name=url_host(host),
        server_port=port,
        share=share,
        inbrowser=False,
        show_error=True,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        quiet=True,
        prevent_thread_lock=True,
        theme=theme(gr),
        footer_links=["gradio"],
        max_file_size="200mb",
        app_kwargs={"middleware": [Middleware(RefuseForeignRequests)]},
        **extra,
    )
    if on_ready is not None:
        on_ready(demo.local_url, demo.share_url)
    demo.block_thread()  # returns on Ctrl-C, after closing the server
