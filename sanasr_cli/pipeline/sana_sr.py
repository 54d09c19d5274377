"""`SanaSRPipeline`: the Python API, `pipe = SanaSRPipeline.from_pretrained(...); pipe(image)`.

A thin typed face over the library, not a second inference path: it converts the inputs to (3, h, w) float32
in [0, 1], builds each prompt with the model's own prompt rule (`prompts/rule.py`), then restores every image
with `upscale_tensor` (which plans the tiles, pads, restores with the OOM retry, colour-fixes and resizes),
exactly as `sanasr upscale` does for a file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from sanasr_cli.data.io import to_uint8, uint8_to_tensor
from sanasr_cli.models.sanasr import SanaSR, load_model
from sanasr_cli.models.tiling import TilePlan, parse_tile
from sanasr_cli.pipeline.color import COLOR_FIXES
from sanasr_cli.pipeline.upscale import upscale_tensor
from sanasr_cli.prompts.rule import PromptRule, prompt_for_image, tagger_from_rule
from sanasr_cli.prompts.taggers import Tagger

ImageInput = Image.Image | np.ndarray | torch.Tensor
OUTPUT_TYPES = ("pil", "np", "pt")
# PIL modes converted with Image.convert("RGB") (alpha dropped, palette expanded); deeper modes are refused
# rather than silently clipped to 8 bits
_PIL_8BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


@dataclass
class SanaSRPipelineOutput:
    """One entry per input image, in input order.

    images: PIL RGB images ("pil"), (H, W, 3) float32 arrays in [0, 1] ("np") or (3, H, W) float32 CPU tensors
    in [0, 1] ("pt"); always a list, since the inputs may differ in size.
    prompts: the prompt each image was restored with (user prompt, tags, quality template).
    tile_plans: the tile plan finally used for each image (after any out-of-memory retries).
    """

    images: list
    prompts: list[str]
    tile_plans: list[TilePlan]


class SanaSRPipeline:
    """One-step x4 super-resolution of in-memory images.

    Example (runs offline on CPU; "tiny" has random weights, "nano" is the trained model shipped with sanasr):

    >>> from PIL import Image
    >>> from sanasr_cli import SanaSRPipeline
    >>> pipe = SanaSRPipeline.from_pretrained("tiny")
    >>> out = pipe(Image.new("RGB", (16, 12), (200, 120, 40)))
    >>> out.images[0].size
    (64, 48)
    """

    def __init__(
        self,
        model: SanaSR,
        tagger: Tagger | None = None,
        tag_cache: str | Path | None = None,
        prompt_rule: PromptRule | None = None,
    ):
        """model: a loaded SanaSR (`load_model`); tagger: a built tagger to use instead of the rule's own (built
        on first use, behind the tag cache `tag_cache`, see `prompts/cache.py`); prompt_rule: the rule to build
        prompts with (default: the model's; `PromptRule.with_overrides` makes one)."""
        self.model = model
        self.prompt_rule = prompt_rule if prompt_rule is not None else model.description.prompt
        self._tagger = tagger
        self._tag_cache = tag_cache

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        base: str | None = None,
        seed: int = 0,
        tag_cache: str | Path | None = None,
        full_vae: bool = False,
        tagger: str | None = None,
        tagger_weights: str | Path | None = None,
        tagger_model: str | Path | None = None,
        tag_vocab: str | Path | None = None,
        template: str | None = None,
    ) -> SanaSRPipeline:
        """A preset (nano, tiny, sana-600m-512) or a model directory, loaded as `sanasr upscale --model` does.

        base: hub id or local folder of the SANA base the preset or model directory builds on (default
        $SANASR_BASE or the hub); seed: weights of random-weight presets (tiny); full_vae: run the teacher DC-AE
        instead of the model's distilled students (`nano-fast`, or a model directory written by `sanasr distill`).
        tagger, tagger_weights, tagger_model, tag_vocab, template: change the model's prompt rule as the prompt
        flags of `sanasr upscale` do (`PromptRule.with_overrides`; PromptRuleError, a ValueError, for an unknown
        tagger or an option of another tagger). `rule_mismatch(pipe.model.description.prompt, pipe.prompt_rule)`
        lists what then differs from the rule the model was trained with."""
        model = load_model(model, device=device, dtype=dtype, base=base, seed=seed, full_vae=full_vae)
        rule = model.description.prompt.with_overrides(tagger, tagger_weights, tagger_model, tag_vocab, template)
        return cls(model, tag_cache=tag_cache, prompt_rule=rule)

    @property
    def tagger(self) -> Tagger:
        """The model's prompt-rule tagger (built once; TaggerUnavailableError when it cannot be)."""
        if self._tagger is None:
            self._tagger = tagger_from_rule(self.prompt_rule, device=self.model.device, cache_dir=self._tag_cache)
        return self._tagger

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | Sequence[ImageInput],
        prompt: str | Sequence[str] | None = None,
        scale: float = 4.0,
        tile: str | int = "auto",
        color_fix: str = "wavelet",
        output_type: Literal["pil", "np", "pt"] = "pil",
        batch_size: int = 1,
    ) -> SanaSRPipelineOutput:
        """Super-resolve one image or a list of them (sizes may differ).

        image: PIL image (EXIF orientation applied, alpha dropped), (H, W, 3) or (H, W) numpy array (uint8, or
        float in [0, 1]), (3, H, W) or (B, 3, H, W) float tensor in [0, 1], or a list of any of these.
        prompt: extra words put before the tags and the quality template (one string for all, or one each).
        scale: output size = round(scale x input size); the model runs at x4 and other scales resize its result.
        tile: "auto", "none" or a tile side in pixels of the x4 image; color_fix: wavelet, adain or none;
        batch_size: tiles per step. Raises ValueError for inputs or options it cannot take.
        """
        _check_options(scale, color_fix, output_type, batch_size)
        tile = parse_tile(str(tile))
        items = _as_images(image)
        prompts = _per_image(prompt, len(items))
        # tag everything first, then free the tagger's accelerator memory for the restoration (as the CLI)
        tagger = self.tagger
        try:
            full = [
                prompt_for_image(self.prompt_rule, lq, path, tagger, user)
                for (lq, path), user in zip(items, prompts, strict=True)
            ]
        finally:
            tagger.release()
        images, plans = [], []
        for (lq, _), p in zip(items, full, strict=True):
            sr, plan = upscale_tensor(self.model, lq, p, scale, tile, color_fix, batch_size, return_plan=True)
            images.append(_to_output(sr, output_type))
            plans.append(plan)
        return SanaSRPipelineOutput(images=images, prompts=full, tile_plans=plans)


