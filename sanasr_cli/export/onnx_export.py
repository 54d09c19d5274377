"""`sanasr export`: a loaded SanaSR -> an ONNX folder (contract in export/contract.py).

Each stage is exported on its own with `torch.onnx.export(dynamo=True, optimize=False)`, dynamic in batch,
height and width; model.onnx is their composition (onnx.compose), so the graph a deployer runs is made of the
very files sanasr's host path runs and tests.

Why optimize=False: the exporter's onnxscript optimizer has a rewrite rule "x + 0 -> x" that matches constants
with math.isclose(..., abs_tol=1e-8), so SANA's linear attention `num / (den + 1e-15)` (diffusers'
SanaMultiscaleLinearAttention in the DC-AE decoder, and the LinearDiT's SanaLinearAttnProcessor2_0) loses its
eps. Where a token's ReLU'd query meets only zero keys, den is exactly 0 and PyTorch's 0 / 1e-15 = 0 becomes
0 / 0 = NaN in ONNX: 3876 of 12288 values of nano's decoded 64x64 image were NaN. Unoptimised, the graph keeps
the eps and matches PyTorch; each graph is then constant-folded by ONNX Runtime's basic optimisations, offline
(`fold_constants`: what ORT does on load anyway, eps kept), which --quantize int8 needs to see the weights.
Why heights and widths are multiples: the restorer pads latents to the transformer's patch with a Python `if`
that torch.export would specialise, so the graphs take latent sides that are multiples of the patch (sanasr's
host path pads; a deployer feeding model.onnx keeps LQ sides multiples of the contract's `multiple_of`).
Why external data: a protobuf holds at most 2 GiB, and SANA-600M's restorer alone is 2.4 GB in fp32. A model whose
weights exceed `EXTERNAL_DATA_ABOVE` keeps each stage's weights in `<stage>.onnx.data` beside it through every step
(tracing, folding, quantizing), and model.onnx (their composition) points at those same files: no step holds a
graph's weights twice, and none is stored twice on the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sanasr_cli.errors import SanaSRError, UnsafeOutputError
from sanasr_cli.export.contract import (
    CONTRACT_FORMAT,
    CONTRACT_NAME,
    CONTRACT_VERSION,
    MODEL_NAME,
    PROMPT_FILE,
    STAGE_FILES,
    OnnxRuntimeMissingError,
)

QUANTIZATIONS = ("none", "int8")
MODEL_SCALE = 4
# a model whose weights (bytes) exceed this is exported with external data (`<graph>.data`): SANA-600M (3.7 GB in fp32),
# not nano (9 MB); a test lowers it to take that path on the tiny preset
EXTERNAL_DATA_ABOVE = 1 << 30
DATA_SUFFIX = ".data"


class ExportMemoryError(SanaSRError):
    """The export ran out of memory in one of its steps (the message names it)."""


MEMORY_WORDS = ("bad_alloc", "out of memory", "failed to allocate", "cannot allocate memory", "can't allocate memory")


@contextlib.contextmanager
def export_step(step: str, on_step: Callable[[str], None] | None = None):
    """Inside, running out of memory is ExportMemoryError naming `step`: one line, not an unforeseen error.
    on_step(step) is called first (the command prints each step: an export takes minutes)."""
    from sanasr_cli.untrusted import first_line

    if on_step is not None:
        on_step(step)

    try:
        yield
    except MemoryError:
        raise ExportMemoryError(f"sanasr export ran out of memory while {step}: {_MORE_MEMORY}") from None
    except Exception as e:
        if any(w in str(e).lower() for w in MEMORY_WORDS):
            raise ExportMemoryError(
                f"sanasr export ran out of memory while {step} ({first_line(e)}): {_MORE_MEMORY}"
            ) from None
        raise


_MORE_MEMORY = "free memory (other programs) or export on a machine with more (docs/export.md: what each step needs)"


@dataclass
class ExportResult:
    folder: Path
    contract: dict
    seconds: float


# torch.export fails on the stages before 2.12 (2.7-2.11: "Constraints violated (batch)"; 2.6: the FX graph does not
# decompose; .ci/oldest): pyproject's floor, checked again here for an environment that forced an older torch
EXPORT_MIN_TORCH = "2.12"


def require_export_tools() -> None:
    """onnx, onnxscript and onnxruntime (quantization, checks) importable and a torch that can export, else one
    line saying how."""
    from torch.torch_version import TorchVersion

    for name in ("onnxruntime", "onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise OnnxRuntimeMissingError(
                f"{name} is not installed; exporting needs the ONNX extra: pip install 'sanasr[onnx]'"
            ) from None
    if TorchVersion(torch.__version__) < EXPORT_MIN_TORCH:
        raise OnnxRuntimeMissingError(
            f"exporting needs torch >= {EXPORT_MIN_TORCH} (this is {torch.__version__}): pip install 'sanasr[onnx]'"
            " brings it"
        )


def check_export_target(out: Path, overwrite: bool) -> None:
    """OUT must be new or empty (and creatable: its parent a folder that can be written); with overwrite, a
    folder an earlier `sanasr export` provably wrote (`check_earlier_export`). Checked before the work and again
    right before the new folder is moved into place (a folder made at OUT meanwhile is never replaced)."""
    from sanasr_cli.safe_files import check_can_create

    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UnsafeOutputError(f"{out} exists and is not a folder (a file or link): it is never replaced")
    if not out.exists():
        check_can_create(out, "-o")
        return
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UnsafeOutputError(f"{out} exists and is not empty (pass --overwrite to replace an earlier export)")
    check_earlier_export(out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_earlier_export(out: Path) -> None:
    """UnsafeOutputError unless every entry of `out` is a file an earlier `sanasr export` wrote, as it wrote it:
    its contract must be a sanasr contract recording each file's sha256 (exports since sanasr records them), and
    every other entry a regular file (no folder, no link) named there with that hash. A contract alone proves
    nothing (`{}` would do): a README.md, or a `model.onnx/` folder, of the user's is never deleted."""
    from sanasr_cli.export.contract import read_contract_file

    if not (out / CONTRACT_NAME).is_file() or (out / CONTRACT_NAME).is_symlink():
        raise UnsafeOutputError(f"{out} is not a folder written by `sanasr export` (no {CONTRACT_NAME}): not replaced")
    try:
        contract = read_contract_file(out)
    except SanaSRError as e:
        raise UnsafeOutputError(f"{out} is not a folder written by `sanasr export` ({e}): not replaced") from None
    hashes = contract.get("sha256")
    if contract.get("format") != CONTRACT_FORMAT or not isinstance(hashes, dict):
        raise UnsafeOutputError(
            f"{out}: its {CONTRACT_NAME} does not record the sha256 of the files sanasr wrote there (not a sanasr "
            "export, or one written before sanasr recorded them), so nothing proves they are sanasr's: not replaced "
            "(remove the folder yourself)"
        )
    other = sorted(p.name for p in out.iterdir() if p.name != CONTRACT_NAME and p.name not in hashes)
    if other:
        raise UnsafeOutputError(f"{out} holds files sanasr did not write there ({', '.join(other[:5])}): not replaced")
    for p in sorted(out.iterdir()):
        if p.name == CONTRACT_NAME:
            continue
        if p.is_symlink() or not p.is_file():
            raise UnsafeOutputError(f"{out}: {p.name} is a folder or a link, not the file sanasr wrote: not replaced")
        if sha256_file(p) != hashes[p.name]:
            raise UnsafeOutputError(f"{out}: {p.name} changed since sanasr exported it: not replaced")


