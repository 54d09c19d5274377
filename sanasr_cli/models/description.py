"""The model description: the small JSON (`sanasr.json`) that makes a folder a model directory.

A model directory holds everything a command needs, so no architecture flag is ever repeated:

    MODEL_DIR/
      sanasr.json      base components, tau_g, flow shift, prompt rule, LoRA / pruning records, history
      transformer/     optional: a diffusers SanaTransformer2DModel folder (merged or pruned weights)
      adapter/         optional: a PEFT LoRA adapter folder over the transformer

The VAE and text encoder are always the frozen base components named in `base_*`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sanasr_cli.errors import ModelDirError
from sanasr_cli.models.schedule import LEGACY_TIMESTEP_CONVENTION, TIMESTEP_CONVENTION
from sanasr_cli.prompts.rule import PromptRule

log = logging.getLogger("sanasr")

DESCRIPTION_FILE = "sanasr.json"
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
    # what the transformer is fed for tau: "sigma*1000" (SANA's own); "raw-tau" in folders written before it
    timestep_convention: str = TIMESTEP_CONVENTION

    @property
    def random_weights(self) -> bool:
        return self.base_source is None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompt"] = self.prompt.to_dict()
        return {"format": FORMAT, "version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> ModelDescription:
        if d.get("format") != FORMAT:
            raise ModelDirError(f"not a sanasr model description (format={d.get('format')!r})")
        if int(d.get("version", 0)) > FORMAT_VERSION:
            raise ModelDirError(
                f"model description version {d['version']} is newer than this sanasr understands"
            )
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
        (Path(folder) / DESCRIPTION_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> ModelDescription:
        path = Path(folder) / DESCRIPTION_FILE
        if not path.is_file():
            raise ModelDirError(f"{folder} is not a model directory: {DESCRIPTION_FILE} not found")
        try:
            desc = cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ModelDirError(f"{path} is not valid JSON: {e}") from None
        if desc.legacy_timestep:
            log.warning(
                "warning: %s was written before sanasr recorded its timestep convention: it runs as it was "
                "trained (transformer fed the raw tau, no complex human instruction), not as SANA was trained "
                "(1000 * sigma_tau); retrain it to use the pretrained prior as intended",
                folder,
            )
        return desc


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / DESCRIPTION_FILE).is_file()
