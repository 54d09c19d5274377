"""SanaSR: the loaded model (codec + prompt encoder + restorer + description), and its load/save.

`load_model("tiny")`, `load_model("sana-600m-512")` or `load_model("path/to/model_dir")` all return a SanaSR.
Pretrained components come from a hub id or a local folder (diffusers layout: transformer/, vae/, text_encoder/,
tokenizer/, scheduler/), honouring the Hugging Face cache and HF_HUB_OFFLINE. When a component cannot be found,
`MissingWeightsError` names it, where it was looked for, and how to provide it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sanasr_cli.errors import MissingWeightsError, ModelDirError
from sanasr_cli.models.description import DESCRIPTION_FILE as DESCRIPTION_NAME
from sanasr_cli.models.description import ModelDescription, is_model_dir, newest_checkpoint
from sanasr_cli.models.folder_check import check_finite, load_diffusers_folder
from sanasr_cli.models.lora import has_adapter, load_adapter, save_adapter
from sanasr_cli.models.presets import (
    BASE_ENV_VAR,
    DC_AE_LITE_HUB_ID,
    PRESETS,
    SHIPPED_BASE_PREFIX,
    SHIPPED_MODELS,
    SHIPPED_STUDENTS,
    Preset,
    build_local_tokenizer,
    default_base_source,
    lite_vae_config,
    resolve_base_source,
)
from sanasr_cli.models.restorer import OneStepRestorer
from sanasr_cli.models.text_encoder import PromptEncoder
from sanasr_cli.models.tiling import TilePlan, tiled_decode, tiled_encode, tiled_encode_lq, tiled_latent_apply
from sanasr_cli.models.vae import LatentCodec
from sanasr_cli.prompts.rule import PromptRule


@dataclass
class SanaSR:
    codec: LatentCodec
    prompts: PromptEncoder
    restorer: OneStepRestorer
    description: ModelDescription
    source_dir: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def transformer(self):
        return self.restorer.transformer

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SanaSR:
        for module in (*self.codec.modules(), self.transformer):
            if not any(p.is_meta for p in module.parameters()):  # a VAE built without weights stays so
                module.to(**_move_or_cast(module, device, dtype))
        self.prompts.to(device=device, dtype=dtype)  # the text encoder, once built, goes (or is built) there too
        return self

    def release_text_encoder(self, to: torch.device | str | None = None) -> None:
        """Free the text encoder once the run's prompts are encoded, on any device (`PromptEncoder.release`: None
        drops it, a device moves it there, "meta" frees its weights for good). The device the model reports, and
        restores on, is the transformer's."""
        self.prompts.release(to)

    @torch.no_grad()
    def restore(self, lq_upsampled: torch.Tensor, prompts: list[str], lq: torch.Tensor | None = None) -> torch.Tensor:
        """The inference path: x_hat = D(z_L - sigma f_theta(z_L, tau_g, c, m)), z_L = E(x_L), untiled
        (`restore_upsampled`, the path every command runs).

        lq_upsampled: (B, 3, H, W) float in [0, 1], already at the target size (bicubic from the LQ image).
        lq: the LQ batch (B, 3, H/4, W/4) it came from; a student encoder reads it (without it, the teacher
        encodes lq_upsampled). Returns (B, 3, H, W) float32 in [0, 1], on the model's device. Any H, W (padded,
        then cropped back).
        """
        embeds, mask = self.prompts.encode_for_transformer(prompts, device=self.device)
        lq = lq.to(self.device) if lq is not None else None
        return restore_upsampled(self, lq_upsampled.to(self.device), embeds, mask, lq=lq)