# ---------------------------------------------------------------- the stages as modules


class _Head(torch.nn.Module):
    """model.onnx's first part: the image the encoder reads (bicubic x4 of the LQ, or the LQ itself for a
    student encoder) and, unless the prompt is an input, the baked prompt repeated over the batch."""

    def __init__(self, bicubic: bool, embeds: torch.Tensor | None, mask: torch.Tensor | None):
        super().__init__()
        self.bicubic = bicubic
        self.baked = embeds is not None
        if self.baked:
            self.register_buffer("embeds", embeds)
            self.register_buffer("mask", mask)

    def forward(self, lq: torch.Tensor):
        from sanasr_cli.data.resample import upsample_bicubic

        image = upsample_bicubic(lq, MODEL_SCALE) if self.bicubic else lq * 1.0
        if not self.baked:
            return image
        b = lq.shape[0]
        return image, self.embeds.expand(b, -1, -1), self.mask.expand(b, -1)


class _Encode(torch.nn.Module):
    def __init__(self, codec):
        super().__init__()
        self.codec = codec
        self.vae = codec.vae  # registered, so its weights are the graph's
        self.lq_encoder = codec.lq_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.codec.encode_lq(image) if self.codec.encodes_lq else self.codec.encode(image)


class _Restore(torch.nn.Module):
    def __init__(self, restorer):
        super().__init__()
        self.restorer = restorer

    def forward(self, latent, prompt_embeds, prompt_mask):
        return self.restorer(latent, prompt_embeds, prompt_mask)


