"""The model description: the small JSON (`sanasr.json`) that makes a folder a model directory.

A model directory holds everything a command needs, so no architecture flag is ever repeated:

    MODEL_DIR/
      sanasr.json      base components, tau_g, flow shift, prompt rule, LoRA / pruning records, history
      transformer/     optional: a diffusers SanaTransformer2DModel folder (merged or pruned weights)
      adapter/         optional: a PEFT LoRA adapter folder over the transformer
      encoder/         optional: an LQ-native student of the VAE encoder (`sanasr distill encoder`)
      decoder/         optional: a light student of the VAE decoder (`sanasr distill decoder`)

The VAE and text encoder are always the frozen base components named in `base_*`; the students, when recorded in
`encoder` / `decoder`, replace the VAE's encoder / decoder at inference (`--full-vae` falls back to the VAE);
`vae_decoder` may swap the VAE's own decoder for DC-AE-Lite's (`--vae-decoder lite`, models/sanasr.py
`load_vae_decoder`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sanasr_cli.errors import ModelDirError
from sanasr_cli.models.presets import SHIPPED_BASE_PREFIX
from sanasr_cli.models.schedule import LEGACY_TIMESTEP_CONVENTION, TIMESTEP_CONVENTION
from sanasr_cli.prompts.rule import PromptRule

log = logging.getLogger("sanasr")

DESCRIPTION_FILE = "sanasr.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # RUN/checkpoint-<step>/, each a model directory (`sanasr train`)
FORMAT = "sanasr-model"
FORMAT_VERSION = 1


@dataclass
class ModelDescription:
    base_preset: str = "tiny"
    base_source: str | None = None  # hub id or local folder with pretrained components; None: random weights
    random_seed: int | None = 0  # seed of the random components (when base_source is None)
    tau_g: float = 900.0
    flow_shift: float = 3.0
    prompt: PromptRule = field(default_factory=PromptRule)
    transformer: str = "base"  # "base", or the subfolder holding a diffusers transformer
    adapter: str | None = None  # subfolder holding a PEFT adapter
    lora: dict | None = None  # rank, alpha, targets, merged, scale
    pruning: dict | None = None  # strategy, budget, kept blocks, parameter counts
    history: list[dict] = field(default_factory=list)  # one record per command that wrote this model
    encoder: str | None = None  # subfolder holding a student encoder (models/students.py LQEncoder)
    decoder: str | None = None  # subfolder holding a student decoder (LightDecoder)
    distill: dict | None = None  # how the students were distilled (steps, loss, data)
    # what the transformer is fed for tau: "sigma*1000" (SANA's own); "raw-tau" in folders written before it
    timestep_convention: str = TIMESTEP_CONVENTION
    # the VAE decoder that runs: "full" (the base DC-AE's), "lite" (DC-AE-Lite's), or a local AutoencoderDC folder
    vae_decoder: str = "full"

    @property
    def random_weights(self) -> bool:
        return self.base_source is None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompt"] = self.prompt.to_dict()
        return {"format": FORMAT, "version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> ModelDescription:
        if not isinstance(d, dict):
            raise ModelDirError(f"not a sanasr model description (a JSON {type(d).__name__}, not an object)")
        if d.get("format") != FORMAT:
            raise ModelDirError(f"not a sanasr model description (format={d.get('format')!r})")
        _check_types(d)
        if int(d.get("version", 0)) > FORMAT_VERSION:
            raise ModelDirError(f"model description version {d['version']} is newer than this sanasr understands")
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        fields["prompt"] = PromptRule.from_dict(d.get("prompt"))
        if "timestep_convention" not in d:
            # written before the convention was recorded: trained feeding the raw tau, prompts without SANA's
            # complex human instruction; keep both so the model runs as it was trained
            fields["timestep_convention"] = LEGACY_TIMESTEP_CONVENTION
            if "complex_human_instruction" not in (d.get("prompt") or {}):
                fields["prompt"].complex_human_instruction = False
        if fields["timestep_convention"] not in (TIMESTEP_CONVENTION, LEGACY_TIMESTEP_CONVENTION):
            raise ModelDirError(
                f"unknown timestep_convention {fields['timestep_convention']!r} "
                f"(known: {TIMESTEP_CONVENTION!r}, {LEGACY_TIMESTEP_CONVENTION!r})"
            )
        return cls(**fields)

    @property
    def legacy_timestep(self) -> bool:
        return self.timestep_convention == LEGACY_TIMESTEP_CONVENTION

    def save(self, folder: str | Path) -> None:
        from sanasr_cli.safe_files import atomic_write

        atomic_write(Path(folder) / DESCRIPTION_FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> ModelDescription:
        from sanasr_cli.models.folder_check import MAX_CONFIG_BYTES, describe_file_kind
        from sanasr_cli.safe_files import note_inputs

        path = Path(folder) / DESCRIPTION_FILE
        kind = describe_file_kind(path)
        if kind == "missing":
            raise ModelDirError(f"{folder} is not a model directory: {DESCRIPTION_FILE} not found")
        if kind is not None:  # a FIFO would block, a link to /dev/zero never ends: named, never read
            raise ModelDirError(f"{folder}: {DESCRIPTION_FILE} is {kind}, not a file")
        real = path.resolve()
        if Path(folder).resolve() not in real.parents:  # a link out of the folder: never read
            raise ModelDirError(f"{folder}: '{DESCRIPTION_FILE}' leads outside the model directory (to {real})")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelDirError(f"{folder}: {DESCRIPTION_FILE} is {path.stat().st_size} bytes, too large to be one")
        note_inputs(path)
        try:
            desc = cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelDirError(f"{path} is not valid JSON: {e}") from None
        except RecursionError:
            raise ModelDirError(f"{path} is nested too deeply to be a model description") from None
        except ModelDirError as e:
            raise ModelDirError(f"{folder}: {e}") from None
        if desc.legacy_timestep:
            log.warning(
                "warning: %s was written before sanasr recorded its timestep convention: it runs as it was "
                "trained (transformer fed the raw tau, no complex human instruction), not as SANA was trained "
                "(1000 * sigma_tau); retrain it to use the pretrained prior as intended",
                folder,
            )
        return desc


# A description comes from a file anyone may have written: every field is checked before use, so a wrong one
# is one line naming it (not a TypeError deep in a loader). None is allowed where the dataclass allows it.
_NUMBER = (int, float)
_FIELD_TYPES = {
    "version": (int,),
    "base_preset": (str,),
    "base_source": (str, type(None)),
    "random_seed": (int, type(None)),
    "tau_g": _NUMBER,
    "flow_shift": _NUMBER,
    "prompt": (dict, type(None)),
    "transformer": (str,),
    "adapter": (str, type(None)),
    "lora": (dict, type(None)),
    "pruning": (dict, type(None)),
    "history": (list,),
    "timestep_convention": (str,),
    "encoder": (str, type(None)),
    "decoder": (str, type(None)),
    "distill": (dict, type(None)),
    "vae_decoder": (str,),
}
_PROMPT_TYPES = {
    "tagger": (str,),
    "template": (str,),
    "mask_degradation_words": (bool,),
    "tag_limit": (int,),
    "tagger_options": (dict, type(None)),
    "complex_human_instruction": (bool,),
}


def _check_types(d: dict) -> None:
    from sanasr_cli.prompts.taggers import TAGGERS

    def check(where: dict, types: dict, prefix: str) -> None:
        for key, allowed in types.items():
            if key in where and (
                not isinstance(where[key], allowed) or (isinstance(where[key], bool) and bool not in allowed)
            ):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise ModelDirError(f"{DESCRIPTION_FILE}: '{prefix}{key}' must be {names}, not {where[key]!r}")

    check(d, _FIELD_TYPES, "")
    check(d.get("prompt") or {}, _PROMPT_TYPES, "prompt.")
    tagger = (d.get("prompt") or {}).get("tagger", "none")
    if tagger not in TAGGERS:
        raise ModelDirError(
            f"{DESCRIPTION_FILE}: unknown tagger {tagger!r} in 'prompt.tagger' (known: {', '.join(sorted(TAGGERS))})"
        )
    _check_numbers(d)
    for key in ("transformer", "adapter", "encoder", "decoder"):
        value = d.get(key)
        if value is None or (key == "transformer" and value == "base"):
            continue
        if key in ("encoder", "decoder") and value.startswith(SHIPPED_BASE_PREFIX):
            if value not in shipped_student_values():  # only the package's own list, never a path
                raise ModelDirError(
                    f"{DESCRIPTION_FILE}: '{key}' {value!r} is not one of the students shipped with sanasr "
                    f"({', '.join(shipped_student_values())})"
                )
            continue
        parts = Path(value).parts
        if not value or Path(value).is_absolute() or ".." in parts or "\\" in value:
            raise ModelDirError(
                f"{DESCRIPTION_FILE}: '{key}' must name a sub-folder of the model directory, not {value!r}"
            )


# tau is the one-step time in [0, 1000] (SANA's 1000 steps); a flow shift <= 0 divides by zero or flips the schedule
TAU_G_MAX = 1000.0


def _check_numbers(d: dict) -> None:
    """Finite numbers in range: a NaN tau_g or flow_shift would restore every image to NaN (a black PNG)."""
    from sanasr_cli.models.folder_check import check_finite_number

    if "tau_g" in d:
        check_finite_number(d["tau_g"], "tau_g", DESCRIPTION_FILE, low=0, high=TAU_G_MAX)
    if "flow_shift" in d:
        check_finite_number(d["flow_shift"], "flow_shift", DESCRIPTION_FILE, low=0)
    seed = d.get("random_seed")
    if seed is not None and not 0 <= seed < 2**63:
        raise ModelDirError(f"{DESCRIPTION_FILE}: 'random_seed' must be from 0 to 2^63 - 1, not {seed}")


def shipped_student_values() -> tuple[str, ...]:
    """The `shipped:NAME/KIND` values a description may hold: the students shipped with the package."""
    from sanasr_cli.models.presets import SHIPPED_STUDENTS

    return tuple(
        f"{SHIPPED_BASE_PREFIX}{folder.name}/{kind}" for _, folder in SHIPPED_STUDENTS.values() for kind in _KINDS
    )


_KINDS = ("encoder", "decoder")


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / DESCRIPTION_FILE).is_file()


def newest_checkpoint(folder: str | Path) -> Path | None:
    """The newest RUN/checkpoint-<step>/ model directory when `folder` is a training run (a folder with no
    sanasr.json of its own), else None: commands take a run folder where the docs pass one."""
    folder = Path(folder)
    try:
        if not folder.is_dir() or is_model_dir(folder):
            return None
    except (OSError, ValueError):  # a name too long for the file system, a NUL: not a run (the caller says why)
        return None
    steps = []
    for d in folder.iterdir():
        m = CHECKPOINT_RE.match(d.name)
        if m and d.is_dir() and not d.is_symlink() and is_model_dir(d):
            steps.append((int(m.group(1)), d))
    return max(steps)[1] if steps else None


def loads_an_adapter(spec: str | Path) -> bool:
    """Whether loading `spec` (what `--model` takes) adds a LoRA adapter, read from sanasr.json alone (nothing
    heavy is imported): False for the presets, nano, nano-fast, a merged, pruned or distilled model, an ONNX
    export of one of these; True for a training checkpoint (or an export of one: its source model is loaded for a
    prompt of its own), and whenever the answer is unsure (a folder that does not load)."""
    from sanasr_cli.export.contract import CONTRACT_NAME, is_onnx_dir, load_contract
    from sanasr_cli.models.presets import PRESETS, SHIPPED_MODELS, SHIPPED_STUDENTS

    spec = str(spec)
    spec = SHIPPED_STUDENTS[spec][0] if spec in SHIPPED_STUDENTS else spec
    if spec in SHIPPED_MODELS:
        folder = SHIPPED_MODELS[spec]
    elif spec in PRESETS:
        return False
    else:
        folder = Path(spec).expanduser()
        folder = newest_checkpoint(folder) or folder
        if (folder / CONTRACT_NAME).is_file():  # an export: its source model is loaded for a prompt of its own
            try:
                source = load_contract(folder).get("source_model")
            except ModelDirError:
                return True
            return not isinstance(source, str) or is_onnx_dir(source) or loads_an_adapter(source)
    try:
        return bool(ModelDescription.load(folder).adapter)
    except (ModelDirError, OSError):
        return True  # the load reports it; nothing decided here
