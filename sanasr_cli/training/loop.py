"""`train(config)`: LoRA adaptation of the LinearDiT with the SANA-SR objective (Algorithm 1), on accelerate.

The orchestrator reads as numbered stages of verb-noun helpers. One code path serves a CPU, one GPU and
`accelerate launch` on several GPUs (DDP: each process its own data shard; the main process alone writes
checkpoints, logs and validation grids). Everything random in a step comes from seeded generators whose states
are saved with each checkpoint, so a resumed run continues with exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sanasr_cli.errors import MissingWeightsError, SanaSRError
from sanasr_cli.models.lora import has_adapter
from sanasr_cli.training.config import CONFIG_FILE, ConfigError, TrainConfig
from sanasr_cli.training.distributed import (  # noqa: F401 - training_mixed_precision: part of this API
    check_replicas_in_sync,
    make_accelerator,
    raise_if_any_failed,
    release_accelerator_state,
    training_mixed_precision,
)
from sanasr_cli.training.objective import TERM_NAMES


class TrainingDiverged(SanaSRError):
    """The loss became NaN or infinite; the run stopped without stepping on it."""


@dataclass
class TrainHooks:
    """Callbacks for a front end (the CLI's progress bar); all optional, called on the main process only."""

    on_start: Callable[[int, int], None] | None = None  # (first step, max steps)
    on_step: Callable[[int, dict], None] | None = None  # (step, metrics)
    on_message: Callable[[str], None] | None = None
    on_teacher: Callable[[int, int], None] | None = None  # (done, total) while a teacher's outputs are cached


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoints: list[Path] = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)


# ================================================================ stages


def create_accelerator(config: TrainConfig):
    """Stage 1: the Accelerator (devices, DDP, mixed precision, gradient accumulation)."""
    mixed = training_mixed_precision(config.precision, torch.cuda.is_available())
    return make_accelerator(mixed, config.gradient_accumulation_steps)


def prepare_run_dir(config: TrainConfig, accelerator) -> Path | None:
    """Stage 2: check the output folder, find the checkpoint to resume from (checked against the config),
    write the resolved config. Returns the checkpoint to resume from, or None."""
    from sanasr_cli.training.checkpoint import clean_staging, read_checkpoint_config, resolve_resume

    run = Path(config.output)
    resume_from = resolve_resume(config.resume, run) if config.resume else None
    if resume_from is None and run.is_dir() and any(run.glob("checkpoint-*")) and config.resume != "auto":
        raise ConfigError(
            "--output",
            f"{run} already holds a run; continue it with --resume latest or choose another folder",
        )
    if resume_from is not None:
        try:
            saved = TrainConfig.from_dict(read_checkpoint_config(resume_from))
        except (TypeError, ValueError) as e:
            from sanasr_cli.training.checkpoint import CheckpointReadError

            raise CheckpointReadError(f"cannot resume from {resume_from}: train/train_config.json: {e}") from None
        diffs = config.differences(saved)
        if diffs:
            raise ConfigError(
                "--resume", f"{resume_from} was trained with another configuration: " + "; ".join(diffs[:4])
            )
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        clean_staging(run)
        config.save(run / CONFIG_FILE)
    accelerator.wait_for_everyone()
    return resume_from