class _Decode(torch.nn.Module):
    def __init__(self, codec):
        super().__init__()
        self.codec = codec
        self.vae = codec.vae
        self.light_decoder = codec.light_decoder

    def forward(self, restored_latent):
        return self.codec.decode(restored_latent)


# ---------------------------------------------------------------- export


def lq_multiple_of(model) -> int:
    """LQ sides model.onnx takes are multiples of this: 4x them is a multiple of the VAE factor x patch."""
    grid = model.codec.factor * model.restorer.patch_size
    return grid // math.gcd(MODEL_SCALE, grid)


def weights_sha256(model) -> str:
    """sha256 over every parameter and buffer the graphs bake in (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    modules = {"transformer": model.transformer, "vae": model.codec.vae}
    for kind, module in (("lq_encoder", model.codec.lq_encoder), ("light_decoder", model.codec.light_decoder)):
        if module is not None:
            modules[kind] = module
    for name, module in modules.items():
        for key, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}.{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_weight_bytes(model) -> int:
    """Bytes of every parameter and buffer the graphs bake in (the transformer, the VAE, any students)."""
    modules = [model.transformer, model.codec.vae, model.codec.lq_encoder, model.codec.light_decoder]
    tensors = {id(t): t for m in modules if m is not None for t in (*m.parameters(), *m.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes, external: bool = False) -> None:
    import gc
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # torch.export first: torch.onnx.export's own call of it fails on the transformer's cross-attention
        # mask with dynamic sizes ("size of tensor a (s15*s73) must match ..."), the plain export does not
        exported = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        program = torch.onnx.export(
            exported,
            args,
            dynamo=True,
            optimize=False,  # see the module docstring: the optimizer drops SANA's 1e-15 eps (NaN)
            input_names=input_names,
            output_names=output_names,
            verbose=False,
        )
        del exported
    program.save(str(path), external_data=external)  # external: the weights in `<path>.data`, tensor by tensor
    del program
    gc.collect()


def export_stages(
    model,
    folder: Path,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    prompt_input: bool,
    external: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> None:
    """encoder.onnx, restorer.onnx, decoder.onnx and head.onnx (model.onnx's first part) into folder; external:
    each stage's weights in `<stage>.onnx.data` beside it (head.onnx holds only the prompt: inline); on_step(text)
    before each step (tracing takes most of an export's time)."""
    from torch.export import Dim as _Dim

    def Dim(name: str, min: int = 1, max: int = 4096):  # noqa: N802 - torch's name
        return _Dim(name, min=min, max=max)

    def times(k: int, dim):  # a side that is a multiple of k (k == 1: the dimension itself)
        return dim if k == 1 else k * dim

    codec, restorer = model.codec, model.restorer
    p, f = restorer.patch_size, codec.factor
    b = Dim("batch", max=1024)
    # example sizes: batch 2 and unequal sides, so that nothing specialises to 1 or to h == w; 42 latent tokens
    # and more, so that the DC-AE's EfficientViT blocks trace their linear attention (diffusers switches to a
    # quadratic one when h * w <= attention_head_dim, 32 for SANA's DC-AE): the graphs always run the linear one
    lh, lw = 6 * p, 7 * p  # latent sides
    if codec.encodes_lq:
        lqf = codec.lq_factor
        enc_in = torch.rand(2, 3, lh * lqf, lw * lqf)
        enc_dims = {0: b, 2: times(lqf * p, Dim("h")), 3: times(lqf * p, Dim("w"))}
    else:
        enc_in = torch.rand(2, 3, lh * f, lw * f)
        enc_dims = {0: b, 2: times(f * p, Dim("h")), 3: times(f * p, Dim("w"))}
    with export_step("tracing the encoder (torch.export, then ONNX)", on_step):
        _export(
            _Encode(codec), (enc_in,), folder / STAGE_FILES["encoder"], ["image"], ["latent"], (enc_dims,), external
        )

    z = _Encode(codec)(enc_in).detach()
    lat_dims = {0: b, 2: times(p, Dim("lh")), 3: times(p, Dim("lw"))}
    e2, m2 = embeds.expand(2, -1, -1).contiguous(), mask.expand(2, -1).contiguous()
    with export_step("tracing the restorer (torch.export, then ONNX)", on_step):
        _export(
            _Restore(restorer),
            (z, e2, m2),
            folder / STAGE_FILES["restorer"],
            ["latent", "prompt_embeds", "prompt_mask"],
            ["restored_latent"],
            (lat_dims, {0: b}, {0: b}),  # the token count is fixed: a dynamic one fails torch.export in the mask
            external,
        )
    dec_dims = {0: b, 2: Dim("dh"), 3: Dim("dw")}
    with export_step("tracing the decoder (torch.export, then ONNX)", on_step):
        _export(
            _Decode(codec), (z,), folder / STAGE_FILES["decoder"], ["restored_latent"], ["sr"], (dec_dims,), external
        )

    k = lq_multiple_of(model)
    lq = torch.rand(2, 3, 3 * k, 4 * k)
    head_dims = {0: b, 2: times(k, Dim("lqh")), 3: times(k, Dim("lqw"))}
    head = _Head(not codec.encodes_lq, None if prompt_input else embeds, None if prompt_input else mask)
    outputs = ["image"] if prompt_input else ["image", "prompt_embeds", "prompt_mask"]
    _export(head, (lq,), folder / "head.onnx", ["lq"], outputs, (head_dims,))


def compose_model(folder: Path, stage_files: dict[str, str], out_name: str = MODEL_NAME) -> None:
    """model.onnx = head -> encoder -> restorer -> decoder (onnx.compose; each part's inner names prefixed). The
    parts are read without their external data: model.onnx points at the stages' own `.data` files (the weights are
    neither read nor stored again), and a graph over 2 GiB never has to fit in one protobuf."""
    import onnx
    from onnx import compose

    folder = Path(folder).resolve()

    def part(name: str, prefix: str):
        m = onnx.load(str(folder / name), load_external_data=False)
        return compose.add_prefix(m, prefix, rename_inputs=False, rename_outputs=False)

    head = part("head.onnx", "head/")
    enc = part(stage_files["encoder"], "encoder/")
    with _working_directory(folder):  # merge_models checks external data files relative to the working directory
        m = _merge(head, enc, part(stage_files["restorer"], "restorer/"), part(stage_files["decoder"], "decoder/"))
    onnx.save(m, str(folder / out_name))


@contextlib.contextmanager
def _working_directory(folder: Path):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _merge(head, enc, res, dec):
    from onnx import compose

    baked = len(head.graph.output) == 3
    passed = ["prompt_embeds", "prompt_mask"] if baked else []
    m = compose.merge_models(
        head, enc, io_map=[("image", "image")], outputs=["latent", *passed], prefix1=None, prefix2=None
    )
    m = compose.merge_models(
        m, res, io_map=[("latent", "latent"), *[(n, n) for n in passed]], outputs=["restored_latent"]
    )
    return compose.merge_models(m, dec, io_map=[("restored_latent", "restored_latent")], outputs=["sr"])


INT8_OPS = ("MatMul", "Gemm")  # not Conv: measured slower in ONNX Runtime's ConvInteger, and no more accurate


def fold_constants(folder: Path, files) -> None:
    """Each graph in `files` rewritten with ONNX Runtime's basic graph optimisations applied offline (constant
    folding, redundant nodes: what ORT does anyway when it loads the graph; its rules keep SANA's 1e-15 eps).
    The exporter (optimize=False) leaves every Linear's weight behind a Transpose node and many constants as
    nodes: folded, nano's fp32 restorer.onnx shrinks from 10.2 to 7.2 MB, and its MatMuls read initializers
    (which quantize_dynamic needs to see the weights). The graphs stay plain ONNX (opset imports: those used)."""
    import onnx

    from sanasr_cli.export.contract import require_onnxruntime

    ort = require_onnxruntime()
    for name in files:
        src, dst = folder / name, folder / f"{Path(name).stem}.folded.onnx"
        external = has_external_data(src)
        try:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(dst)
            options.log_severity_level = 3
            if external:  # the folded weights go to a file of their own, as the graph's came (above 2 GiB)
                options.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name", dst.name + DATA_SUFFIX
                )
                options.add_session_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
                )
            session = ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
            del session
            m = onnx.load(str(dst), load_external_data=False)
            used = {n.domain for n in m.graph.node} | {""}
            kept = [o for o in m.opset_import if o.domain in used]
            del m.opset_import[:]  # ORT lists every domain it knows; onnx.compose needs the parts' imports to agree
            m.opset_import.extend(kept)
            onnx.save(m, str(dst))
            move_graph(dst, src)
        finally:
            dst.unlink(missing_ok=True)
            (folder / (dst.name + DATA_SUFFIX)).unlink(missing_ok=True)


