"""Tiled restoration of large images: tile plan, latent tiling of the transformer, tiled VAE, OOM retry.

All sizes are planned in latent units (one latent pixel = `model.codec.factor` image pixels: 32 for the
real DC-AE, 8 for the tiny preset), so every tile boundary falls on the VAE's grid.

- Transformer: overlapping latent tiles (overlap = tile / 4) restored one step each, then averaged with
  smooth weights (`tiled_apply`): 1 inside a tile, near 0 at its outer edge, a raised cosine between, on each
  side that overlaps a neighbour, normalised by the sum of weights. Diffusers has no tiling for
  SanaTransformer2DModel, hence this code.
- VAE: the same `tiled_apply`, blending encoder outputs in latent space and decoder outputs in pixel space.
  A distilled student encoder (models/students.py) reads the LQ image: it tiles in LQ pixels
  (`tiled_encode_lq`), on the same latent grid.
  Diffusers' own `AutoencoderDC.enable_tiling` was tried first: it crossfades linearly, and in
  `tiled_encode` over only (tile - stride) / factor latents, and it gives a tile's edge (where the
  decoder's artefacts are strongest) half weight in the middle of the overlap. On the tiny preset with
  96 px tiles its largest column jump inside the image was 2.0x the median latent-grid-line jump (whole
  image: 1.25x); with the weights here the seam test (tests/test_tiling.py) measures 1.06x at the tile
  borders, so sanasr tiles the VAE itself. Tiles of 8 latents or fewer show seams either way.
- `--tile auto`: on CUDA, tile sizes from free memory and per-pixel / per-token cost estimates
  (ESTIMATES below; not measured on a GPU yet: OOM is the safety net); on CPU the whole image unless
  the x4 image exceeds CPU_WHOLE_IMAGE_PIXELS.
- OOM: `run_with_oom_retry` halves the tiles (whole image -> half its longer side) and tries again,
  down to MIN_LATENT_TILE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

MIN_LATENT_TILE = 4  # below this the overlap is a single latent pixel and tiles stop being useful
CPU_WHOLE_IMAGE_PIXELS = 4096 * 4096  # on CPU, x4 images up to this are restored whole (RAM, not VRAM, limits)
CPU_TILE_PIXELS = 2048  # tile side (x4 pixels) used on CPU above that
MEMORY_FRACTION = 0.6  # share of the free CUDA memory a plan may use (allocator fragmentation, colour fix, ...)
# Peak-activation estimates (NOT measured on a GPU; conservative guesses from the layer widths): bytes per
# image pixel per channel of the decoder's widest full-resolution stage, and per latent token per hidden unit.
ESTIMATES = {"vae_buffers_per_channel": 12, "dit_buffers_per_hidden": 16}


@dataclass
class TilePlan:
    """How one image is processed. Tiles are squares of `*_tile` latent pixels; None means the whole image."""

    factor: int
    latent_size: tuple[int, int]  # (h, w) of the padded latent
    dit_tile: int | None = None
    vae_tile: int | None = None
    reason: str = ""
    oom_retries: int = 0

    @property
    def dit_overlap(self) -> int:
        return overlap_for(self.dit_tile)

    @property
    def dit_tiles(self) -> int:
        if self.dit_tile is None:
            return 1
        h, w = self.latent_size
        return len(tile_starts(h, self.dit_tile, self.dit_overlap)) * len(
            tile_starts(w, self.dit_tile, self.dit_overlap)
        )

    def halved(self) -> TilePlan | None:
        """The plan after an out-of-memory error, or None when the tiles cannot shrink any more."""
        longest = max(self.latent_size)

        def half(t: int | None) -> int:
            return max(MIN_LATENT_TILE, (longest if t is None else min(t, longest)) // 2)

        dit, vae = half(self.dit_tile), half(self.vae_tile)
        if (dit, vae) == (self.dit_tile, self.vae_tile) or longest <= MIN_LATENT_TILE:
            return None
        return replace(
            self,
            dit_tile=dit,
            vae_tile=vae,
            oom_retries=self.oom_retries + 1,
            reason=f"{self.reason}; out of memory -> halved",
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            dit_overlap=self.dit_overlap if self.dit_tile else 0,
            dit_tiles=self.dit_tiles,
            tile_pixels=None if self.dit_tile is None else self.dit_tile * self.factor,
            vae_tile_pixels=None if self.vae_tile is None else self.vae_tile * self.factor,
        )
        return d


def overlap_for(tile: int | None) -> int:
    return 0 if tile is None else max(1, tile // 4)


def tile_starts(total: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of `tile`-long tiles covering [0, total), overlapping by at least `overlap`; the last
    tile ends at total."""
    if total <= tile:
        return [0]
    stride = max(1, tile - overlap)
    return list(range(0, total - tile, stride)) + [total - tile]


