"""What every accelerate-driven run shares (`train`, `distill`): the Accelerator, the process-wide state reset
for in-process reuse, the replica check before a checkpoint, and the main process's save errors made known to
every process.

One code path serves a CPU, one GPU and `accelerate launch` on several processes (DDP: each process its own
data shard; the main process alone writes checkpoints and outputs; RNG states are gathered per rank).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch


def training_mixed_precision(precision: str, cuda: bool) -> str:
    """--precision -> accelerate's mixed_precision. auto: fp16 with loss scaling on CUDA (App. B: "training is
    performed in FP16"), no mixed precision on the CPU; bf16 only when asked."""
    from sanasr_cli.training.config import ConfigError

    if precision == "auto":
        precision = "fp16" if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("--precision", "fp16 (with loss scaling) needs a CUDA GPU; use bf16 or fp32 on CPU")
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def launched_processes() -> int:
    """How many processes the launcher started (`accelerate launch`, torchrun: WORLD_SIZE), 1 without one."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def cpu_process_group(cpu: bool = False) -> bool:
    """Whether the processes run on the CPU (gloo between them): asked (`cpu`, ACCELERATE_USE_CPU=1), or several
    processes on a machine without CUDA. accelerate (1.15) forms a CPU process group only when told cpu=True;
    otherwise each process of a CPU `--multi_gpu` launch runs alone, and two trainings write one run folder."""
    asked = cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return asked or (launched_processes() > 1 and not torch.cuda.is_available())


def check_process_group(num_processes: int, launched: int | None = None) -> None:
    """Refuse a launch of several processes that did not form one process group (each would run the whole job
    alone and write the same files)."""
    launched = launched_processes() if launched is None else launched
    if launched > 1 and num_processes != launched:
        from sanasr_cli.errors import LaunchError

        raise LaunchError(
            f"launched as {launched} processes, but they formed a group of {num_processes}: each would run alone "
            "and write the same files. On a CPU: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            f"--num_processes {launched} ...; on GPUs: one process per GPU"
        )


def make_accelerator(mixed_precision: str, accumulation_steps: int = 1, cpu: bool = False):
    """The Accelerator (devices, DDP, mixed precision, gradient accumulation); `cpu` forces the CPU (gloo
    between processes, also chosen for several processes without CUDA). A launch whose processes formed no
    group is refused."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        cpu=cpu_process_group(cpu),
        # The epoch end must not force a sync: optimizer steps stay at fixed micro-step multiples (exact
        # resume).
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=accumulation_steps, sync_with_dataloader=False
        ),
    )
    check_process_group(accelerator.num_processes)
    return accelerator


def release_accelerator_state() -> None:
    """Forget this run's precision / accumulation settings so that a later run in the same Python process can
    use others (accelerate keeps them in a process-wide singleton); the process group stays.

    accelerate (1.15) has no public way to do this: `_reset_state` is private, and it is what accelerate's own
    test utilities call between runs (`test_utils.testing.AccelerateTestCase.tearDown`). `end_training` only
    destroys the process group. Kept here, in this one function, until accelerate offers a public reset."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def check_replicas_in_sync(
    module, accelerator, select: Callable[[str], bool] = lambda n: "lora_" in n, what: str = "LoRA weights"
) -> None:
    """Every process must hold the same trained weights (`select`: their names; DDP averages the gradients);
    a mismatch means the processes trained apart, and the checkpoint would record only one of them."""
    from accelerate.utils import gather_object

    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        sums = [
            float(sum(p.double().sum() + p.double().abs().sum() for n, p in module.named_parameters() if select(n)))
        ]
    found = gather_object(sums)
    if max(found) != min(found):
        from sanasr_cli.training.checkpoint import CheckpointError

        raise CheckpointError(
            f"the {accelerator.num_processes} processes hold different {what} "
            f"(checksums {found}); gradients are not being synchronised"
        )


def raise_if_any_failed(error: str | None) -> None:
    """Every process learns whether the main process's save failed (call on every process: it gathers)."""
    from accelerate.utils import gather_object

    errors = gather_object([error])
    if any(errors):
        from sanasr_cli.training.checkpoint import CheckpointError

        raise CheckpointError(next(e for e in errors if e))