def _external_tensors(model):
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


def data_files(path: Path) -> list[str]:
    """The external data files the ONNX graph at `path` keeps weights in (names relative to its folder)."""
    import onnx

    tensors = _external_tensors(onnx.load(str(path), load_external_data=False))
    return sorted({e.value for t in tensors for e in t.external_data if e.key == "location"})


def has_external_data(path: Path) -> bool:
    """Whether the ONNX graph at `path` keeps weights in an external data file."""
    return bool(data_files(path))


def move_graph(src: Path, dst: Path) -> None:
    """Rename the graph `src` to `dst` in the same folder, with its external data file (then `<dst>.data`, the
    graph's references rewritten; a `<dst>.data` left from before is replaced or removed)."""
    import onnx

    m = onnx.load(str(src), load_external_data=False)
    tensors = _external_tensors(m)
    locations = {e.value for t in tensors for e in t.external_data if e.key == "location"}
    if len(locations) > 1:
        raise ValueError(f"{src.name} keeps its weights in several files ({', '.join(sorted(locations))})")
    data = dst.parent / (dst.name + DATA_SUFFIX)
    for t in tensors:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = data.name
    if locations:
        os.replace(src.parent / locations.pop(), data)
    else:
        data.unlink(missing_ok=True)
    onnx.save(m, str(dst))
    if src != dst:
        src.unlink()


