"""What the demo page does with one photo, without Gradio: check it, restore it with `SanaSRPipeline` (the
Python API, so the page and `pipe(image)` give the same pixels), and keep loaded models for the next request.

    cache = PipelineCache(device="cpu")
    result = upscale_photo(cache, "examples/lq/cat.png", DemoRequest(model="nano"), out_dir, max_pixels=250_000)
    result.sr, result.bicubic, result.png, result.prompt, result.seconds
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from sanasr_cli.data.io import probe_image, read_image, to_uint8
from sanasr_cli.data.resample import upsample_bicubic
from sanasr_cli.errors import ImageReadError, SanaSRError
from sanasr_cli.models.tiling import TilePlan, count_tiles, parse_tile, plan_tiles
from sanasr_cli.pipeline.sana_sr import SanaSRPipeline
from sanasr_cli.pipeline.upscale import MAX_SCALE, MODEL_SCALE, output_size, resize_to

MODEL_RULE = "model's rule"  # the tagger choice that keeps the model's own prompt rule
CACHED_MODELS = 2  # models kept loaded: the one in use and the one before (switching back is instant)
MAX_MODEL_NAME = 4096  # characters of a model name or folder path typed into the page
MAX_PROMPT = 10_000  # characters of the page's prompt box


class DemoInputError(SanaSRError):
    """A photo or a setting the page cannot take; the message is shown on the page as it is."""


@dataclass
class DemoRequest:
    """The page's settings for one photo (the flags of `sanasr upscale` of the same names)."""

    model: str = "nano"
    scale: float = 4.0
    color_fix: str = "wavelet"
    tile: str = "auto"
    tagger: str = MODEL_RULE  # MODEL_RULE or a tagger name (none, clip, dape)
    prompt: str = ""


@dataclass
class DemoResult:
    sr: Image.Image  # the pipeline's output
    bicubic: Image.Image  # the LQ upsampled bicubically to the SR's size (the model's own input, resized)
    png: Path  # sr as a full-resolution PNG, for the download
    prompt: str
    seconds: float  # the pipeline call alone
    load_seconds: float  # loading the model for this request (0 when it was cached)
    plan: TilePlan
    input_size: tuple[int, int]  # (width, height)


class PipelineCache:
    """One `SanaSRPipeline.from_pretrained` per (model, device), kept for the next request; the least recently
    used is dropped beyond `size`. Taggers other than the model's rule are built once each, too."""

    def __init__(self, device="cpu", dtype=torch.float32, base: str | None = None, seed: int = 0, size=CACHED_MODELS):
        self.device, self.dtype, self.base, self.seed, self.size = torch.device(device), dtype, base, seed, size
        self._pipes: collections.OrderedDict[tuple[str, str], SanaSRPipeline] = collections.OrderedDict()
        self._taggers: dict[str, object] = {}
        self.loads = 0  # how many models were loaded (the cache's own check)

    def get(self, model: str) -> tuple[SanaSRPipeline, float]:
        """(the pipeline of `model`, seconds spent loading it now: 0 when it was cached)."""
        key = (str(model), str(self.device))
        if key in self._pipes:
            self._pipes.move_to_end(key)
            return self._pipes[key], 0.0
        start = time.perf_counter()
        pipe = SanaSRPipeline.from_pretrained(
            model, device=self.device, dtype=self.dtype, base=self.base, seed=self.seed
        )
        self.add(model, pipe)
        return pipe, time.perf_counter() - start

    def add(self, model: str, pipe: SanaSRPipeline) -> None:
        """Keep `pipe` (loaded on this cache's device) as the pipeline of `model`."""
        self.loads += 1
        self._pipes[(str(model), str(self.device))] = pipe
        while len(self._pipes) > self.size:
            self._pipes.popitem(last=False)

    def with_tagger(self, pipe: SanaSRPipeline, tagger: str) -> SanaSRPipeline:
        """`pipe` itself for the model's rule, else a pipeline over the same model with that tagger (the model's
        template and tag limit kept, as `sanasr upscale --tagger` does)."""
        if tagger == MODEL_RULE or tagger == pipe.prompt_rule.tagger:
            return pipe
        from dataclasses import replace

        from sanasr_cli.prompts.rule import tagger_from_rule

        if tagger not in self._taggers:
            rule = replace(pipe.prompt_rule, tagger=tagger, tagger_options={})
            self._taggers[tagger] = tagger_from_rule(rule, device=self.device)
        return SanaSRPipeline(pipe.model, tagger=self._taggers[tagger])


def runnable_models(first: str, base: str | None = None) -> list[str]:
    """The models the page offers: `first`, then the ones `--model` runs offline (presets.OFFLINE_MODELS: nano,
    nano-fast, tiny), then any other of presets.MODEL_NAMES whose weights are on this machine (sana-600m-512 with a
    local --base / $SANASR_BASE folder, or in the Hugging Face cache); never a counting-only preset (random weights
    at real size) nor one that would need a download."""
    from sanasr_cli.hub import available_here
    from sanasr_cli.models.presets import MODEL_NAMES, OFFLINE_MODELS, PRESETS, default_base_source

    names = list(OFFLINE_MODELS)
    for name in MODEL_NAMES:
        preset = PRESETS.get(name)
        if name in names or preset is None or preset.counting_only:
            continue
        if preset.hub_id is None or available_here(default_base_source(preset, base)):
            names.append(name)
    return list(dict.fromkeys([first, *names]))