def restore_upsampled(
    model: SanaSR,
    x: torch.Tensor,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    plan: TilePlan | None = None,
    batch_size: int = 1,
    lq: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one inference path, x_hat = D(z_L - sigma f_theta(z_L, tau_g, c, m)), z_L = E(x_L), that `upscale`,
    `eval --model`, prune's validation gate, `SanaSRPipeline`, `SanaSR.restore` and bench's end-to-end all run.

    x: (B, 3, H, W) in [0, 1] already at the output size (bicubic x4 of the LQ), on the model's device;
    embeds, mask: the encoded prompts, one row per image (`PromptEncoder.encode_for_transformer`).
    Returns (B, 3, H, W) float32 in [0, 1]: padded to the VAE factor, [tiled] encode, [tiled] LinearDiT step
    (Eq. 4), [tiled] decode, cropped back; plan None (or untiled) runs each stage once over the whole image.
    lq: the LQ batch x came from, on the same device: a distilled student encoder reads it instead of x
    (models/students.py); without it the teacher encodes x.
    """
    codec = model.codec
    h, w = x.shape[-2:]
    vae_tile = plan.vae_tile if plan is not None else None
    dit_tile = plan.dit_tile if plan is not None else None
    if lq is not None and codec.encodes_lq:  # a distilled student encoder reads the LQ at its own resolution
        z_lq = tiled_encode_lq(codec, codec.pad_lq(lq), vae_tile, batch_size)
    else:
        z_lq = tiled_encode(codec, codec.pad(x), vae_tile, batch_size)

    def step(z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0] // embeds.shape[0]  # tiles of all images stacked: repeat the conditions to match
        return model.restorer(z, embeds.repeat(n, 1, 1), mask.repeat(n, 1))

    z_hat = tiled_latent_apply(step, z_lq, dit_tile, batch_size)
    x_hat = tiled_decode(codec, z_hat, vae_tile, batch_size)
    refuse_non_finite(z_hat, x_hat)
    return codec.crop(x_hat, h, w)


def refuse_non_finite(*tensors: torch.Tensor) -> None:
    """NonFiniteOutputError when any value is NaN or infinite: never written (as a black image) as a result."""
    from sanasr_cli.errors import NonFiniteOutputError

    for t in tensors:
        if not t.is_meta and not bool(torch.isfinite(t).all()):  # meta: bench's counting, no values
            raise NonFiniteOutputError("model produced non-finite values: check the model folder")


# ---------------------------------------------------------------- building components


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _built_in(dtype: torch.dtype):
    """Inside, every module is cast to `dtype` as it is attached to its parent, i.e. right after its own
    constructor (its default initialisation included) ran in float32: a random model is built in its target
    dtype, holding at most one sub-module's float32 weights at a time, with the very values of a float32 build
    cast afterwards (the same random draws in the same order). Every process-wide module registration counts."""
    if dtype == torch.float32:
        yield
        return
    from torch.nn.modules.module import register_module_module_registration_hook

    def cast(parent, name, child):
        if child is not None:
            child.to(dtype)

    handle = register_module_module_registration_hook(cast)
    try:
        yield
    finally:
        handle.remove()


def _cast(module, dtype: torch.dtype):
    """The module's own parameters (those of no sub-module) in `dtype` too; float32: as built."""
    return module if dtype == torch.float32 else module.to(dtype)


def build_random_transformer(preset: Preset, seed: int, dtype: torch.dtype = torch.float32):
    from diffusers import SanaTransformer2DModel

    with _seeded(seed), _built_in(dtype):
        return _cast(SanaTransformer2DModel(**preset.transformer), dtype)


def build_random_vae(preset: Preset, seed: int, dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderDC

    with _seeded(seed + 1), _built_in(dtype):
        return _cast(AutoencoderDC(**preset.vae), dtype)


def random_text_config(preset: Preset, tokenizer):
    """The Gemma2Config of a random-weight preset's text encoder, its special tokens the local tokenizer's."""
    from transformers import Gemma2Config

    cfg = dict(preset.text_encoder)
    if cfg.get("vocab_size") is None:
        cfg["vocab_size"] = len(tokenizer)
    cfg.update(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Gemma2Config(**cfg)


def build_random_text_encoder(config, seed: int, dtype: torch.dtype = torch.float32):
    """A random Gemma-2 of `config` (`random_text_config`), built in `dtype`."""
    from transformers import Gemma2Model

    with _seeded(seed + 2), _built_in(dtype):
        return _cast(Gemma2Model(config), dtype)


def build_random_text(preset: Preset, seed: int, dtype: torch.dtype = torch.float32):
    """A random Gemma-2 of the preset's config and the locally built tokenizer."""
    tokenizer = build_local_tokenizer()
    return tokenizer, build_random_text_encoder(random_text_config(preset, tokenizer), seed, dtype)


def load_vae_decoder(
    choice: str,
    preset: Preset,
    description: ModelDescription,
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
    seed: int = 0,
    build_only: bool = False,
):
    """The VAE decoder module `choice` names, or None for "full" (the VAE's own).

    "lite": DC-AE-Lite's decoder (`presets.lite_vae_config`): seeded random weights for a random-weight model;
    else from `vae_lite/` in the base folder when the base is a local folder, else from the hub id
    `DC_AE_LITE_HUB_ID` (the Hugging Face cache, HF_HUB_OFFLINE honoured). Any other value: a local
    AutoencoderDC folder (config.json + safetensors) whose decoder is taken. Its latent space must be the
    VAE's (channels and spatial factor), else ModelDirError; weights that cannot be found: MissingWeightsError.
    build_only: no weights are read at all, a folder's config is built with random weights (bench's counting).
    """
    from diffusers import AutoencoderDC

    if choice == "full":
        return None
    if choice == "lite" and (random_weights or build_only):
        with _seeded(seed + 4):
            return AutoencoderDC(**lite_vae_config(preset)).decoder.to(dtype)
    if build_only:
        with _seeded(seed + 4):
            return AutoencoderDC.from_config(AutoencoderDC.load_config(str(_decoder_folder(choice)))).decoder.to(dtype)
    if choice == "lite":
        base = resolve_base_source(description.base_source)
        local = Path(base) / "vae_lite" if base else None
        source = str(local) if local is not None and local.is_dir() else DC_AE_LITE_HUB_ID
    else:
        source = str(_decoder_folder(choice))
    from sanasr_cli.hub import hub_load_mode

    # a folder or a cached repo: read from the disk; else announced, and local only where the hub cannot be reached
    local = hub_load_mode("the DC-AE-Lite decoder (--vae-decoder lite)", source)
    try:
        vae = AutoencoderDC.from_pretrained(source, torch_dtype=dtype, use_safetensors=True, local_files_only=local)
    except (OSError, ValueError) as e:
        raise MissingWeightsError(
            "vae decoder (DC-AE-Lite)",
            source if Path(source).exists() else f"the hub repo '{source}' and the Hugging Face cache",
            f"Download it once where there is network (`hf download {DC_AE_LITE_HUB_ID}`), or put a copy in "
            "vae_lite/ beside the base's vae/, or pass --vae-decoder /path/to/its/folder",
            _first_line(e),
        ) from None
    check_finite(vae.decoder.state_dict(), f"vae decoder '{source}'")
    want = (int(preset.vae["latent_channels"]), 2 ** (len(preset.vae["decoder_block_out_channels"]) - 1))
    got = (int(vae.config.latent_channels), int(vae.spatial_compression_ratio))
    if got != want:
        raise ModelDirError(
            f"--vae-decoder {choice}: its latents are {got[0]} channels at 1/{got[1]}, the model's VAE uses "
            f"{want[0]} at 1/{want[1]}"
        )
    return vae.decoder


def _decoder_folder(choice: str) -> Path:
    path = Path(choice).expanduser()
    if not (path / "config.json").is_file():
        raise ModelDirError(
            f"--vae-decoder takes full, lite or a local AutoencoderDC folder with config.json, not '{choice}'"
        )
    return path


def _how_to_fix(preset: Preset) -> str:
    if (preset.hub_id or "").startswith(SHIPPED_BASE_PREFIX):  # nano's base ships inside the package
        return (
            f"the files of '{preset.name}' ship with sanasr: reinstall it (pip install --force-reinstall sanasr), "
            "or pass --base /path/to/a/copy of its base folder"
        )
    hub = preset.hub_id or "<hub id>"
    return (
        f"Download it once where there is network (`hf download {hub}`), then run with network access or "
        f"HF_HUB_OFFLINE=1 (it is then read from the Hugging Face cache), or pass --base /path/to/local/copy "
        f"(or set {BASE_ENV_VAR}) pointing at a folder with transformer/, vae/, text_encoder/, tokenizer/, scheduler/; "
        "--model nano, nano-fast or tiny need no download"
    )


def _looked_in(source: str, subfolder: str) -> str:
    if Path(source).exists():
        return f"{Path(source) / subfolder}"
    from huggingface_hub import constants  # read at the call: sanasr.hub may switch to offline mode at run time

    where = f"the hub repo '{source}' (subfolder '{subfolder}') and the cache {constants.HF_HUB_CACHE}"
    return where + (" [offline: HF_HUB_OFFLINE, or the hub cannot be reached]" if constants.HF_HUB_OFFLINE else "")


def _refuse_a_missing_base_folder(source: str) -> None:
    """A base written as a path must exist: `--base /no/such/folder` is refused now, not looked up on the hub."""
    from sanasr_cli.hub import is_local_path

    if is_local_path(source) and not Path(source).expanduser().is_dir():
        raise ModelDirError(
            f"base folder {source} not found (--base or {BASE_ENV_VAR}: a local copy of the base, with "
            "transformer/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )


def _from_pretrained(component: str, preset: Preset, source: str, loader, subfolder: str, **kwargs):
    from safetensors import SafetensorError

    try:
        return loader(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a damaged file (an interrupted download)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MissingWeightsError(component, _looked_in(source, subfolder), _how_to_fix(preset), first_line) from None


def load_pretrained_base(
    preset: Preset,
    source: str,
    dtype: torch.dtype,
    need_transformer: bool = True,
    need_text_encoder: bool = True,
    local: bool | None = None,
    need_vae: bool = True,
):
    """Real components from a hub id or a local diffusers-layout folder ('shipped:NAME': the package's own), each
    read in `dtype`. need_text_encoder False: the tokenizer and text encoder are None (`build_prompt_encoder`
    loads them, the encoder only when a prompt needs it). local: `hub_load_mode`'s answer when asked already.
    need_vae False: the VAE is built from its config on the meta device, no weights read."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
    from transformers import AutoModel, AutoTokenizer

    from sanasr_cli.hub import hub_load_mode

    source = resolve_base_source(source)
    _refuse_a_missing_base_folder(source)
    # a local folder or a cached repo: read from the disk, nothing looked up; else the download is announced
    # first, and where the hub cannot be reached (or offline, or in the demo) nothing is tried:
    # MissingWeightsError says what is missing at once
    if local is None:
        local = hub_load_mode(f"the weights of '{preset.name}'", source)

    transformer = None
    if need_transformer:
        transformer = _from_pretrained(
            "transformer",
            preset,
            source,
            SanaTransformer2DModel.from_pretrained,
            "transformer",
            torch_dtype=dtype,
            use_safetensors=True,
            local_files_only=local,
        )
    if need_vae:
        vae = _from_pretrained(
            "vae", preset, source, AutoencoderDC.from_pretrained, "vae", torch_dtype=dtype, use_safetensors=True,
            local_files_only=local,
        )  # fmt: skip
    else:  # its config only: a model that never encodes or decodes (merge-lora)
        config = _from_pretrained("vae", preset, source, AutoencoderDC.load_config, "vae", local_files_only=local)
        with torch.device("meta"):
            vae = AutoencoderDC.from_config(config)
    tokenizer = text_encoder = None
    if need_text_encoder:
        tokenizer = _from_pretrained(
            "tokenizer", preset, source, AutoTokenizer.from_pretrained, "tokenizer", local_files_only=local
        )
        text_encoder = _from_pretrained(
            "text_encoder", preset, source, AutoModel.from_pretrained, "text_encoder", dtype=dtype,
            use_safetensors=True, local_files_only=local,
        )  # fmt: skip
    for name, module in (
        ("transformer", transformer),
        ("vae", vae if need_vae else None),
        ("text_encoder", text_encoder),
    ):
        if module is not None:  # each weight file once, as it is loaded (a NaN would be a black image)
            check_finite(module.state_dict(), f"base '{source}': {name}")
    sched = _from_pretrained(
        "scheduler", preset, source, FlowMatchEulerDiscreteScheduler.load_config, "scheduler", local_files_only=local
    )
    shift = sched.get("flow_shift") or sched.get("shift") or preset.flow_shift
    from sanasr_cli.models.folder_check import check_finite_number

    shift = check_finite_number(shift, "shift", f"base '{source}': scheduler config", low=0)
    return transformer, vae, tokenizer, text_encoder, shift


# ---------------------------------------------------------------- load / save


def describe_preset(
    name: str,
    base: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
    prompt: PromptRule | None = None,
) -> ModelDescription:
    preset = PRESETS[name]
    source = None if (random_weights or preset.hub_id is None) else default_base_source(preset, base)
    return ModelDescription(
        base_preset=name,
        base_source=source,
        random_seed=seed if source is None else None,
        flow_shift=preset.flow_shift,
        prompt=prompt or PromptRule(),
    )


def resolve_model(spec: str | Path, base: str | None = None, random_weights: bool = False, seed: int = 0):
    """A preset name or a model directory -> (description, directory or None)."""
    spec_str = str(spec)
    if spec_str in SHIPPED_STUDENTS:  # a shipped model + students shipped beside it (nano-fast)
        parent, students_dir = SHIPPED_STUDENTS[spec_str]
        description, folder = resolve_model(parent, base=base, random_weights=random_weights, seed=seed)
        for kind in ("encoder", "decoder"):
            if (students_dir / kind).is_dir():
                setattr(description, kind, SHIPPED_BASE_PREFIX + f"{students_dir.name}/{kind}")
        return description, folder
    shipped = SHIPPED_MODELS.get(spec_str)
    if shipped is not None and is_model_dir(shipped):
        return ModelDescription.load(shipped), shipped
    if spec_str in PRESETS:
        return describe_preset(spec_str, base=base, random_weights=random_weights, seed=seed), None
    path = Path(spec_str).expanduser()
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL: not a folder either
        raise ModelDirError(
            f"'{spec_str[:80]}{'...' if len(spec_str) > 80 else ''}' is neither a preset nor a model directory "
            f"({getattr(e, 'strerror', None) or e})"
        ) from None
    if is_dir:
        path = newest_checkpoint(path) or path  # a training run: its newest checkpoint
        return ModelDescription.load(path), path
    raise ModelDirError(
        f"'{spec_str}' is neither a preset ({', '.join([*PRESETS, *SHIPPED_STUDENTS])}) nor a model directory "
        f"(a folder with sanasr.json, as written by train, merge-lora or prune, or a training run)"
    )


def model_dir_problem(folder: str | Path) -> str | None:
    """Why `folder` cannot be loaded as a model directory (missing description or weights), or None.

    A cheap check before any loading, so a folder without weights fails with one line instead of deep in
    diffusers or peft.
    """
    from sanasr_cli.models.folder_check import check_inside
    from sanasr_cli.models.lora import EMA_ADAPTER_DIR

    folder = Path(folder)
    desc = ModelDescription.load(folder)  # raises ModelDirError when sanasr.json is missing or unreadable
    subs = [desc.transformer if desc.transformer != "base" else None, desc.adapter, desc.encoder, desc.decoder]
    subs = [s for s in subs if s and not s.startswith(SHIPPED_BASE_PREFIX)]
    if (folder / EMA_ADAPTER_DIR).exists() or (folder / EMA_ADAPTER_DIR).is_symlink():
        subs.append(EMA_ADAPTER_DIR)
    for sub in subs:  # the folder and every file in it, links resolved: a link out of the folder is refused
        try:
            check_inside(folder, folder / sub, str(folder))
        except ModelDirError as e:
            return str(e)
    if desc.adapter and not (folder / desc.adapter / "adapter_model.safetensors").is_file():
        pickles = sorted(p.name for p in (folder / desc.adapter).glob("*.bin"))
        if pickles:  # a pickle can run code when loaded: never loaded, whatever it is
            return (
                f"{folder}: adapter folder '{desc.adapter}/' has only {', '.join(pickles)} (a pickle file, which "
                "sanasr never loads); convert it to adapter_model.safetensors"
            )
    if desc.transformer != "base":
        tdir = folder / desc.transformer
        if not (tdir / "config.json").is_file():
            return f"{folder}: transformer folder '{desc.transformer}/' has no config.json"
        if not any(tdir.glob("*.safetensors")):
            return f"{folder}: transformer folder '{desc.transformer}/' has no weights (*.safetensors)"
    if desc.adapter:
        adir = folder / desc.adapter
        if not (adir / "adapter_config.json").is_file() or not (adir / "adapter_model.safetensors").is_file():
            return f"{folder}: adapter folder '{desc.adapter}/' lacks adapter_config.json or adapter_model.safetensors"
    for kind in ("encoder", "decoder"):
        sub = getattr(desc, kind)
        if sub and (not (folder / sub / "config.json").is_file() or not any((folder / sub).glob("*.safetensors"))):
            return f"{folder}: {kind} student folder '{sub}/' lacks config.json or its *.safetensors weights"
    return None


def student_folder(value: str, folder: Path | None) -> Path:
    """Where a recorded student lives: a sub-folder of the model directory, or 'shipped:NAME/KIND' (the
    package's models/NAME/KIND)."""
    if value.startswith(SHIPPED_BASE_PREFIX):
        from sanasr_cli.models.description import shipped_student_values
        from sanasr_cli.models.presets import NANO_DIR

        if value not in shipped_student_values():  # the package's own list only, never a path
            raise ModelDirError(f"'{value}' is not a student shipped with sanasr")
        return NANO_DIR.parent / value[len(SHIPPED_BASE_PREFIX) :]
    if folder is None:
        raise ModelDirError(f"a student '{value}' is recorded but there is no model directory to find it in")
    return Path(folder) / value


def build_students(
    description: ModelDescription,
    folder: Path | None,
    preset: Preset,
    vae,
    dtype,
    full_vae: bool,
    device=None,
    random_weights: bool = False,
) -> tuple:
    """(student encoder or None, student decoder or None) as the description (or a preset with students) says.

    full_vae: none (the teacher VAE runs). random_weights: built from the saved configs without loading weights
    (bench's meta-device counting); a preset with `extra["students"]` always builds random students.
    """
    from sanasr_cli.models.students import (
        build_student,
        check_teacher_fit,
        load_student,
        student_config,
    )

    out = []
    for kind in ("encoder", "decoder"):
        module = None
        if full_vae:
            pass
        elif getattr(description, kind):
            path = student_folder(getattr(description, kind), folder)
            if random_weights:
                from sanasr_cli.models.students import STUDENT_CLASSES

                cls = STUDENT_CLASSES[kind]
                with torch.device(device or "cpu"):
                    module = cls.from_config(cls.load_config(str(path)))
            else:
                module = load_student(kind, path, dtype)
        elif (folder is None or description.random_weights) and preset.extra.get("students"):
            # a preset with students (sana-600m-512-fast), by name or as a random-weight folder of it
            cfg = student_config(kind, preset.vae, preset.extra["students"])
            with torch.device(device or "cpu"):
                module = build_student(kind, cfg, seed=int(description.random_seed or 0) + 3)
        if module is not None:
            check_teacher_fit(kind, module, vae)
            module.to(dtype=dtype).eval().requires_grad_(False)
        out.append(module)
    return tuple(out)


def source_prompt_encoder(contract: dict, base: str | None = None):
    """The PromptEncoder of an ONNX export's source model (a `--prompt-input` export, for prompts other than its
    default), loaded as the contract records it (a preset or hub id; random weights, seed, base); SanaSRError (one
    line) when it cannot be loaded here. The contract is untrusted, like a model folder: a source or base that is a
    local folder is never opened because it names one; a base only when the user names it too (`base`, --base or
    $SANASR_BASE), a source model folder only through the Python API (`prompt_encoder=`)."""
    from sanasr_cli.errors import SanaSRError

    source, options = contract["source_model"], contract.get("source_options", {})
    need = (
        "this ONNX model takes prompt embeddings: a prompt other than its default needs the text encoder of its "
        f"source '{source}'"
    )
    if source not in PRESETS and source not in SHIPPED_STUDENTS and _is_local_path(source):
        raise SanaSRError(
            f"{need}, a folder outside the ONNX folder, which sanasr does not open because the export names it: load "
            f"it yourself (load_onnx_model(FOLDER, prompt_encoder=load_model({source!r}).prompts))"
        )
    recorded = options.get("base")
    if recorded and not recorded.startswith(SHIPPED_BASE_PREFIX) and _is_local_path(recorded):
        named = base or os.environ.get(BASE_ENV_VAR)
        if not (named and Path(named).expanduser().resolve() == Path(recorded).expanduser().resolve()):
            raise SanaSRError(
                f"{need}, whose export names the local base folder '{recorded}', outside the ONNX folder: pass --base "
                f"{recorded} (or set {BASE_ENV_VAR}) to use it"
            )
    try:
        model = load_model(
            source, random_weights=bool(options.get("random_weights")), seed=int(options.get("seed") or 0),
            base=options.get("base"),
        )  # fmt: skip
    except (ModelDirError, MissingWeightsError) as e:
        raise SanaSRError(
            f"this ONNX model takes prompt embeddings: a prompt other than its default needs the text encoder of "
            f"its source '{source}', which does not load here ({e})"
        ) from None
    return model.prompts  # the rest of the model is dropped with `model`


def load_model(
    spec: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    base: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
    full_vae: bool = False,
    vae_decoder: str | None = None,
    prompts: list[str] | None = None,
    reuse_prefix: tuple[bool, ...] = (True,),
    prompt_rule: PromptRule | None = None,
    need_vae: bool = True,
) -> SanaSR:
    """Build a SanaSR from a preset name or a model directory, on `device` in `dtype` (a folder written by
    `sanasr export` loads as the ONNX Runtime backend instead: CPU, float32, the other arguments unused). Each
    part is read (or, with random weights, built) in `dtype`; the text encoder only when a prompt needs it.

    full_vae: ignore the model's distilled students (encoder/, decoder/) and run the teacher VAE (`--full-vae`).
    vae_decoder: "full", "lite" or a folder (see `load_vae_decoder`); None: what the description records.
    prompts: the run's prompts when known before loading: encoded first (`PromptEncoder.hold`, in each layout of
    `reuse_prefix`: True the inference one, False the padded one of training and calibration) by the text encoder
    alone, which is then freed before the transformer and the VAE are built (it never sits beside them; prompts
    found in the disk cache do not build it at all). prompt_rule: the rule the run uses instead of the recorded
    one (its instruction prefix and masking shape the encodings). need_vae: False builds the VAE without weights
    (on the meta device: its config only), for a command that never encodes or decodes (merge-lora).
    """
    from sanasr_cli.export.contract import is_onnx_dir

    if is_onnx_dir(spec):  # a folder written by `sanasr export`: the ONNX Runtime backend (models/onnx_backend.py)
        import functools

        from sanasr_cli.models.onnx_backend import load_onnx_model

        return load_onnx_model(spec, load_source_encoder=functools.partial(source_prompt_encoder, base=base))
    from diffusers import SanaTransformer2DModel

    description, folder = resolve_model(spec, base=base, random_weights=random_weights, seed=seed)
    problem = model_dir_problem(folder) if folder is not None else None
    if problem:
        raise ModelDirError(problem)
    if base and folder is not None and not description.random_weights:
        description.base_source = base  # a model dir made elsewhere: point it at this machine's base copy
    if prompt_rule is not None:
        description.prompt = prompt_rule
    preset = PRESETS.get(description.base_preset)
    if preset is None:
        raise ModelDirError(f"unknown base preset '{description.base_preset}' in {folder}")
    if folder is not None:
        refuse_outside_sources(folder, description, base, vae_decoder)
        if description.adapter:  # its rank capped by its file before anything at all is loaded
            from sanasr_cli.models.folder_check import check_adapter_config

            check_adapter_config(folder / description.adapter, str(folder / description.adapter))
    own_transformer = description.transformer != "base"
    if own_transformer:
        from sanasr_cli.models.folder_check import check_diffusers_folder

        tdir = folder / description.transformer
        if not (tdir / "config.json").is_file():
            raise ModelDirError(f"{folder}: transformer folder '{description.transformer}' has no config.json")
        where = f"{folder}: transformer folder '{description.transformer}/'"
        check_diffusers_folder(SanaTransformer2DModel, tdir, where)  # config and headers, before any work
    local = None
    if not description.random_weights:  # asked once: a download is announced once, and all parts come alike
        from sanasr_cli.hub import hub_load_mode

        source = resolve_base_source(description.base_source)
        _refuse_a_missing_base_folder(source)  # before the text encoder, the first part built, looks it up
        local = hub_load_mode(f"the weights of '{preset.name}'", source)
        _check_base_configs(preset, source, local, need_transformer=not own_transformer)
    prompt_encoder = build_prompt_encoder(description, preset, dtype, local).to(device, dtype)
    if prompts is not None:  # the largest part first and alone: encoded, then freed before the rest is built
        for layout in reuse_prefix:
            prompt_encoder.hold(list(prompts), layout)
        prompt_encoder.release()
    if own_transformer:  # config and weight headers checked before anything is built (folder_check), finite after
        transformer = load_diffusers_folder(SanaTransformer2DModel, tdir, where, dtype)
    if description.random_weights:
        seed_ = int(description.random_seed or 0)
        if not own_transformer:
            transformer = build_random_transformer(preset, seed_, dtype)
        vae = build_random_vae(preset, seed_, dtype) if need_vae else _vae_without_weights(preset.vae)
        shift = description.flow_shift
        stored = torch.float32  # drawn in float32
    else:
        t, vae, _, _, shift = load_pretrained_base(
            preset, description.base_source, dtype, not own_transformer, need_text_encoder=False, local=local,
            need_vae=need_vae,
        )  # fmt: skip
        if not own_transformer:
            transformer = t
        if folder is None:
            description.flow_shift = shift
        stored = stored_dtype(_local_snapshot(resolve_base_source(description.base_source)), "transformer")
    if own_transformer:
        stored = stored_dtype(folder, description.transformer)
    if description.adapter:
        adapter_dir = folder / description.adapter
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelDirError(f"{folder}: adapter folder '{description.adapter}' has no adapter_config.json")
        try:
            load_adapter(transformer, adapter_dir)
        except ModelDirError:  # the folder checks name the file and the key themselves
            raise
        except Exception as e:  # noqa: BLE001 - bad target_modules, a corrupt header, keys that do not fit
            raise ModelDirError(
                f"{folder}: adapter folder '{description.adapter}/' cannot be loaded ({_first_line(e)})"
            ) from None
    transformer.eval().requires_grad_(False)
    students = build_students(description, folder, preset, vae, dtype, full_vae)
    refuse_unused_decoder(spec, vae_decoder, students[1])  # before a decoder is looked for
    if need_vae:
        use_decoder(vae, description, vae_decoder, preset, dtype)
    if full_vae:
        description.encoder = description.decoder = None  # what runs is what the description says
    model = assemble_model(transformer, vae, None, None, description, preset, folder, students, prompt_encoder)
    model.info["stored_dtype"] = stored  # what a command writing the model back saves it in (prune)
    return model.to(device=device, dtype=dtype)


def _vae_without_weights(config: dict):
    """An AutoencoderDC of `config` on the meta device: its structure and config, no memory."""
    from diffusers import AutoencoderDC

    with torch.device("meta"):
        return AutoencoderDC(**config)


def stored_dtype(folder: Path | None, sub: str) -> torch.dtype | None:
    """The floating dtype the weights in folder/sub/*.safetensors are stored in (from a header), None if unknown."""
    from safetensors import safe_open

    files = sorted((Path(folder) / sub).glob("*.safetensors")) if folder is not None else []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    dtype = f.get_slice(key).get_dtype()
                    found = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(dtype)
                    if found is not None:
                        return found
        except Exception:  # noqa: BLE001 - an unreadable file: unknown (the loader reports it)
            continue
    return None


def _check_base_configs(preset: Preset, source: str, local: bool, need_transformer: bool) -> None:
    """MissingWeightsError naming the first part of the base that is not there (transformer, vae), from its config
    alone: a missing base is said as such before the text encoder's files are looked for."""
    from diffusers import AutoencoderDC, SanaTransformer2DModel

    parts = (("transformer", SanaTransformer2DModel),) if need_transformer else ()
    for name, cls in (*parts, ("vae", AutoencoderDC)):
        _from_pretrained(name, preset, source, cls.load_config, name, local_files_only=local)


def build_prompt_encoder(
    description: ModelDescription, preset: Preset, dtype: torch.dtype, local: bool | None = None
) -> PromptEncoder:
    """The model's PromptEncoder: its tokenizer now, its text encoder (Gemma-2 2B in SANA, the largest part) built
    in `dtype` only when a prompt first needs it, its encodings kept in the disk cache under the encoder's identity
    (`models/embedding_cache.py`; none where the identity cannot be known without the network). local:
    `hub_load_mode`'s answer for the base (None: asked here)."""
    from sanasr_cli.models.embedding_cache import EmbeddingCache, default_cache_dir

    rule = description.prompt
    if description.random_weights:
        seed = int(description.random_seed or 0)
        tokenizer = build_local_tokenizer()
        config = random_text_config(preset, tokenizer)

        def build(device, run_dtype):  # moved to `device` by the caller
            return build_random_text_encoder(config, seed, run_dtype or dtype)

        identity = random_text_identity(preset.name, config, seed)
        hidden = config.hidden_size
    else:
        from sanasr_cli.hub import hub_load_mode

        source = resolve_base_source(description.base_source)
        if local is None:
            local = hub_load_mode(f"the weights of '{preset.name}'", source)
        tokenizer, hidden, identity = load_pretrained_tokenizer(preset, source, local)

        def build(device, run_dtype):
            return load_pretrained_text_encoder(preset, source, run_dtype or dtype, local, device)

    folder = default_cache_dir()
    return PromptEncoder(
        tokenizer,
        build,
        max_length=preset.max_text_length,
        mask_degradation_words=rule.mask_degradation_words,
        complex_human_instruction=rule.complex_human_instruction,
        hidden_size=hidden,
        store=EmbeddingCache(folder, identity) if folder is not None and identity is not None else None,
    )


def _versions() -> str:
    import transformers

    from sanasr_cli import __version__

    return f"sanasr {__version__}, torch {torch.__version__}, transformers {transformers.__version__}"


def random_text_identity(preset_name: str, config, seed: int) -> str:
    """A random text encoder is its preset's config, its seed and the code that draws it (versions)."""
    import hashlib
    import json

    cfg = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    return f"random {preset_name} seed {seed} config {cfg} ({_versions()})"


def load_pretrained_tokenizer(preset: Preset, source: str, local: bool):
    """(tokenizer, the text encoder's width, the encoder's identity or None) from a hub id or local folder, without
    loading the encoder's weights: its identity is the fingerprint of its files and the tokenizer's
    (`embedding_cache.files_fingerprint`), None for a hub repo not in the cache yet."""
    from transformers import AutoConfig, AutoTokenizer

    from sanasr_cli.models.embedding_cache import files_fingerprint

    tokenizer = _from_pretrained(
        "tokenizer", preset, source, AutoTokenizer.from_pretrained, "tokenizer", local_files_only=local
    )
    config = _from_pretrained(
        "text_encoder", preset, source, AutoConfig.from_pretrained, "text_encoder", local_files_only=local
    )
    folder = _local_snapshot(source)
    identity = None
    if folder is not None:
        prints = [files_fingerprint(folder / sub) for sub in ("text_encoder", "tokenizer")]
        identity = f"pretrained {source} {' '.join(prints)} ({_versions()})"
    return tokenizer, int(config.hidden_size), identity


def _local_snapshot(source: str) -> Path | None:
    """The folder holding `source`'s files on this machine: itself, or its snapshot in the Hugging Face cache."""
    from sanasr_cli.hub import is_local_source

    if is_local_source(source):
        return Path(source).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or not a repo id): no identity, no disk cache
        return None


def load_pretrained_text_encoder(
    preset: Preset, source: str, dtype: torch.dtype, local: bool, device: torch.device | str | None = None
):
    """The text encoder's weights from a hub id or local folder, read in `dtype` and checked finite. To run on a CPU
    (`device` None or a CPU) a large one is streamed from its files instead of loaded (`streamed_encoder`)."""
    from transformers import AutoConfig, AutoModel

    from sanasr_cli.models.folder_check import check_finite_files
    from sanasr_cli.models.streamed_encoder import streaming_device_map

    config = _from_pretrained(
        "text_encoder", preset, source, AutoConfig.from_pretrained, "text_encoder", local_files_only=local
    )
    device_map = streaming_device_map(config, dtype, device)
    encoder = _from_pretrained(
        "text_encoder", preset, source, AutoModel.from_pretrained, "text_encoder", dtype=dtype, use_safetensors=True,
        local_files_only=local, **({"device_map": device_map} if device_map else {}),
    )  # fmt: skip
    where = f"base '{source}': text_encoder"
    if device_map:  # its weights are not in memory: checked in its files, one tensor at a time
        check_finite_files(_local_snapshot(source) / "text_encoder", where)
    else:
        check_finite(encoder.state_dict(), where)
    return encoder


def refuse_outside_sources(folder: Path, description: ModelDescription, base: str | None, vae_decoder) -> None:
    """A model folder may name weights elsewhere only as a preset's hub id, `shipped:NAME` or a hub id: a local
    base or VAE decoder outside it is used only when the user names it (--base / $SANASR_BASE, --vae-decoder)."""
    from sanasr_cli.models.presets import VAE_DECODERS

    source = description.base_source
    if not base and source and not source.startswith(SHIPPED_BASE_PREFIX) and _is_local_path(source):
        env = os.environ.get(BASE_ENV_VAR)
        if not (env and Path(env).expanduser().resolve() == Path(source).expanduser().resolve()):
            raise ModelDirError(
                f"{folder}: {DESCRIPTION_NAME} names the local base folder '{source}'; a model folder may not "
                f"point at files outside it: pass --base {source} (or set {BASE_ENV_VAR}) to use it"
            )
    if source and source.startswith(SHIPPED_BASE_PREFIX) and source[len(SHIPPED_BASE_PREFIX) :] != "nano":
        raise ModelDirError(f"{folder}: base_source '{source}' is not a base shipped with sanasr (shipped:nano)")
    if vae_decoder is None and description.vae_decoder not in VAE_DECODERS:
        raise ModelDirError(
            f"{folder}: {DESCRIPTION_NAME} names the decoder folder '{description.vae_decoder}' outside the model "
            f"directory; pass --vae-decoder {description.vae_decoder} to use it"
        )


def _is_local_path(source: str) -> bool:
    """A base_source naming the file system rather than a hub repo ('org/name')."""
    return (
        source.startswith(("/", ".", "~", "\\"))
        or Path(source).expanduser().exists()
        or source.count("/") > 1
        or ":" in source
    )


def refuse_unused_decoder(spec, vae_decoder: str | None, decoder_student) -> None:
    """A decoder asked for while a distilled decoder student decodes instead would never run: refused, so that
    what the description records is what decodes (with full_vae there is no student and the choice applies)."""
    if vae_decoder is not None and decoder_student is not None:
        raise ModelDirError(
            f"--vae-decoder {vae_decoder}: {spec} decodes with its distilled decoder student; add --full-vae to "
            "decode with the VAE (then --vae-decoder chooses its decoder)"
        )


def use_decoder(
    vae,
    description: ModelDescription,
    choice: str | None,
    preset: Preset,
    dtype: torch.dtype,
    build_only: bool = False,
):
    """Put the decoder `choice` (None: the recorded one) in the VAE and record it in the description; returns
    the decoder it replaced (None when the VAE keeps its own). build_only: random weights, nothing read."""
    choice = choice or description.vae_decoder
    seed = int(description.random_seed or 0)
    decoder = load_vae_decoder(choice, preset, description, dtype, description.random_weights, seed, build_only)
    description.vae_decoder = choice
    if decoder is None:
        return None
    replaced, vae.decoder = vae.decoder, decoder
    return replaced


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _move_or_cast(module: torch.nn.Module, device, dtype) -> dict:
    """`to`'s arguments for `module`, without a dtype it already has: diffusers' `ModelMixin.to` logs a warning
    about fp32 modules (even with none) whenever a dtype is passed, and every part is built in its dtype already."""
    kwargs = {"device": device}
    if dtype is not None and any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        kwargs["dtype"] = dtype
    return kwargs


def assemble_model(
    transformer,
    vae,
    tokenizer,
    text_encoder,
    description: ModelDescription,
    preset: Preset,
    folder: Path | None,
    students: tuple = (None, None),
    prompts: PromptEncoder | None = None,
) -> SanaSR:
    """Wrap built components into a SanaSR as the description says (tau_g, shift, prompt rule); `students`:
    (student encoder, student decoder), either None; `prompts`: a PromptEncoder made already (else one over
    `tokenizer` and `text_encoder`)."""
    return SanaSR(
        codec=LatentCodec(vae, *students),
        prompts=prompts
        or PromptEncoder(
            tokenizer,
            text_encoder,
            max_length=preset.max_text_length,
            mask_degradation_words=description.prompt.mask_degradation_words,
            complex_human_instruction=description.prompt.complex_human_instruction,
        ),
        restorer=OneStepRestorer(
            transformer,
            tau_g=description.tau_g,
            flow_shift=description.flow_shift,
            timestep_convention=description.timestep_convention,
        ),
        description=description,
        source_dir=folder,
    )


def save_model_dir(
    model: SanaSR,
    out: str | Path,
    description: ModelDescription | None = None,
    save_transformer: bool = True,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a model directory atomically (a temp folder renamed into place).

    save_transformer: store the transformer weights (base + any merge/prune) as a diffusers folder; when False,
    the directory refers to the base transformer. A LoRA adapter on the transformer is saved as `adapter/`.
    extra_files: {relative name: text} written into the directory before it is renamed into place (reports).
    """
    from sanasr_cli.safe_files import atomic_write, check_replaceable_dir, make_temp_dir, replace_dir, usual_file_modes

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    check_replaceable_dir(out)  # --overwrite only ever replaces a model directory sanasr wrote
    desc = description or model.description
    # the restorer is the truth
    desc.tau_g, desc.flow_shift = model.restorer.tau_g, model.restorer.flow_shift
    desc.timestep_convention = model.restorer.timestep_convention
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.")
    try:
        transformer = model.transformer
        if has_adapter(transformer):
            save_adapter(transformer, tmp / "adapter")
            desc.adapter = "adapter"
        if save_transformer:
            _save_base_transformer(transformer, tmp / "transformer")
            usual_file_modes(tmp / "transformer")  # save_pretrained's safetensors files are 0600
            desc.transformer = "transformer"
        for kind, student in (("encoder", model.codec.lq_encoder), ("decoder", model.codec.light_decoder)):
            setattr(desc, kind, None)
            if student is not None:  # the students travel with the model (prune, merge-lora of a distilled one)
                student.save_pretrained(str(tmp / kind), safe_serialization=True)
                usual_file_modes(tmp / kind)
                setattr(desc, kind, kind)
        desc.save(tmp)
        for name, text in (extra_files or {}).items():
            atomic_write(tmp / name, text)
        # checked again now, after the work: a folder that appeared or changed at OUT meanwhile is never replaced
        replace_dir(tmp, out, check=lambda o: _still_replaceable(o, overwrite))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _still_replaceable(out: Path, overwrite: bool) -> None:
    from sanasr_cli.errors import UnsafeOutputError
    from sanasr_cli.safe_files import check_replaceable_dir

    if os.path.lexists(out) and not overwrite:
        raise UnsafeOutputError(f"{out} appeared while the model was being written: it is left as it is, not replaced")
    check_replaceable_dir(out)


def _save_base_transformer(transformer, folder: Path) -> None:
    """save_pretrained of the transformer without any LoRA layers (those live in adapter/)."""
    if has_adapter(transformer):
        from diffusers import SanaTransformer2DModel

        clean = SanaTransformer2DModel.from_config(transformer.config).to(transformer.dtype)
        state = {k.replace(".base_layer", ""): v for k, v in transformer.state_dict().items() if "lora_" not in k}
        clean.load_state_dict(state, strict=True)
        transformer = clean
    transformer.save_pretrained(str(folder), safe_serialization=True)