def quantize_int8(folder: Path, stages: dict[str, str] = STAGE_FILES) -> dict[str, str]:
    """ONNX Runtime's dynamic int8 quantization of every MatMul/Gemm weight of the (constant-folded) stages: QInt8
    weights, activations quantised per call; convolutions (the DC-AE's, the Mix-FFN's) stay fp32. Chosen by
    measurement (benchmarks/onnx_quality.py, docs/export.md): nano's median Y-PSNR within 0.01 dB of PyTorch's."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    record = {}
    for stage, name in stages.items():
        src, tmp = folder / name, folder / f"{stage}.int8.onnx"
        external = has_external_data(src)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its "please run pre-processing" warning: fold_constants is that
        try:
            quantize_dynamic(
                str(src), str(tmp), op_types_to_quantize=list(INT8_OPS), weight_type=QuantType.QInt8,
                use_external_data_format=external,
                # 7-bit weights: ONNX Runtime's u8s8 kernel on AVX2 / AVX-512 without VNNI (VPMADDUBSW) saturates
                # int16 pair sums with full-range int8 weights (one output 16% off on this AVX2 CPU); ORT's advice
                reduce_range=True,
            )  # fmt: skip
            move_graph(tmp, src)
        finally:
            root.setLevel(level)
            tmp.unlink(missing_ok=True)
            (folder / (tmp.name + DATA_SUFFIX)).unlink(missing_ok=True)
        record[stage] = f"int8 dynamic (ONNX Runtime quantize_dynamic, {'/'.join(INT8_OPS)} weights QInt8, 7-bit range)"
    return record


def export_prompt(rule, prompt: str | None = None) -> str:
    """The text an export bakes in (or stores as its default): what `upscale` builds for every image with no tagger
    and no --prompt (the template alone), or `prompt`."""
    from sanasr_cli.prompts.template import build_prompt

    return build_prompt([], prompt if prompt is not None else rule.template)


def free_weights(model) -> None:
    """Every weight of `model` freed (moved to the meta device): what an export needs of it is traced already."""
    for module in (model.transformer, *model.codec.modules()):
        if module is not None:
            module.to("meta")
    import gc

    gc.collect()


def model_card(contract: dict) -> str:
    c = contract
    inp = c["input"]
    quantized = "".join(f"; {k}: {v}" for k, v in c["quantization"]["stages"].items())
    return f"""# {c["source_model"]} (ONNX, {c["quantization"]["mode"]})

