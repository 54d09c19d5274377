"""The `sanasr demo` page (Gradio Blocks): upload a photo, pick the model and the `upscale` settings, compare
bicubic and SANA-SR on a before/after slider, download the full-resolution PNG.

Private and offline by design: Gradio's analytics and update check are off, the page is served on loopback
unless another host is asked for, no share link unless asked, and the theme uses fonts Gradio serves itself (no
Google Fonts), so the browser fetches nothing from outside. Requests are queued one at a time (one model, and
on a CPU one request already uses every core).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sanasr_cli.demo import DEFAULT_MAX_MEGAPIXELS
from sanasr_cli.demo.session import MODEL_RULE, DemoInputError, DemoRequest, PipelineCache, check_photo, upscale_photo
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
    """gradio, with its analytics and version check off (read from the environment when it is imported);
    GradioMissingError when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError:
        raise GradioMissingError("the demo needs Gradio, which is not installed: pip install 'sanasr[demo]'") from None
    return gradio


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


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
    from sanasr_cli.models.presets import MODEL_NAMES
    from sanasr_cli.pipeline.color import COLOR_FIXES
    from sanasr_cli.prompts.taggers import TAGGERS

    models = list(dict.fromkeys([settings.model, *MODEL_NAMES]))
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
                    scale = gr.Number(4.0, minimum=1, step=0.5, label="Scale", elem_id="scale")
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

        def upscale(path, model_, scale_, color_fix_, tile_, tagger_, prompt_, progress=gr.Progress()):
            if not path:
                return None, None, "**error:** upload a photo first (or pick an example)"
            request = DemoRequest(
                str(model_).strip(), float(scale_ or 0), color_fix_, str(tile_), tagger_, prompt_ or ""
            )
            progress(0, desc="loading the model and tagging")
            try:
                r = upscale_photo(
                    cache,
                    path,
                    request,
                    out_dir,
                    settings.max_pixels,
                    on_tile=lambda done, total: progress((done, total), desc="LinearDiT tiles"),
                )
            except SanaSRError as e:  # a bad photo, setting or model folder: one line on the page
                return None, None, f"**error:** {e}"
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
        )
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def serve(demo, host: str = "127.0.0.1", port: int = 7860, share: bool = False, on_ready=None) -> None:
    """Serve the page until interrupted (Ctrl-C, or SIGTERM turned into it by the caller): loopback by default,
    no share link unless asked, nothing fetched from outside (no server-side rendering through Node, no MCP
    server, no PWA). on_ready(local_url, share_url) is called once it answers."""
    gr = import_gradio()
    demo.launch(
        server_name=host,
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
    )
    if on_ready is not None:
        on_ready(demo.local_url, demo.share_url)
    demo.block_thread()  # returns on Ctrl-C, after closing the server
