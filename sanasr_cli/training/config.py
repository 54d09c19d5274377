"""The training configuration: one typed dataclass, validated up front, written next to every checkpoint.

Defaults are the paper's (App. B): LoRA rank/alpha 64 on the attention projections, AdamW lr 5e-5, weight
decay 1e-2, betas (0.9, 0.999), eps 1e-8, gradient clipping 1.0, EMA 0.999, batch 4, 512 crops, 100K steps,
loss weights 1 / 2 / 1 / 1, HQ-prompt protocol (prompts tagged from the HQ crop, tau_g 900, t in [70, 650]),
precision auto = fp16 with loss scaling on CUDA. Validation errors name the CLI
flag to fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from sanasr_cli.errors import SanaSRError

CONFIG_FILE = "train_config.json"
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
LORA_TARGET_CHOICES = ("attn", "attn+ffn")
# Fields that may change between a run and its resumption (they do not change what is being trained).
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "save_every",
        "validate_every",
        "validation_images",
        "log_every",
        "checkpoints_total_limit",
        "num_workers",
        "resume",
        "output",
        "offload_text_encoder",
        "base",
        "tag_cache",
        "teacher_cache",
    }
)


# `train --model NAME` for the models that ship (they train offline): the flags left out take these values where
# TrainConfig's (the paper's, for SANA-600M on DIV2K) do not fit a small folder of ordinary photos. 128 px crops
# are nano's recipe (recipes/nano) and fit every photo the Python packages ship (451x300 and up; 512 px crops skip
# them all); a batch of 2 needs two photos, where 4 needs four.
MODEL_TRAIN_DEFAULTS: dict[str, dict] = {
    "nano": {"crop": 128, "batch_size": 2},
    "nano-fast": {"crop": 128, "batch_size": 2},
}
OFFLINE_TRAIN_MODELS = ("nano", "nano-fast", "tiny")
VGG16_WEIGHTS = "vgg16-397923af.pth"  # torchvision's VGG16: LPIPS's trunk (--lambda-perceptual)


def vgg16_weights_path() -> Path:
    """Where torchvision keeps (and looks for) the VGG16 weights LPIPS needs."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS


def apply_offline_defaults(config: TrainConfig, given: set[str]) -> str | None:
    """For a shipped model (`config.model` in OFFLINE_TRAIN_MODELS), the defaults that train offline, on the flags
    not `given`: its own crop, and no LPIPS when the VGG16 weights are not on this machine (instead of a
    download). Returns the one line that says what it changed (None: nothing)."""
    if config.model not in OFFLINE_TRAIN_MODELS:
        return None
    changed = []
    for name, value in MODEL_TRAIN_DEFAULTS.get(config.model, {}).items():
        if name not in given and getattr(config, name) != value:
            setattr(config, name, value)
            changed.append(f"--{name.replace('_', '-')} {value}")
    lpips = config.lambda_perceptual > 0 and config.perceptual_backbone == "vgg"
    if lpips and "lambda_perceptual" not in given and not vgg16_weights_path().is_file():
        config.lambda_perceptual = 0.0
        changed.append(
            f"--lambda-perceptual 0 (LPIPS needs {VGG16_WEIGHTS} in {vgg16_weights_path().parent}, a download)"
        )
    if not changed:
        return None
    return f"--model {config.model} trains offline with {', '.join(changed)} (flags given override these)"


class ConfigError(SanaSRError):
    """A bad training option; `flag` is the command-line flag to change."""

    def __init__(self, flag: str, message: str):
        self.flag = flag
        super().__init__(f"{flag}: {message}")


