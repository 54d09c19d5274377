"""`sanasr train --hq DIR -o RUN`: LoRA adaptation of the LinearDiT with the SANA-SR objective (Eq. 4-8)."""

from __future__ import annotations

from pathlib import Path

import typer

from sanasr_cli.cli.common import EXIT_FAILED, EXIT_USAGE, console, fail, quiet_libraries
from sanasr_cli.cli.prompt_options import TAG_CACHE, TAG_VOCAB, TAGGER, TAGGER_MODEL, TAGGER_WEIGHTS, TEMPLATE

_DATA = "Data"
_RUN = "Run"
_OPT = "Optimisation"
_LORA = "LoRA"
_LOSS = "Objective"


def train(
    model: str = typer.Option(
        "sana-600m-512",
        "--model",
        "-m",
        rich_help_panel=_DATA,
        help="Base to adapt: a preset (sana-600m-512, tiny) or a model directory without an "
        "adapter (e.g. a pruned model).",
    ),
    base: str = typer.Option(
        None,
        "--base",
        rich_help_panel=_DATA,
        help="Hub id or local folder of the pretrained SANA base (default: $SANASR_BASE or the hub).",
    ),
    hq: list[Path] = typer.Option(
        None,
        "--hq",
        rich_help_panel=_DATA,
        help="Folder of HQ images; LQ inputs are synthesised on the fly with the "
        "Real-ESRGAN degradation. Repeatable.",
    ),
    pairs: tuple[Path, Path] = typer.Option(
        None,
        "--pairs",
        rich_help_panel=_DATA,
        help="LQ_DIR HQ_DIR: fixed pairs (same stems, LQ at 1/4 size) instead of --hq.",
    ),
    crop: int = typer.Option(512, "--crop", rich_help_panel=_DATA, help="HQ crop size (LQ crop = crop / 4)."),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        rich_help_panel=_RUN,
        help="Run folder: config, checkpoint-<step>/ folders, log.jsonl, tensorboard/, validation/.",
    ),
    max_steps: int = typer.Option(
        100_000, "--max-steps", rich_help_panel=_RUN, help="Optimizer steps in all."
    ),
    save_every: int = typer.Option(
        1000,
        "--save-every",
        rich_help_panel=_RUN,
        help="Write RUN/checkpoint-<step> every N steps (and at the end).",
    ),
    checkpoints_total_limit: int = typer.Option(
        None, "--checkpoints-total-limit", rich_help_panel=_RUN, help="Keep only the newest N checkpoints."
    ),
    validate_every: int = typer.Option(
        1000,
        "--validate-every",
        rich_help_panel=_RUN,
        help="Write a validation grid (LQ | SR | HQ) every N steps.",
    ),
    validation_images: int = typer.Option(
        4, "--validation-images", rich_help_panel=_RUN, help="Rows of the validation grid (0: none)."
    ),
    log_every: int = typer.Option(
        10, "--log-every", rich_help_panel=_RUN, help="Append to log.jsonl and TensorBoard every N steps."
    ),
    resume: str = typer.Option(
        None,
        "--resume",
        rich_help_panel=_RUN,
        help="latest (newest checkpoint of --output), auto (latest if any, else start), "
        "or a checkpoint folder.",
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        rich_help_panel=_RUN,
        help="Seed of data order, crops, degradations, noise (and of the tiny preset).",
    ),
    num_workers: int = typer.Option(2, "--num-workers", rich_help_panel=_RUN, help="Data-loading processes."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", rich_help_panel=_OPT, help="Images per process."),
    gradient_accumulation_steps: int = typer.Option(
        1, "--gradient-accumulation-steps", rich_help_panel=_OPT, help="Micro-batches per optimizer step."
    ),
    lr: float = typer.Option(5e-5, "--lr", rich_help_panel=_OPT, help="AdamW learning rate."),
    lr_warmup_steps: int = typer.Option(0, "--lr-warmup-steps", rich_help_panel=_OPT, help="Linear warm-up."),
    weight_decay: float = typer.Option(1e-2, "--weight-decay", rich_help_panel=_OPT),
    max_grad_norm: float = typer.Option(
        1.0, "--max-grad-norm", rich_help_panel=_OPT, help="Gradient clipping (0: off)."
    ),
    ema_decay: float = typer.Option(
        0.999,
        "--ema-decay",
        rich_help_panel=_OPT,
        help="EMA of the LoRA weights (0: off), saved as adapter_ema/ in each checkpoint.",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        rich_help_panel=_OPT,
        help="auto (fp16 with loss scaling on CUDA, as App. B trains; fp32 on CPU), fp32, bf16, fp16 "
        "(loss scaling, CUDA only).",
    ),
    gradient_checkpointing: bool = typer.Option(
        False,
        "--gradient-checkpointing",
        rich_help_panel=_OPT,
        help="Recompute transformer activations in backward (less memory).",
    ),
    lora_rank: int = typer.Option(64, "--lora-rank", rich_help_panel=_LORA),
    lora_alpha: float = typer.Option(64.0, "--lora-alpha", rich_help_panel=_LORA),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout", rich_help_panel=_LORA),
    lora_targets: str = typer.Option(
        "attn",
        "--lora-targets",
        rich_help_panel=_LORA,
        help="attn (to_q, to_k, to_v, to_out.0 of self- and cross-attention) or "
        "attn+ffn (also the FFN convs).",
    ),
    protocol: str = typer.Option(
        "hq",
        "--protocol",
        rich_help_panel=_LOSS,
        help="hq (the paper's default): prompts tagged from the HQ crop, tau_g 900, alignment t in "
        "[70, 650]; lq: prompts from the LQ crop, 999, [20, 980]. Validation grids tag as training does; "
        "upscale and eval always tag the LQ input.",
    ),
    tau_g: float = typer.Option(
        None,
        "--tau-g",
        rich_help_panel=_LOSS,
        help="Generation timestep tau_g of Eq. 4, for training and the saved model's inference (default: the "
        "protocol's, 900 for hq, 999 for lq; Fig. 4c ablates it).",
    ),
    lambda_pixel: float = typer.Option(1.0, "--lambda-pixel", rich_help_panel=_LOSS, help="lambda_2 (MSE)."),
    lambda_perceptual: float = typer.Option(
        2.0, "--lambda-perceptual", rich_help_panel=_LOSS, help="lambda_p (LPIPS VGG)."
    ),
    lambda_align: float = typer.Option(
        1.0,
        "--lambda-align",
        rich_help_panel=_LOSS,
        help="lambda_a (channel-wise Gaussian KL of prior responses).",
    ),
    lambda_consistency: float = typer.Option(
        1.0, "--lambda-consistency", rich_help_panel=_LOSS, help="lambda_c (adapter consistency)."
    ),
    perceptual_backbone: str = typer.Option(
        "vgg",
        "--perceptual-backbone",
        rich_help_panel=_LOSS,
        help="vgg (pretrained, needs torchvision's VGG16 weights) or random "
        "(offline tests only: not a perceptual loss).",
    ),
    tagger: str = TAGGER,
    tagger_weights: Path = TAGGER_WEIGHTS,
    tagger_model: str = TAGGER_MODEL,
    tag_vocab: Path = TAG_VOCAB,
    template: str = TEMPLATE,
    tag_cache: str = TAG_CACHE,
    no_chi: bool = typer.Option(
        False,
        "--no-chi",
        rich_help_panel="Prompt",
        help="Encode prompts without SANA's complex human instruction (recorded in the model's prompt rule). "
        "Default: prompts are encoded exactly as SanaPipeline.encode_prompt does, as SANA was trained.",
    ),
    offload_text_encoder: bool = typer.Option(
        False,
        "--offload-text-encoder",
        rich_help_panel="Prompt",
        help="Keep the text encoder on the CPU (prompts are cached).",
    ),
):
    """Adapt the LinearDiT with LoRA on HQ images (or LQ/HQ pairs) using the paper's objective.

    Every --save-every steps RUN/checkpoint-<step>/ is written: a model directory (sanasr.json + adapter/)
    that `sanasr upscale --model` loads directly, plus train/ with what --resume needs to continue exactly.
    For several GPUs: `accelerate launch --multi_gpu --num_processes N -m sanasr_cli train ...` (same flags).
    Exit code: 0 done, 1 training failed (NaN loss, disk full, missing weights), 2 bad options or a --resume
    checkpoint whose files are damaged, truncated or altered (the message names the file).
    """
    from sanasr_cli.cli.prompt_options import asked_prompt_rule
    from sanasr_cli.errors import MissingWeightsError, ModelDirError, SanaSRError
    from sanasr_cli.models.sanasr import resolve_model
    from sanasr_cli.training.checkpoint import CheckpointError, CheckpointReadError
    from sanasr_cli.training.config import ConfigError, TrainConfig
    from sanasr_cli.training.loop import TrainingDiverged
    from sanasr_cli.training.loop import train as run_training

    try:
        model_rule = resolve_model(model, base=base)[0].prompt
    except ModelDirError as e:
        raise fail(str(e), EXIT_USAGE) from None
    # the run's rule becomes the trained model's rule: a change from the base's is no mismatch to warn about
    rule = asked_prompt_rule(
        model_rule, tagger, tagger_weights, tagger_model, tag_vocab, template, warn=False
    )
    if no_chi:
        rule.complex_human_instruction = False
    config = TrainConfig(
        model=model,
        base=base,
        output=output,
        hq=[p.resolve() for p in hq or []],
        pairs=tuple(p.resolve() for p in pairs) if pairs and pairs[0] is not None else None,
        crop=crop,
        max_steps=max_steps,
        save_every=save_every,
        validate_every=validate_every,
        validation_images=validation_images,
        log_every=log_every,
        checkpoints_total_limit=checkpoints_total_limit,
        resume=resume,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        lr=lr,
        lr_warmup_steps=lr_warmup_steps,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        ema_decay=ema_decay,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=lora_targets,
        protocol=protocol,
        tau_g=tau_g,
        lambda_pixel=lambda_pixel,
        lambda_perceptual=lambda_perceptual,
        lambda_align=lambda_align,
        lambda_consistency=lambda_consistency,
        perceptual_backbone=perceptual_backbone,
        prompt_rule=rule.to_dict(),
        tag_cache=tag_cache,
        offload_text_encoder=offload_text_encoder,
        seed=seed,
        num_workers=num_workers,
    )
    try:
        config.validate()
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    quiet_libraries()
    progress = _TrainProgress()
    try:
        with progress:
            result = run_training(config, progress.hooks())
    except (ConfigError, ModelDirError, CheckpointReadError) as e:
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

    def hooks(self):
        from sanasr_cli.training.loop import TrainHooks

        return TrainHooks(on_start=self._start, on_step=self._step, on_message=self._message)

    def _start(self, first: int, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.is_main = True
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=total, completed=first)

    def _step(self, step: int, metrics: dict) -> None:
        rate = 1.0 / metrics["step_time_s"] if metrics.get("step_time_s") else 0.0
        self._progress.update(
            self._task, completed=step, description=f"loss {metrics['loss']:.4f}  {rate:.2f} it/s"
        )

    def _message(self, text: str) -> None:
        self.is_main = True
        (self._progress.console if self._progress else console).print(text, highlight=False, soft_wrap=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("train")(one_line_errors(train))
