"""The ONNX Runtime backend: an exported folder (`sanasr export`) loaded as a model the one inference path runs.

`OnnxSanaSR` offers what `pipeline.upscale.restore_upsampled` and its callers use of a SanaSR: a codec
(pad, encode, decode, crop at the VAE's factor), a restorer (z, embeds, mask -> z_hat) and prompt encodings.
So `upscale` (tiling with overlap, alpha, grayscale, 16-bit, the colour fix) and `SanaSRPipeline` run the
ONNX stages with the very host code they run around PyTorch; only the three stage calls differ.
The prompt is baked in at export (prompts other than the baked one are refused with one line), or, for an
export made with `--prompt-input`, an input: other prompts are then encoded by the source model's PyTorch text
encoder (given as `prompt_encoder=`, or rebuilt from the contract's source on first need).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sanasr_cli.errors import ModelDirError, SanaSRError
from sanasr_cli.export.contract import (
    MODEL_NAME,
    ORT_MISSING,
    PROMPT_FILE,
    OnnxInputError,
    OnnxRuntimeMissingError,
    load_contract,
    require_onnxruntime,
)

# what each graph takes and gives (export/onnx_export.py writes them so); a graph that differs is refused at load
STAGE_IO = {
    "encoder": (["image"], ["latent"]),
    "restorer": (["latent", "prompt_embeds", "prompt_mask"], ["restored_latent"]),
    "decoder": (["restored_latent"], ["sr"]),
}
# operator domains a graph may use: ONNX's own and ONNX Runtime's contrib ops (int8 quantization); a custom domain
# needs a library sanasr does not load
ONNX_DOMAINS = ("", "ai.onnx", "com.microsoft")


def check_graph_file(folder: Path, name: str, inputs: list[str], outputs: list[str], where: str) -> None:
    """A graph file of an ONNX folder, parsed without its external data and checked before ONNX Runtime opens it:
    a non-empty ONNX model whose operators come from ONNX_DOMAINS (or the model's own functions), whose external
    data files are plain names of regular files inside the folder that hold the bytes the graph points at, and
    whose inputs and outputs are `inputs` / `outputs`. ModelDirError (one line naming the file) otherwise."""
    from sanasr_cli.untrusted import check_file_inside, first_line

    path = check_file_inside(folder, name, where)
    if path.stat().st_size == 0:
        raise ModelDirError(f"{where}: {name} is empty (export the model again)")
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors
    except ImportError:
        raise OnnxRuntimeMissingError(ORT_MISSING.replace("onnxruntime", "onnx", 1)) from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - DecodeError of random bytes, text, a pickle: one line
        raise ModelDirError(f"{where}: {name} is not an ONNX model ({first_line(e)})") from None
    if not model.graph.node:
        raise ModelDirError(f"{where}: {name} holds no graph (not an ONNX model sanasr exported)")
    local = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model):
        if node.domain not in ONNX_DOMAINS and (node.domain, node.op_type) not in local:
            raise ModelDirError(
                f"{where}: {name} uses the operator '{node.op_type}' of the custom domain '{node.domain}' (sanasr runs "
                "only ONNX's and ONNX Runtime's own operators)"
            )
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(tensor)
        data = check_file_inside(folder, info.location, f"{where}: {name}: external data of '{tensor.name}'")
        end = (info.offset or 0) + (info.length or 0)
        if (info.offset or 0) < 0 or end > data.stat().st_size:
            raise ModelDirError(
                f"{where}: {name}: external data of '{tensor.name}' points past the end of {info.location}"
            )
    initializers = {t.name for t in model.graph.initializer}
    got_in = [i.name for i in model.graph.input if i.name not in initializers]
    got_out = [o.name for o in model.graph.output]
    if got_in != inputs or got_out != outputs:
        raise ModelDirError(
            f"{where}: {name} takes {got_in} and gives {got_out}; sanasr's graph takes {inputs} and gives {outputs}"
        )


def _all_nodes(model):
    """Every node of the graph, of its sub-graphs (If, Loop, Scan) and of the model's functions."""

    def walk(nodes):
        for node in nodes:
            yield node
            for attr in node.attribute:
                for graph in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                    yield from walk(graph.node)

    yield from walk(model.graph.node)
    for function in model.functions:
        yield from walk(function.node)


def make_session(path: Path, threads: int | None = None, where: str | None = None):
    """An ONNX Runtime CPU session; threads default to torch's (so both backends get the same cores). A graph ONNX
    Runtime refuses (an invalid graph, external data it will not read) is a ModelDirError naming the file."""
    from sanasr_cli.untrusted import first_line

    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT's own exception classes (Fail, InvalidGraph, ...): one line
        raise ModelDirError(
            f"{where or path.parent}: {path.name} cannot be loaded by ONNX Runtime ({first_line(e)})"
        ) from None


def _run(session, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    from sanasr_cli.untrusted import first_line

    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items()}
    try:
        return torch.from_numpy(session.run(None, arrays)[0])
    except Exception as e:  # noqa: BLE001 - ORT's own exception classes: a graph that fails on this input
        raise ModelDirError(f"an ONNX graph failed in ONNX Runtime ({first_line(e)})") from None


class OnnxCodec:
    """LatentCodec's inference face over encoder.onnx / decoder.onnx (padding and cropping are LatentCodec's)."""

    def __init__(self, encoder, decoder, contract: dict):
        self._encoder, self._decoder = encoder, decoder
        self.factor = int(contract["factor"])
        self.lq_factor = int(contract["lq_factor"])
        self.encodes_lq = contract["encoder_reads"] == "lq"
        self.lq_encoder = self.light_decoder = None  # no PyTorch modules here

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        from sanasr_cli.models.vae import pad_to_multiple

        return pad_to_multiple(images, self.factor)

    def pad_lq(self, lq: torch.Tensor) -> torch.Tensor:
        from sanasr_cli.models.vae import pad_to_multiple

        return pad_to_multiple(lq, self.lq_factor)

    crop = staticmethod(lambda images, height, width: images[..., :height, :width])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.encodes_lq:
            raise ValueError("this ONNX export's encoder reads the LQ image (encode_lq)")
        return _run(self._encoder, {"image": images.float()})

    def encode_lq(self, lq: torch.Tensor) -> torch.Tensor:
        if not self.encodes_lq:
            from sanasr_cli.data.resample import upsample_bicubic

            return self.encode(self.pad(upsample_bicubic(lq, 4)))
        return _run(self._encoder, {"image": lq.float()})

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return _run(self._decoder, {"restored_latent": latents.float()})


class OnnxRestorer:
    """Eq. 4's step over restorer.onnx: latents padded to the transformer's patch as the PyTorch restorer does."""

    def __init__(self, session, contract: dict):
        self._session = session
        self.patch_size = int(contract["patch_size"])
        self.tau_g = float(contract["tau_g"])

    def __call__(self, z: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from sanasr_cli.models.restorer import pad_to_patch

        h, w = z.shape[-2:]
        feeds = {"latent": pad_to_patch(z.float(), self.patch_size), "prompt_embeds": embeds, "prompt_mask": mask}
        return _run(self._session, feeds)[..., :h, :w]


class BakedPrompts:
    """The prompt encodings of an export: the baked prompt only (no text encoder ships with the graphs)."""

    text_encoder = None

    def __init__(self, text: str, embeds: torch.Tensor, mask: torch.Tensor):
        self.text, self.embeds, self.mask = text, embeds, mask

    def encode_for_transformer(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        other = [p for p in prompts if p != self.text]
        if other:
            raise SanaSRError(
                f"this ONNX model has the prompt '{self.text}' baked in, not '{other[0]}' (drop --prompt / "
                "--tagger / --template, or export again with `sanasr export --prompt` or `--prompt-input`)"
            )
        n = len(prompts)
        return self.embeds.repeat(n, 1, 1), self.mask.repeat(n, 1)

    def release(self, to=None) -> None:
        pass


class InputPrompts(BakedPrompts):
    """The prompt encodings of a `--prompt-input` export: the stored default prompt from prompt.npz, any other
    through a PyTorch PromptEncoder (`encode(texts, reuse_prefix=True)`: the graphs' untrimmed layout), built
    by `make_encoder()` when first needed. The encoder is checked once: its embeddings of the stored prompt
    must be those the export stored (else it is another model's text encoder)."""

    def __init__(self, text, embeds, mask, make_encoder, source: str):
        super().__init__(text, embeds, mask)
        self._make, self._source, self._encoder = make_encoder, source, None

    @property
    def text_encoder(self):  # what `release_text_encoder` and the API look at: the PyTorch one, once built
        return None if self._encoder is None else self._encoder.text_encoder

    def encoder(self):
        if self._encoder is None:
            encoder = self._make()
            embeds, mask = encoder.encode([self.text], reuse_prefix=True, device="cpu")
            if embeds.shape != self.embeds.shape or float((embeds.float() - self.embeds).abs().max()) > 1e-4:
                raise SanaSRError(
                    f"the text encoder given for this ONNX model (of {self._source}) does not give the embeddings "
                    "the export stored for its own prompt: it is not the source model's text encoder"
                )
            self._encoder = encoder
        return self._encoder

    def encode_for_transformer(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        if all(p == self.text for p in prompts):
            return super().encode_for_transformer(prompts)
        embeds, mask = self.encoder().encode(list(prompts), reuse_prefix=True, device="cpu")
        return embeds.float(), mask.to(torch.int64)


def _source_encoder(contract: dict, given, load):
    if given is not None:
        return given
    if load is None:
        raise SanaSRError(
            f"this ONNX model takes prompt embeddings: a prompt other than its default needs the text encoder of "
            f"its source '{contract['source_model']}' (load_onnx_model(..., prompt_encoder=...), or load_model)"
        )
    return load(contract)


@dataclass
class OnnxSanaSR:
    """An exported folder, loaded: runs where `restore_upsampled` runs a SanaSR (on the CPU, in float32)."""

    codec: OnnxCodec
    restorer: OnnxRestorer
    prompts: BakedPrompts
    description: object
    contract: dict
    source_dir: Path
    info: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def to(self, device=None, dtype=None) -> OnnxSanaSR:
        return self

    def release_text_encoder(self, to="cpu") -> None:
        pass


def load_onnx_model(
    folder: str | Path, threads: int | None = None, prompt_encoder=None, load_source_encoder=None
) -> OnnxSanaSR:
    """An ONNX folder -> OnnxSanaSR. Its prompt rule: no tagger, the baked (or stored default) prompt as the
    template, so that `upscale` builds exactly that prompt for every image unless told otherwise.
    For a `--prompt-input` export, other prompts need the source model's PromptEncoder: `prompt_encoder` (e.g.
    `load_model("nano").prompts`), else `load_source_encoder(contract)` when first needed (`load_model` passes
    one that loads the contract's source); with neither, such a prompt is one line."""
    from sanasr_cli.models.description import ModelDescription
    from sanasr_cli.prompts.rule import PromptRule

    folder = Path(folder).expanduser()
    contract = load_contract(folder)  # the whole folder checked as untrusted input before anything is opened
    require_onnxruntime()
    for stage, name in contract["stages"].items():
        check_graph_file(folder, name, *STAGE_IO[stage], str(folder))
    stages = {k: make_session(folder / v, threads, str(folder)) for k, v in contract["stages"].items()}
    embeds, mask = load_prompt(folder)
    text = contract["prompt"]["text"]
    rule = PromptRule(
        tagger="none",
        template=text,
        mask_degradation_words=contract["prompt"]["mask_degradation_words"],
        complex_human_instruction=contract["prompt"]["complex_human_instruction"],
    )
    description = ModelDescription(base_preset=contract["source_model"], base_source=str(folder), prompt=rule)
    return OnnxSanaSR(
        codec=OnnxCodec(stages["encoder"], stages["decoder"], contract),
        restorer=OnnxRestorer(stages["restorer"], contract),
        prompts=InputPrompts(
            text,
            embeds,
            mask,
            lambda: _source_encoder(contract, prompt_encoder, load_source_encoder),
            contract["source_model"],
        )
        if contract["prompt"].get("input")
        else BakedPrompts(text, embeds, mask),
        description=description,
        contract=contract,
        source_dir=folder,
    )


def load_prompt(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt.npz's arrays (their headers already checked by load_contract: shapes, dtypes, no pickle)."""
    from sanasr_cli.untrusted import first_line

    try:
        with np.load(folder / PROMPT_FILE, allow_pickle=False) as npz:
            return torch.from_numpy(npz["embeds"]), torch.from_numpy(npz["mask"])
    except Exception as e:  # noqa: BLE001 - a file changed since its check: one line
        raise ModelDirError(f"{folder}: {PROMPT_FILE} cannot be read ({first_line(e)})") from None


def run_model_onnx(
    folder: str | Path,
    lq: torch.Tensor,
    session=None,
    prompt_embeds: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """model.onnx alone, as a deployer runs it: (N, 3, h, w) in [0, 1] -> (N, 3, 4h, 4w). OnnxInputError when
    h or w is not a multiple of the contract's `multiple_of` (sanasr's own path pads instead). A `--prompt-input`
    export is fed prompt_embeds (N, T, D) / prompt_mask (N, T), by default the stored prompt's for every image."""
    folder = Path(folder).expanduser()
    contract = load_contract(folder)
    k = int(contract["input"]["multiple_of"])
    h, w = lq.shape[-2:]
    if h % k or w % k:
        raise OnnxInputError(
            f"{folder / MODEL_NAME} takes heights and widths that are multiples of {k}, not {h}x{w} (pad the "
            "image, or run it with `sanasr upscale --model FOLDER`, which pads)"
        )
    if session is None:
        inputs = ["lq", "prompt_embeds", "prompt_mask"] if contract["prompt"]["input"] else ["lq"]
        check_graph_file(folder, MODEL_NAME, inputs, ["sr"], str(folder))
        session = make_session(folder / MODEL_NAME, where=str(folder))
    feeds = {"lq": lq.float()}
    if contract["prompt"].get("input"):
        if prompt_embeds is None:
            embeds, mask = load_prompt(folder)
            prompt_embeds, prompt_mask = embeds.repeat(lq.shape[0], 1, 1), mask.repeat(lq.shape[0], 1)
        feeds.update(prompt_embeds=prompt_embeds.float(), prompt_mask=prompt_mask.to(torch.int64))
    return _run(session, feeds)