Exported by `sanasr export` (sanasr {c["sanasr_version"]}) from `{c["source_model"]}`
(weights sha256 `{c["source_weights_sha256"][:16]}...`), ONNX opset {c["opset"]}.

- `model.onnx`: input `lq`, float32 RGB, NCHW, values in [0, 1], dynamic batch / height / width with
  height and width multiples of {inp["multiple_of"]}; output `sr`, (N, 3, {c["scale"]}h, {c["scale"]}w) in [0, 1].
  Inside: bicubic x4 (when the encoder reads the x4 image) -> DC-AE encoder -> one LinearDiT step (Eq. 4)
  -> decoder. No colour fix (sanasr applies it on the host; the paper's pipeline has none).
- Prompt: {
        "inputs `prompt_embeds` (N, T, D) float32 and `prompt_mask` (N, T) int64, the layout of the source model's "
        "`PromptEncoder.encode(texts, reuse_prefix=True)` (docs/export.md); prompt.npz holds the default"
        if c["prompt"]["input"]
        else "baked in"
    }:
  "{c["prompt"]["text"]}" (T = {c["prompt"]["tokens"]} tokens of width D = {c["prompt"]["width"]}).
- `encoder.onnx`, `restorer.onnx`, `decoder.onnx`: the same three stages alone (sanasr's own runner tiles them).
- Quantization: {c["quantization"]["mode"]}{quantized}.

Run it with sanasr (tiling, colour fix, alpha, 16-bit as for the PyTorch model):
`sanasr upscale photos/ -o out/ --model THIS_FOLDER`, or with ONNX Runtime alone (see docs/export.md).
"""


def export_onnx(
    model,
    out: str | Path,
    source: str,
    prompt: str | None = None,
    quantize: str = "none",
    prompt_input: bool = False,
    overwrite: bool = False,
    source_options: dict | None = None,
    on_step: Callable[[str], None] | None = None,
    external_data_above: int = EXTERNAL_DATA_ABOVE,
    free_model: bool = False,
) -> ExportResult:
    """Export `model` (a loaded SanaSR, fp32 on the CPU) into the ONNX folder `out` (written atomically: a
    staging folder renamed into place). prompt: the text baked in (default: the model's template, what
    `upscale` builds for an image with no tags and no --prompt). quantize: none | int8.
    prompt_input: the graphs take `prompt_embeds` (N, T, D) / `prompt_mask` (N, T) as inputs instead, in the
    untrimmed layout of `model.prompts.encode(texts, reuse_prefix=True)` (T: the model's max text length), so
    any prompt fits; `prompt` is then only the default stored in prompt.npz. source_options: how `source` is
    loaded again (random_weights, seed, base), recorded so that the ONNX backend can rebuild the text encoder.
    external_data_above: a model with more bytes of weights is exported with external data (`<graph>.data`, see the
    module doc). free_model: the model's weights are freed (to the meta device) once the graphs are traced, so that
    the ONNX Runtime steps after it have that memory (the CLI's model is not used again); ExportMemoryError names
    the step that ran out of memory. on_step(text): called as each step starts (the command prints it)."""
    import numpy as np
    import onnx

    from sanasr_cli import __version__
    from sanasr_cli.safe_files import atomic_write, make_temp_dir, replace_dir

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize takes {', '.join(QUANTIZATIONS)}, not '{quantize}'")
    require_export_tools()
    out = Path(out)
    check_export_target(out, overwrite)
    start = time.perf_counter()
    rule = model.description.prompt
    text = export_prompt(rule, prompt)
    with torch.no_grad():
        if prompt_input:  # every prompt in one layout: T = max_length positions, padding masked (weight 0)
            embeds, mask = model.prompts.encode([text], reuse_prefix=True, device="cpu")
        else:
            embeds, mask = model.prompts.encode_for_transformer([text], device="cpu")
    embeds, mask = embeds.float(), mask.to(torch.int64)
    model.release_text_encoder()  # the graphs need no text encoder: freed (never built when the prompt was held)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.")
    try:
        external = model_weight_bytes(model) > external_data_above
        with export_step("hashing the weights", on_step):
            weights = weights_sha256(model)
        export_stages(model, tmp, embeds, mask, prompt_input, external, on_step)
        codec = model.codec
        facts = {
            "multiple_of": lq_multiple_of(model), "encodes_lq": codec.encodes_lq, "factor": codec.factor,
            "lq_factor": codec.lq_factor, "patch_size": model.restorer.patch_size, "tau_g": model.restorer.tau_g,
        }  # fmt: skip
        if free_model:
            free_weights(model)
        with export_step("folding constants (ONNX Runtime's basic optimisations)", on_step):
            fold_constants(tmp, [*STAGE_FILES.values(), "head.onnx"])
        stages = {}
        if quantize == "int8":
            with export_step("quantizing to int8 (ONNX Runtime quantize_dynamic)", on_step):
                stages = quantize_int8(tmp)
        with export_step("composing model.onnx (onnx.compose)", on_step):
            compose_model(tmp, STAGE_FILES)
        (tmp / "head.onnx").unlink()
        np.savez(tmp / PROMPT_FILE, embeds=embeds.numpy(), mask=mask.numpy())
        opset = next(o.version for o in onnx.load(str(tmp / MODEL_NAME), load_external_data=False).opset_import
                     if o.domain in ("", "ai.onnx"))  # fmt: skip
        contract = {
            "format": CONTRACT_FORMAT,
            "version": CONTRACT_VERSION,
            "sanasr_version": __version__,
            "source_model": source,
            "source_weights_sha256": weights,
            "scale": MODEL_SCALE,
            "input": {
                "name": "lq", "layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [0.0, 1.0],
                "multiple_of": facts["multiple_of"], "dynamic": ["batch", "height", "width"],
            },
            "output": {"name": "sr", "layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [0.0, 1.0]},
            "prompt": {
                "text": text, "input": prompt_input, "tokens": int(embeds.shape[1]), "width": int(embeds.shape[2]),
                "complex_human_instruction": rule.complex_human_instruction,
                "mask_degradation_words": rule.mask_degradation_words,
                "layout": "PromptEncoder.encode(texts, reuse_prefix=True) of the source model: float32, int64 mask"
                if prompt_input else "PromptEncoder.encode_for_transformer([text]) (trimmed), baked in",
            },
            "source_options": dict(source_options or {}),
            "opset": opset,
            "quantization": {"mode": quantize, "stages": stages},
            "stages": dict(STAGE_FILES),
            # each graph's external data files (model.onnx points at the stages' own), as the graphs name them
            "external_data": {n: f for n in [*STAGE_FILES.values(), MODEL_NAME] if (f := data_files(tmp / n))},
            "encoder_reads": "lq" if facts["encodes_lq"] else "x4",
            "factor": facts["factor"],
            "lq_factor": facts["lq_factor"],
            "patch_size": facts["patch_size"],
            "tau_g": facts["tau_g"],
            "color_fix": "none inside the graph (sanasr applies --color-fix on the host)",
            "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=True, optimize=False), then ONNX "
            "Runtime's basic graph optimisations applied offline (constant folding)",
            "files": {},
        }  # fmt: skip
        contract["files"] = {
            p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.suffix in (".onnx", ".npz", DATA_SUFFIX)
        }
        card = model_card(contract)
        atomic_write(tmp / "README.md", card)
        # what a later --overwrite may delete: exactly these files, unchanged (check_earlier_export)
        with export_step("hashing the files", on_step):
            contract["sha256"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        atomic_write(tmp / CONTRACT_NAME, json.dumps(contract, indent=2) + "\n")
        # checked again now, after minutes of work: a folder that appeared or changed at OUT is never replaced
        replace_dir(tmp, out, check=lambda o: check_export_target(o, overwrite))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, contract, time.perf_counter() - start)