@dataclass
class TrainConfig:
    # model and data
    model: str = "sana-600m-512"
    base: str | None = None
    output: Path = Path("runs/sanasr")
    hq: list[Path] = field(default_factory=list)
    pairs: tuple[Path, Path] | None = None
    lq: Path | None = None  # LQ images without references: the teacher's outputs are their targets
    crop: int = 512
    scale: int = 4
    # length and cadence
    max_steps: int = 100_000
    save_every: int = 1000
    validate_every: int = 1000
    validation_images: int = 4
    log_every: int = 10
    checkpoints_total_limit: int | None = None
    resume: str | None = None
    # optimisation (App. B)
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr: float = 5e-5
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"
    gradient_checkpointing: bool = False
    # LoRA
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0
    lora_targets: str = "attn"
    # objective (Eq. 7-8, 16-17)
    protocol: str = "hq"
    tau_g: float | None = None  # None: the protocol's (900 hq, 999 lq); the generation timestep of Eq. 4
    lambda_pixel: float = 1.0
    lambda_perceptual: float = 2.0
    lambda_align: float = 1.0
    lambda_consistency: float = 1.0
    perceptual_backbone: str = "vgg"
    # a teacher (sanasr_cli.peers): its x4 outputs of the LQ images, cached once, are a target of their own
    teacher: str | None = None
    lambda_teacher: float = 1.0
    teacher_cache: str | None = None  # None: RUN/teacher_cache
    # prompts: the PromptRule (as a dict) to train with; None: the model's own rule
    prompt_rule: dict | None = None
    tag_cache: str | None = None
    offload_text_encoder: bool = False
    # misc
    seed: int = 0
    num_workers: int = 2

    # ------------------------------------------------------------ validation

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the flag for the first invalid option; return self."""
        for name, value in self.to_dict().items():  # a NaN or inf number trains a NaN model (or never stops)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError("--" + name.replace("_", "-"), f"must be a finite number, got {value}")
        if not 0 <= self.seed < 2**32:  # numpy's seeds are 32-bit
            raise ConfigError("--seed", f"must be from 0 to 2^32 - 1, got {self.seed}")
        positive = {
            "--max-steps": self.max_steps,
            "--save-every": self.save_every,
            "--validate-every": self.validate_every,
            "--batch-size": self.batch_size,
            "--gradient-accumulation-steps": self.gradient_accumulation_steps,
            "--lora-rank": self.lora_rank,
            "--log-every": self.log_every,
            "--crop": self.crop,
        }
        for flag, value in positive.items():
            if int(value) < 1:
                raise ConfigError(flag, f"must be at least 1, got {value}")
        if self.crop % self.scale:
            raise ConfigError("--crop", f"must be a multiple of the scale {self.scale}, got {self.crop}")
        if self.scale != 4:
            raise ConfigError("--scale", "SANA-SR is trained for x4 only")
        sources = [flag for flag, given in (("--hq", self.hq), ("--pairs", self.pairs), ("--lq", self.lq)) if given]
        if not sources:
            raise ConfigError(
                "--hq", "give training images with --hq DIR (repeatable), --pairs LQ_DIR HQ_DIR, or --lq DIR --teacher"
            )
        if len(sources) > 1:
            raise ConfigError(sources[1], f"give one source of training images, not {' and '.join(sources)}")
        if self.lq is not None and self.teacher is None:
            raise ConfigError("--lq", "LQ images without references train on a teacher's outputs: add --teacher PEER")
        if self.teacher is not None and self.hq:
            raise ConfigError(
                "--teacher",
                "a teacher's outputs are computed once per LQ image, so they need fixed LQ inputs: --pairs LQ_DIR "
                "HQ_DIR or --lq DIR (`sanasr degrade` makes pairs from HQ photos), not --hq",
            )
        if self.lq is not None and not Path(self.lq).is_dir():
            raise ConfigError("--lq", f"{self.lq} is not a folder")
        for d in self.hq:
            if not Path(d).is_dir():
                raise ConfigError("--hq", f"{d} is not a folder")
        if self.pairs is not None:
            for d in self.pairs:
                if not Path(d).is_dir():
                    raise ConfigError("--pairs", f"{d} is not a folder")
        if not self.lr > 0:
            raise ConfigError("--lr", f"must be positive, got {self.lr}")
        if self.lr_warmup_steps < 0:
            raise ConfigError("--lr-warmup-steps", "must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("--ema-decay", f"must be in [0, 1) (0 turns EMA off), got {self.ema_decay}")
        if self.max_grad_norm < 0:
            raise ConfigError("--max-grad-norm", "must be >= 0 (0 turns clipping off)")
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError("--precision", f"use one of {', '.join(PRECISION_CHOICES)}, got '{self.precision}'")
        if self.lora_targets not in LORA_TARGET_CHOICES:
            raise ConfigError("--lora-targets", f"use one of {', '.join(LORA_TARGET_CHOICES)}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("--lora-dropout", "must be in [0, 1)")
        if self.protocol not in ("hq", "lq"):
            raise ConfigError(
                "--protocol",
                f"use hq (HQ-crop prompts, tau_g 900, t in [70, 650]) or lq (LQ-crop prompts, 999, "
                f"[20, 980]), got '{self.protocol}'",
            )
        if self.tau_g is not None and not 0 < self.tau_g <= 1000:
            raise ConfigError("--tau-g", f"must be in (0, 1000], got {self.tau_g}")
        for flag, value in (
            ("--lambda-pixel", self.lambda_pixel),
            ("--lambda-perceptual", self.lambda_perceptual),
            ("--lambda-align", self.lambda_align),
            ("--lambda-consistency", self.lambda_consistency),
            ("--lambda-teacher", self.lambda_teacher),
        ):
            if value < 0:
                raise ConfigError(flag, f"must be >= 0, got {value}")
        if self.perceptual_backbone not in ("vgg", "random"):
            raise ConfigError("--perceptual-backbone", "use vgg (pretrained LPIPS) or random (offline tests only)")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError("--checkpoints-total-limit", "must be at least 1")
        if self.validation_images < 0:
            raise ConfigError("--validation-images", "must be >= 0")
        if self.num_workers < 0:
            raise ConfigError("--num-workers", "must be >= 0")
        return self

    # ------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output"] = str(self.output)
        d["hq"] = [str(p) for p in self.hq]
        d["pairs"] = [str(p) for p in self.pairs] if self.pairs else None
        d["lq"] = str(self.lq) if self.lq is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["output"] = Path(d.get("output", "runs/sanasr"))
        d["hq"] = [Path(p) for p in d.get("hq") or []]
        d["pairs"] = tuple(Path(p) for p in d["pairs"]) if d.get("pairs") else None
        d["lq"] = Path(d["lq"]) if d.get("lq") else None
        return cls(**d)

    def save(self, path: Path) -> None:
        from sanasr_cli.safe_files import atomic_write

        atomic_write(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that change what is trained and differ between self and other (for resume checks)."""
        a, b = self.to_dict(), other.to_dict()
        return [
            f"{k}: {b[k]!r} (checkpoint) vs {a[k]!r} (now)"
            for k in a
            if k not in RESUMABLE_CHANGES and a[k] != b.get(k)
        ]