def remove_unstarted_run(run: Path) -> None:
    """Undo stage 2 of a run that failed before its first step: the config it wrote, then the folder when
    nothing else is in it (never anything sanasr did not write)."""
    (run / CONFIG_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run.rmdir()  # only when empty


def load_model_with_lora(config: TrainConfig, accelerator):
    """Stage 3: the base model (frozen) with a fresh LoRA adapter in float32; the prompt rule of the run."""
    from sanasr_cli.models.lora import DEFAULT_LORA_TARGETS, FFN_LORA_TARGETS, add_lora, lora_config
    from sanasr_cli.models.sanasr import load_model

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    rule, fixed = run_prompt(config)
    # the paper's objective is defined on the teacher DC-AE: distilled students (encoder/, decoder/) are not used;
    # a fixed prompt is encoded first by the text encoder alone, freed before the rest is built (fp32 fits 16 GB)
    model = load_model(
        config.model,
        device=accelerator.device,
        dtype=weight_dtype,
        base=config.base,
        seed=config.seed,
        full_vae=True,
        prompts=[fixed] if fixed is not None else None,
        reuse_prefix=(False,),  # training's layout (`PromptEncoder.encode`)
        prompt_rule=rule,
    )
    if model.description.adapter or has_adapter(model.transformer):
        raise ConfigError(
            "--model",
            "the model already carries a LoRA adapter; merge it first (sanasr merge-lora) or train from the base",
        )
    if config.crop % model.codec.factor:
        raise ConfigError("--crop", f"must be a multiple of the VAE factor {model.codec.factor}, got {config.crop}")
    targets = DEFAULT_LORA_TARGETS + (FFN_LORA_TARGETS if config.lora_targets == "attn+ffn" else ())
    add_lora(model.transformer, lora_config(config.lora_rank, config.lora_alpha, config.lora_dropout, targets))
    for name, p in model.transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # trainable weights in float32 under any mixed precision
            p.requires_grad_(True)
    model.transformer.train()
    if config.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    if config.offload_text_encoder:
        model.prompts.to("cpu")  # prompts are few and cached: encode them on the CPU (built there when needed)
    return model  # its description's (and encoder's) prompt rule is the run's (`prompt_rule` above)


def run_prompt(config: TrainConfig):
    """(the run's prompt rule or None for the model's, its fixed prompt or None): a rule whose tagger reads no image
    gives every image the same prompt, known before the model is loaded."""
    from sanasr_cli.models.sanasr import resolve_model
    from sanasr_cli.prompts.rule import PromptRule, fixed_prompt

    rule = PromptRule.from_dict(config.prompt_rule) if config.prompt_rule is not None else None
    fixed = fixed_prompt(rule or resolve_model(config.model, base=config.base, seed=config.seed)[0].prompt)
    return rule, fixed


def build_objective(config: TrainConfig, model, device):
    """Stage 4: Eq. 8 as one module (loss weights, prompt protocol, LPIPS)."""
    from sanasr_cli.training.losses import LossWeights, PerceptualLoss, PromptProtocol
    from sanasr_cli.training.objective import TrainingObjective

    protocol = PromptProtocol.named(config.protocol)
    if config.tau_g is not None:  # an explicit generation timestep (Fig. 4c's ablation) overrides the protocol's
        protocol.tau_g = float(config.tau_g)
    model.restorer.tau_g = protocol.tau_g  # the model being trained restores at the protocol's tau_g
    weights = LossWeights(
        config.lambda_pixel,
        config.lambda_perceptual,
        config.lambda_align,
        config.lambda_consistency,
        # with LQ images alone (--lq) the teacher's output is the HQ of every term: no second copy of it
        teacher=config.lambda_teacher if (config.teacher is not None and config.pairs is not None) else 0.0,
    )
    perceptual = None
    if weights.perceptual:
        try:
            perceptual = PerceptualLoss(random_backbone=config.perceptual_backbone == "random").to(device)
        except RuntimeError as e:
            import torch.hub

            raise MissingWeightsError(
                "LPIPS VGG16 (torchvision vgg16-397923af.pth)",
                f"{torch.hub.get_dir()}/checkpoints",
                "Download it once with network access (torchvision vgg16(weights='DEFAULT')), or copy "
                "the file there; set --lambda-perceptual 0 to train without LPIPS",
                str(e).split("Cause: ")[-1],
            ) from None
    return TrainingObjective(model.restorer, model.codec, weights, protocol, perceptual)


def create_optimizer(config: TrainConfig, objective):
    """Stage 5: AdamW over the LoRA weights only, constant LR after an optional linear warm-up."""
    params = [p for n, p in objective.named_parameters() if p.requires_grad]
    if not params or not all("lora_" in n for n, p in objective.named_parameters() if p.requires_grad):
        raise RuntimeError("only LoRA weights may train")
    optimizer = torch.optim.AdamW(
        params,
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    warmup = config.lr_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    return optimizer, scheduler


def create_ema(config: TrainConfig, transformer):
    from sanasr_cli.training.ema import LoraEMA

    if config.ema_decay <= 0:
        return None
    named = [(n, p) for n, p in transformer.named_parameters() if "lora_" in n]
    return LoraEMA(named, config.ema_decay)


def make_generators(config: TrainConfig, accelerator) -> dict[str, torch.Generator]:
    """Per-process generators: 'noise' (t and eps of Eq. 16-17, on the accelerator's device) and 'degrade'
    (the synthetic LQ). The degrader's scalar draws stay on the CPU (no device sync per draw); it seeds its
    own device generators for the noise tensors from them."""
    rank = accelerator.process_index
    gens = {}
    for k, (name, device) in enumerate((("noise", accelerator.device), ("degrade", torch.device("cpu")))):
        g = torch.Generator(device=device)
        g.manual_seed(config.seed * 1000 + 17 * rank + k + 1)
        gens[name] = g
    return gens


def restore_training_state(ckpt: Path, model, ema, optimizer, scheduler, accelerator, generators) -> dict:
    """Stage 7 (resume): weights, optimizer, scheduler, scaler, RNG states, step and data position."""
    from sanasr_cli.training.checkpoint import CheckpointReadError, first_line, load_checkpoint, restore_rng

    state = load_checkpoint(ckpt, model.transformer, ema, optimizer, accelerator.process_index)
    part = "train/state.json"
    try:
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        part = "train/rng.safetensors"
        restore_rng(state["rng"], generators)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:
        # a field of the right type with contents these objects cannot take (wrong sizes, missing keys)
        raise CheckpointReadError(
            f"cannot resume from {ckpt}: {part} is damaged or not of this run ({first_line(e)})"
        ) from None
    if state.get("num_processes") != accelerator.num_processes:
        _message(
            accelerator,
            None,
            f"note: {ckpt} was written by {state.get('num_processes')} processes, this run "
            f"has {accelerator.num_processes}: data order differs from an uninterrupted run",
        )
    return state


def encode_prompts(model, rule, tagger, source: str, lq, hq, files: list, device) -> tuple:
    """Prompts by the run's rule (Eq. 12) from the image the protocol tags (`source`: "hq" the HQ crop, "lq"
    the LQ crop; see `training.data.batch_prompts`); the PromptEncoder encodes each distinct prompt once."""
    from sanasr_cli.training.data import batch_prompts

    prompts = batch_prompts(rule, tagger, source, lq, hq, files)
    embeds, mask = model.prompts.encode(prompts)
    return embeds.to(device), mask.to(device)


def run_training_step(
    objective, batch, embeds, mask, optimizer, scheduler, accelerator, config, generators, params
) -> tuple[dict, bool]:
    """One micro-batch of Algorithm 1 (lines 3-9): forward, backward and, at accumulation boundaries, clip and
    step. Returns (terms averaged over processes, whether an optimizer step happened)."""
    lq_up, hq, *rest = batch  # (lq_up, hq) or (lq_up, hq, teacher output)
    teacher = rest[0] if rest else None
    with accelerator.accumulate(objective):
        out = objective(lq_up, hq, embeds, mask, generators["noise"], teacher)
        accelerator.backward(out["loss"])
        grad_norm = None
        stepped = accelerator.sync_gradients
        terms = torch.stack([out[k].detach().float() for k in TERM_NAMES] + [out["t"].float()])
        terms = accelerator.reduce(terms, reduction="mean")
        finite = bool(torch.isfinite(terms).all())
        if stepped and finite:
            if config.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    metrics = {k: float(v) for k, v in zip(TERM_NAMES + ("t",), terms.tolist(), strict=False)}
    if grad_norm is not None:
        metrics["grad_norm"] = float(grad_norm)
    return metrics, stepped


def _message(accelerator, hooks: TrainHooks | None, text: str) -> None:
    if accelerator.is_main_process:
        if hooks and hooks.on_message:
            hooks.on_message(text)


def save_training_checkpoint(
    run_dir,
    step,
    model,
    ema,
    optimizer,
    scheduler,
    accelerator,
    generators,
    stream,
    config: TrainConfig,
    teacher: dict | None = None,
) -> Path | None:
    """Every process contributes its RNG state; the main process writes the folder, then prunes old ones."""
    from accelerate.utils import gather_object

    from sanasr_cli.training.checkpoint import capture_rng, prune_checkpoints, save_checkpoint

    check_replicas_in_sync(model.transformer, accelerator)
    rng = gather_object([capture_rng(generators)])
    path = None
    error = None
    if accelerator.is_main_process:
        state = {
            "step": step,
            "epoch": stream.epoch,
            "batch_in_epoch": stream.batch_index,
            "num_processes": accelerator.num_processes,
            "scheduler": scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        }
        desc = copy.deepcopy(model.description)
        desc.lora = {
            "rank": config.lora_rank,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "targets": config.lora_targets,
            "ema": config.ema_decay if ema is not None else None,
            "merged": False,
        }
        desc.history = list(desc.history) + [
            {
                "command": "train",
                "step": step,
                "protocol": config.protocol,
                "lr": config.lr,
                "batch_size": config.batch_size,
                "num_processes": accelerator.num_processes,
                **({"teacher": _teacher_record(teacher, config)} if teacher else {}),
            }
        ]
        try:
            path = save_checkpoint(run_dir, step, model, ema, optimizer, state, rng, config.to_dict(), desc)
            prune_checkpoints(run_dir, config.checkpoints_total_limit)
        except SanaSRError as e:
            error = str(e)
    raise_if_any_failed(error)  # every process learns whether the save failed
    return path


def _teacher_record(teacher: dict, config: TrainConfig) -> dict:
    """What a trained model's history keeps of its teacher: which weights, from where, with what weight."""
    keep = ("peer", "architecture", "identity", "source", "parameters")
    return {**{k: teacher[k] for k in keep if k in teacher}, "lambda": config.lambda_teacher,
            "role": "target beside HQ" if config.pairs is not None else "the only target"}  # fmt: skip


# ================================================================ the orchestrator


def train(config: TrainConfig, hooks: TrainHooks | None = None) -> TrainResult:
    """Run (or resume) a training run; returns where it ended. Raises ConfigError, CheckpointError,
    TrainingDiverged, DataError or MissingWeightsError with a message for the user."""
    from accelerate.utils import set_seed

    from sanasr_cli.prompts.rule import tagger_from_rule
    from sanasr_cli.training.data import build_training_data, make_validation_batch, next_training_batch
    from sanasr_cli.training.runlog import RunLogger
    from sanasr_cli.training.validation import save_validation_grid

    config.validate()
    hooks = hooks or TrainHooks()
    # 1. devices, processes, precision
    accelerator = create_accelerator(config)
    set_seed(config.seed)  # the same on every process: identical LoRA init (DDP also broadcasts it)
    # 2. run folder and resume point
    run_dir = Path(config.output)
    new_run_dir = not (run_dir.exists() or run_dir.is_symlink())
    resume_from = prepare_run_dir(config, accelerator)
    try:
        # 3. model with a fresh adapter, 4. objective
        model = load_model_with_lora(config, accelerator)
        rule = model.description.prompt
        tagger = tagger_from_rule(rule, device=accelerator.device, cache_dir=config.tag_cache)
        objective = build_objective(config, model, accelerator.device)
        # 5. optimisation
        optimizer, scheduler = create_optimizer(config, objective)
        ema = create_ema(config, model.transformer)
        # 6. data (each process its own shard)
        data = build_training_data(config, accelerator, on_teacher=hooks.on_teacher)
    except Exception:
        if new_run_dir and accelerator.is_main_process:
            remove_unstarted_run(run_dir)  # an empty or all-broken --hq, a bad model: no RUN/ left behind
        raise
    summary = getattr(data.dataset, "summary", None)
    _message(
        accelerator,
        hooks,
        f"data: {summary if summary is not None else len(data.dataset)}; "
        f"{data.stream.sampler.batches_per_epoch} batches of {config.batch_size} per "
        f"process and epoch, {accelerator.num_processes} process(es)",
    )
    validation = make_validation_batch(data, config, accelerator.device) if accelerator.is_main_process else None
    objective, optimizer = accelerator.prepare(objective, optimizer)
    params = [p for p in objective.parameters() if p.requires_grad]
    generators = make_generators(config, accelerator)
    # 7. resume
    step = 0
    if resume_from is not None:
        state = restore_training_state(resume_from, model, ema, optimizer, scheduler, accelerator, generators)
        step = int(state["step"])
        data.stream.seek(int(state["epoch"]), int(state["batch_in_epoch"]))
        _message(accelerator, hooks, f"resumed from {resume_from} at step {step}")
    accelerator.step = step * config.gradient_accumulation_steps
    logger = RunLogger(run_dir, accelerator.is_main_process, resume_step=step if resume_from else None)
    result = TrainResult(run_dir=run_dir, step=step)
    if accelerator.is_main_process and hooks.on_start:
        hooks.on_start(step, config.max_steps)
    # 8. the loop: Algorithm 1
    try:
        window: list[dict] = []
        t0 = time.perf_counter()
        while step < config.max_steps:
            lq, lq_up, hq, files, teacher = next_training_batch(data, generators["degrade"], accelerator.device)
            embeds, mask = encode_prompts(model, rule, tagger, config.protocol, lq, hq, files, accelerator.device)
            metrics, stepped = run_training_step(
                objective,
                (lq_up, hq, teacher),
                embeds,
                mask,
                optimizer,
                scheduler,
                accelerator,
                config,
                generators,
                params,
            )
            if not math.isfinite(metrics["loss"]):
                last = result.checkpoints[-1] if result.checkpoints else resume_from
                where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
                raise TrainingDiverged(
                    f"loss became {metrics['loss']} at step {step + 1} (terms: "
                    + ", ".join(f"{k}={metrics[k]:.4g}" for k in TERM_NAMES[1:])
                    + f"); stopped without applying it; {where}. Try a lower --lr."
                )
            window.append(metrics)
            if not stepped:
                continue
            step += 1
            if ema is not None:
                ema.update()
            record = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
            window = []
            now = time.perf_counter()
            record.update(step=step, lr=scheduler.get_last_lr()[0], epoch=data.stream.epoch, step_time_s=now - t0)
            t0 = now
            result.last_metrics = record
            if accelerator.is_main_process:
                if step % config.log_every == 0 or step == config.max_steps:
                    logger.log(record)
                if hooks.on_step:
                    hooks.on_step(step, record)
            if validation is not None and step % config.validate_every == 0:
                with accelerator.autocast():
                    grid = save_validation_grid(model, rule, tagger, validation, run_dir, step, source=config.protocol)
                logger.image("validation", grid, step)
            if step % config.save_every == 0 or step == config.max_steps:
                path = save_training_checkpoint(
                    run_dir,
                    step,
                    model,
                    ema,
                    optimizer,
                    scheduler,
                    accelerator,
                    generators,
                    data.stream,
                    config,
                    data.teacher,
                )
                if path is not None:
                    result.checkpoints.append(path)
                    _message(accelerator, hooks, f"saved {path}")
        result.step = step
    finally:
        logger.close()
        accelerator.wait_for_everyone()
        accelerator.end_training()
        release_accelerator_state()
    return result