def check_request(request: DemoRequest, taggers: list[str] | None = None) -> None:
    """DemoInputError (one line for the page) for a setting the page cannot take, whatever a client sent: the
    checks of the flags of `sanasr upscale` of the same names, and a model name of sensible length."""
    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.pipeline.color import COLOR_FIXES

    if not isinstance(request.model, str) or not request.model.strip() or len(request.model) > MAX_MODEL_NAME:
        raise DemoInputError(f"the model must be a preset name or a folder path of at most {MAX_MODEL_NAME} characters")
    preset = PRESETS.get(request.model)
    if preset is not None and preset.counting_only:
        raise DemoInputError(f"{request.model} has random weights, for counting with `sanasr bench` only: pick another")
    scale = request.scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1 <= scale <= MAX_SCALE:
        raise DemoInputError(f"scale must be a number from 1 to {MAX_SCALE:g}, not {str(scale)[:40]}")
    if request.color_fix not in COLOR_FIXES:
        raise DemoInputError(f"colour fix takes {', '.join(COLOR_FIXES)}, not {str(request.color_fix)[:40]!r}")
    if taggers is not None and request.tagger not in taggers:
        raise DemoInputError(f"tagger takes {', '.join(taggers)}, not {str(request.tagger)[:40]!r}")
    if not isinstance(request.prompt, str) or len(request.prompt) > MAX_PROMPT:
        raise DemoInputError(f"the prompt must be text of at most {MAX_PROMPT} characters")


def check_photo(path: str | Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the photo at `path` from its header; DemoInputError naming the file (not the server's
    copy of it) when it is not a readable image or has more than `max_pixels` pixels."""
    path = Path(path)
    try:
        (w, h), _, _ = probe_image(path, max_pixels=2**62)  # our own limit below, with the demo's wording
    except ImageReadError as e:
        raise DemoInputError(str(e).replace(str(path), path.name, 1)) from None
    if w * h > max_pixels:
        raise DemoInputError(
            f"{path.name} is {w} x {h} = {w * h / 1e6:.3g} MP, above this demo's limit of {max_pixels / 1e6:.3g} MP "
            "(--max-pixels): crop or downscale it, or restart `sanasr demo` with a higher --max-pixels"
        )
    return w, h


def upscale_photo(
    cache: PipelineCache,
    path: str | Path,
    request: DemoRequest,
    out_dir: Path,
    max_pixels: int,
    on_tile: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Restore the photo at `path` as `pipe(image, prompt=, scale=, tile=, color_fix=)` does, and write the PNG
    under `out_dir`. on_tile(done, total) is called after each LinearDiT tile (progress). DemoInputError for a
    photo or setting it cannot take; a model that cannot load raises its own SanaSRError."""
    check_request(request)
    size = check_photo(path, max_pixels)
    try:
        tile = parse_tile(str(request.tile))
    except ValueError as e:
        raise DemoInputError(str(e).replace("--tile", "tile")) from None
    # the CLI's reader: EXIF orientation applied, gray replicated, 16 bits kept; alpha dropped (as the API does)
    lq, _ = read_image(path, max_pixels=max_pixels)
    pipe, load_seconds = cache.get(request.model)
    pipe = cache.with_tagger(pipe, request.tagger)
    plan = plan_tiles(pipe.model, lq.shape[1] * MODEL_SCALE, lq.shape[2] * MODEL_SCALE, tile)
    start = time.perf_counter()
    with count_tiles(pipe.model.restorer, plan.dit_tiles, on_tile):
        out = pipe(
            lq, prompt=request.prompt.strip() or None, scale=request.scale, tile=tile, color_fix=request.color_fix
        )
    seconds = time.perf_counter() - start
    sr = out.images[0]
    ow, oh = output_size(size[0], size[1], request.scale)
    bicubic = resize_to(upsample_bicubic(lq[None], MODEL_SCALE), oh, ow)[0]
    png = _result_path(out_dir, Path(path).stem, request.scale)
    sr.save(png)
    return DemoResult(
        sr=sr,
        bicubic=Image.fromarray(to_uint8(bicubic)),
        png=png,
        prompt=out.prompts[0],
        seconds=seconds,
        load_seconds=load_seconds,
        plan=out.tile_plans[0],
        input_size=size,
    )


def _result_path(out_dir: Path, stem: str, scale: float, keep: int = 16) -> Path:
    """out_dir/<n>/<stem>_x<scale>.png in a new numbered folder; folders older than the last `keep` are
    removed (they are the demo's own, written here)."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    numbered = sorted((int(p.name), p) for p in out_dir.iterdir() if p.is_dir() and p.name.isdigit())
    n = numbered[-1][0] + 1 if numbered else 0
    for _, old in numbered[: max(0, len(numbered) + 1 - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    folder = out_dir / str(n)
    folder.mkdir()
    return folder / f"{stem}_x{scale:g}.png"