def parse_tile(spec: str) -> str | int:
    """'auto' | 'none' | N (tile side in pixels of the x4 image) -> 'auto' | 'none' | N, else ValueError."""
    s = str(spec).strip().lower()
    if s in ("auto", "none"):
        return s
    if s.isdigit() and int(s) > 0:
        return int(s)
    raise ValueError(f"--tile takes auto, none or a tile size in pixels (e.g. 512), not '{spec}'")


def plan_tiles(
    model,
    height: int,
    width: int,
    tile: str | int = "auto",
    device: torch.device | None = None,
    free_bytes: int | None = None,
) -> TilePlan:
    """Plan for an x4 image of height x width pixels (the model's input resolution).

    free_bytes: the accelerator memory to plan for under 'auto' (default: CUDA's free memory on a CUDA
    device; given, it plans as on CUDA whatever the device, which is how the planner is tested)."""
    f = int(model.codec.factor)
    latent = (-(-height // f), -(-width // f))
    plan = TilePlan(factor=f, latent_size=latent)
    longest = max(latent)
    if tile == "none":
        plan.reason = "--tile none: whole image"
        return plan
    if isinstance(tile, int):
        t = max(MIN_LATENT_TILE, round(tile / f))
        plan.reason = f"--tile {tile}"
        if t < longest:
            plan.dit_tile = plan.vae_tile = t
        return plan
    device = device or model.device
    if device.type != "cuda" and free_bytes is None:
        if height * width <= CPU_WHOLE_IMAGE_PIXELS:
            plan.reason = "auto on CPU: whole image"
            return plan
        t = CPU_TILE_PIXELS // f
        plan.dit_tile = plan.vae_tile = t if t < longest else None
        plan.reason = f"auto on CPU: image above {CPU_WHOLE_IMAGE_PIXELS / 1e6:.1f} MP, {CPU_TILE_PIXELS} px tiles"
        return plan
    free = free_bytes if free_bytes is not None else torch.cuda.mem_get_info(device)[0]
    budget = free * MEMORY_FRACTION
    elem = torch.finfo(model.dtype).bits // 8
    vae_channels = max(model.codec.vae.config.decoder_block_out_channels[:1] or [128])
    vae_bytes_per_latent = f * f * vae_channels * elem * ESTIMATES["vae_buffers_per_channel"]
    cfg = model.transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    dit_bytes_per_token = hidden * cfg.mlp_ratio * elem * ESTIMATES["dit_buffers_per_hidden"]
    vae_t = int(math.sqrt(budget / vae_bytes_per_latent))
    dit_t = int(math.sqrt(budget / dit_bytes_per_token))
    plan.vae_tile = max(MIN_LATENT_TILE, vae_t) if vae_t < longest else None
    plan.dit_tile = max(MIN_LATENT_TILE, dit_t) if dit_t < longest else None
    plan.reason = f"auto: {free / 2**20:.0f} MiB free"
    return plan


def _ramp(n: int) -> torch.Tensor:
    """n weights rising from ~0 to ~1: the outer quarter (at least one element) near 0, where tiles carry edge
    artefacts (the decoder's are strongest at a tile's last latent), then a raised cosine. Never exactly 0."""
    margin = max(1, n // 4) if n > 1 else 0
    rise = n - margin
    up = torch.sin(0.5 * math.pi * (torch.arange(rise, dtype=torch.float32) + 0.5) / rise) ** 2
    return torch.cat([torch.full((margin,), 1e-3), up])


def tile_weight_1d(length: int, start: int, total: int, overlap: int) -> torch.Tensor:
    """Weights along one axis of a tile at `start` in [0, total): 1 inside, ramps on sides with neighbours."""
    w = torch.ones(length)
    if overlap > 0 and length > 1:
        o = min(overlap, length)
        if start > 0:
            w[:o] = _ramp(o)
        if start + length < total:
            w[-o:] = torch.minimum(w[-o:], _ramp(o).flip(0))
    return w


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int | None,
    overlap: int | None = None,
    out_scale: float = 1.0,
    batch_size: int = 1,
) -> torch.Tensor:
    """Apply fn over overlapping square tiles of x (B, C, H, W) and blend the results with smooth weights.

    fn: (N, C, t, t) -> (N, C', t * out_scale, t * out_scale) (out_scale: the VAE factor for decode,
    1 / factor for encode, 1 for the transformer). Weights are sum-normalised, so where fn is the identity
    the result is exactly x. tile / overlap are in x's units (overlap default: tile // 4); tile=None applies
    fn once. Returns float32.
    """
    if tile is None or (tile >= x.shape[-2] and tile >= x.shape[-1]):
        return fn(x).float()
    overlap = overlap_for(tile) if overlap is None else overlap
    b, _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    oh, ow = round(h * out_scale), round(w * out_scale)
    o_overlap = max(1, round(overlap * out_scale))
    boxes = [(y, xx) for y in tile_starts(h, th, overlap) for xx in tile_starts(w, tw, overlap)]
    out, weight_sum = None, torch.zeros(1, 1, oh, ow, device=x.device)
    per_call = max(1, batch_size // b)
    for i in range(0, len(boxes), per_call):
        group = boxes[i : i + per_call]
        res = fn(torch.cat([x[:, :, y : y + th, xx : xx + tw] for y, xx in group], 0)).float()
        if out is None:
            out = torch.zeros(b, res.shape[1], oh, ow, device=x.device)
        rth, rtw = res.shape[-2:]
        for k, (y, xx) in enumerate(group):
            oy, ox = round(y * out_scale), round(xx * out_scale)
            wy = tile_weight_1d(rth, oy, oh, o_overlap).to(x.device)
            wx = tile_weight_1d(rtw, ox, ow, o_overlap).to(x.device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, oy : oy + rth, ox : ox + rtw] += res[k * b : (k + 1) * b] * wt
            weight_sum[:, :, oy : oy + rth, ox : ox + rtw] += wt
    return out / weight_sum


def tiled_latent_apply(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int | None, batch_size: int = 1
) -> torch.Tensor:
    """The transformer's tiling: tiles of `tile` latents over z (B, C, h, w); see tiled_apply."""
    return tiled_apply(fn, z, tile, batch_size=batch_size)


def tiled_encode(codec, x: torch.Tensor, tile: int | None, batch_size: int = 1) -> torch.Tensor:
    """E(x) for (B, 3, H, W) in [0, 1], H, W multiples of the factor, in tiles of `tile` latents."""
    f = codec.factor
    return tiled_apply(
        codec.encode,
        x,
        None if tile is None else tile * f,
        None if tile is None else overlap_for(tile) * f,
        out_scale=1 / f,
        batch_size=batch_size,
    )


def tiled_encode_lq(codec, lq: torch.Tensor, tile: int | None, batch_size: int = 1) -> torch.Tensor:
    """The student encoder's E(x_L) for an LQ batch (B, 3, h, w) in [0, 1], h, w multiples of
    `codec.lq_factor`, in tiles of `tile` latents: it tiles in LQ pixels (tile * lq_factor of them, the same
    overlap), so the tile plan of the x4 image holds unchanged."""
    f = codec.lq_factor
    return tiled_apply(
        codec.encode_lq,
        lq,
        None if tile is None else tile * f,
        None if tile is None else overlap_for(tile) * f,
        out_scale=1 / f,
        batch_size=batch_size,
    )


def tiled_decode(codec, z: torch.Tensor, tile: int | None, batch_size: int = 1) -> torch.Tensor:
    """D(z) -> (B, 3, H, W) float32 in [0, 1], in tiles of `tile` latents blended in pixel space."""
    return tiled_apply(codec.decode, z, tile, out_scale=codec.factor, batch_size=batch_size).clamp_(0, 1)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def run_with_oom_retry(fn: Callable[[TilePlan], torch.Tensor], plan: TilePlan) -> tuple[torch.Tensor, TilePlan]:
    """fn(plan); on out-of-memory halve the tiles and retry until they cannot shrink (then re-raise)."""
    while True:
        try:
            return fn(plan), plan
        except Exception as e:
            if not is_oom(e):
                raise
            smaller = plan.halved()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if smaller is None:
                raise
            plan = smaller


class count_tiles:  # noqa: N801 - used as a context manager, like contextlib's
    """Calls on_tile(done, total) after each forward of `module` (the restorer runs once per LinearDiT tile of
    the plan: progress for one large image); the hook only counts, the computation is untouched. A module that
    is not a torch module (an ONNX export's) is not counted."""

    def __init__(self, module, total: int, on_tile: Callable[[int, int], None] | None):
        self.module, self.total, self.on_tile, self.done, self.handle = module, total, on_tile, 0, None

    def __enter__(self):
        if self.on_tile is not None and isinstance(self.module, torch.nn.Module):
            self.handle = self.module.register_forward_hook(self._hook)
        return self

    def _hook(self, *_):
        self.done += 1
        self.on_tile(min(self.done, self.total), self.total)  # an out-of-memory retry makes more tiles

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