def _check_options(scale: float, color_fix: str, output_type: str, batch_size: int) -> None:
    from sanasr_cli.pipeline.upscale import MAX_SCALE

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, not {scale!r}")
    if scale > MAX_SCALE:
        raise ValueError(f"scale must be at most {MAX_SCALE:g}, not {scale!r}")
    if color_fix not in COLOR_FIXES:
        raise ValueError(f"color_fix takes {', '.join(COLOR_FIXES)}, not {color_fix!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type takes {', '.join(OUTPUT_TYPES)}, not {output_type!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, not {batch_size!r}")


def _per_image(prompt: str | Sequence[str] | None, n: int) -> list[str | None]:
    if prompt is None or isinstance(prompt, str):
        return [prompt] * n
    if not isinstance(prompt, Sequence):  # prompt=5: named, not a TypeError deep in list()
        raise TypeError(f"prompt must be a string or a list of {n} strings, not {type(prompt).__name__}")
    prompts = list(prompt)
    if len(prompts) != n or not all(p is None or isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be one string or a list of {n} strings (one per image), not {prompt!r}")
    return prompts


def _as_images(image) -> list[tuple[torch.Tensor, Path | None]]:
    """Inputs -> [((3, h, w) float32 CPU in [0, 1], the file it came from or None)]: B x CHW tensors split up."""
    inputs = list(image) if isinstance(image, (list, tuple)) else [image]
    if not inputs:
        raise ValueError("no images given (an empty list)")
    out: list[tuple[torch.Tensor, Path | None]] = []
    for i, x in enumerate(inputs):
        where = f"image {i}" if len(inputs) > 1 else "image"
        if isinstance(x, Image.Image):
            out.append(_from_pil(x, where))
        elif isinstance(x, np.ndarray):
            out.append((_from_numpy(x, where), None))
        elif isinstance(x, torch.Tensor):
            out.extend((t, None) for t in _from_tensor(x, where))
        else:
            raise ValueError(f"{where}: expected a PIL image, numpy array or torch tensor, not {type(x).__name__}")
    for t, _ in out:
        if min(t.shape[-2:]) < 1:
            raise ValueError(f"empty image of size {tuple(t.shape[-2:])} (height, width)")
    return out


def _from_pil(im: Image.Image, where: str) -> tuple[torch.Tensor, Path | None]:
    if im.mode not in _PIL_8BIT_MODES:
        raise ValueError(
            f"{where}: PIL mode {im.mode} is not 8-bit; pass a float numpy array in [0, 1] instead, "
            "or upscale the file with `sanasr upscale` (which keeps 16 bits)"
        )
    # the file it was opened from lets the `file` tagger and the tag cache find it, as for the CLI
    path = Path(im.filename) if getattr(im, "filename", "") else None
    rgb = ImageOps.exif_transpose(im).convert("RGB")  # read_image applies EXIF orientation too
    return uint8_to_tensor(np.asarray(rgb)), path


def _from_numpy(a: np.ndarray, where: str) -> torch.Tensor:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"{where}: a numpy image must be (H, W, 3) or (H, W), not shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)  # grayscale replicated, as read_image does
    if a.dtype == np.uint8:
        return uint8_to_tensor(np.ascontiguousarray(a))
    if np.issubdtype(a.dtype, np.floating):
        return _checked_unit(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1), where)
    raise ValueError(f"{where}: a numpy image must be uint8, or float in [0, 1], not {a.dtype}")


def _from_tensor(t: torch.Tensor, where: str) -> list[torch.Tensor]:
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"{where}: a tensor image must be (3, H, W) or (B, 3, H, W), not shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{where}: a tensor image must be float in [0, 1], not {t.dtype}")
    if t.is_meta:  # no values to restore
        raise ValueError(f"{where}: a meta-device tensor holds no values; pass a CPU or CUDA tensor")
    if t.ndim == 4 and t.shape[0] == 0:
        raise ValueError(f"{where}: an empty batch of shape {tuple(t.shape)}")
    t = _checked_unit(t.detach().to("cpu", torch.float32), where)
    return list(t) if t.ndim == 4 else [t]


def _checked_unit(t: torch.Tensor, where: str) -> torch.Tensor:
    # values outside [0, 1] mean another convention ([-1, 1], 0..255): refused, not silently clamped
    if t.numel() and not (torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1):
        raise ValueError(f"{where}: float values must lie in [0, 1] (got {float(t.min()):.3g} .. {float(t.max()):.3g})")
    return t.contiguous()


def _to_output(sr: torch.Tensor, output_type: str):
    if output_type == "pil":
        return Image.fromarray(to_uint8(sr))
    if output_type == "np":
        return sr.float().permute(1, 2, 0).numpy()
    return sr.float()
