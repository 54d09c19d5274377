"""Cost of the pipeline per part: parameters, MACs, latency and peak memory, and an OSEDiff-shaped comparison.

How each number is obtained (and stated in every report):
- **MACs** = FLOPs / 2, FLOPs from `torch.utils.flop_counter.FlopCounterMode`, counted on the META device (no
  weights, no memory): on CPU tensors FlopCounterMode misses the fused scaled-dot-product-attention
  kernels and under-counts attention. Every part and both pipelines are counted the same way.
- **params**: the parameters of the modules a part runs (VAE encoder, text encoder, denoiser, VAE decoder).
- **latency_ms**: median of `repeats` timed runs after `warmup` runs, on real tensors with random (or loaded)
  weights, `torch.cuda.synchronize()` around each run on CUDA. Optional: on CPU a real-size model is too slow,
  so by default latency is measured only on CUDA or for small models; `null` means not measured.
  Paired: every pipeline measured is resident at once and each round times every part of every pipeline
  once, interleaved (A B A B ...), so slow phases of a shared machine hit all of them alike; a latency ratio
  is the median of the per-round ratios, not a ratio of medians. `end_to_end` is timed as one call and
  checked against the sum of its parts' medians: more than 25% apart is reported as a warning.
- **peak_memory_mb**: on CUDA, the weights of that pipeline's modules plus `torch.cuda.max_memory_allocated`
  above what was allocated before the call, in MiB; `null` on CPU (not measured).
- **end_to_end** = VAE encode -> denoiser -> VAE decode on one image batch. The text encoder is excluded from
  end_to_end for both pipelines and reported as its own part (its output is cached per prompt; the tagger
  is not counted either).
- **SANA-SR's text encoder** is measured as inference runs it (`PromptEncoder.run_encoder(reuse_prefix=True)`):
  per distinct prompt (`BENCH_PROMPT`, 30 words), its real tokens only after the instruction prefix, whose
  one-off cost per process is its own line (`text_encoder_prefix`); its transformer attends over the text
  positions that prompt needs (`trim_text_positions`). `--compare full-prompt` is the full-length encode
  (`SanaPipeline.encode_prompt`'s padded sequence) with all max_length text positions, on the same modules.
- `--vae-decoder lite` measures DC-AE-Lite's decoder; `--compare decoder-full` puts the full DC-AE decoder beside
  it on the same encoder, transformer and text encoder (at 512x512: 939 against 1046 GMACs, so the gain is mostly
  GPU wall time, which only a latency run shows).

The pieces: `measure` (counting and timing, shared with prune and the taggers), `peers` (the pipelines as
parts: SANA-SR, full-prompt, the OSEDiff-shaped SD-2.1 one), `bench_plot` (the --plot figure). This module
runs them and writes the report.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sanasr_cli.evaluation.peers import (
    END_TO_END_PARTS,
    PARTS,
    Pipeline,
    build_sanasr,
    osediff_pipeline,
    sana_pipeline,
    with_decoder,
)
from sanasr_cli.measure import MIB, count_macs, sync, timed, weight_bytes

SUM_OF_PARTS_TOLERANCE = 0.25  # end_to_end vs the sum of its parts' latencies: warn beyond this
AUTO_LATENCY_CPU_MAX_GMACS = 5.0  # `--latency auto` on CPU: measure only pipelines this cheap per image


# ---------------------------------------------------------------- measuring


@dataclass
class PipelineCost:
    parts: dict[str, dict] = field(default_factory=dict)  # part -> {params, macs, latency_ms, peak_memory_mb}
    end_to_end: dict = field(default_factory=dict)
    once: dict[str, dict] = field(default_factory=dict)  # once-per-process costs (the instruction prefix)
    rounds_ms: dict[str, list[float]] = field(default_factory=dict)  # part -> latency of each paired round

    def entry(self, part: str) -> dict:
        return self.end_to_end if part == "end_to_end" else self.parts[part]


def measure_macs(pipeline: Pipeline, size: int, batch: int) -> PipelineCost:
    """Params and MACs of every part and of end_to_end; `pipeline` must be built on the meta device."""
    meta = torch.device("meta")
    inputs = pipeline.make_inputs(batch, size, meta, torch.float32)
    cost = PipelineCost()
    for part in (*PARTS, "end_to_end"):
        entry = {
            "params": pipeline.params(part),
            "macs": count_macs(lambda p=part: pipeline.run[p](inputs)),
            "latency_ms": None,
            "peak_memory_mb": None,
        }
        if part == "end_to_end":
            cost.end_to_end = entry
        else:
            cost.parts[part] = entry
    for name, fn in pipeline.once.items():
        cost.once[name] = {"macs": count_macs(fn), "latency_ms": None}
    return cost


@torch.no_grad()
def measure_latency_paired(
    pipelines: dict[str, Pipeline],
    costs: dict[str, PipelineCost],
    size: int,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int = 2,
    repeats: int = 5,
    on_step: Callable[[str], None] | None = None,
) -> None:
    """Fill latency_ms / peak_memory_mb / rounds_ms of each cost with `pipelines` (all built on `device`) timed
    interleaved: each round runs every part of every pipeline once, in turn (A B A B ...)."""
    step = on_step or (lambda _msg: None)
    cuda = device.type == "cuda"
    inputs = {n: p.make_inputs(batch, size, device, dtype) for n, p in pipelines.items()}
    keys = (*PARTS, "end_to_end")
    for w in range(warmup):
        step(f"warm-up {w + 1}/{warmup} at {size}x{size} ({', '.join(pipelines)})")
        for part in keys:
            for n, p in pipelines.items():
                p.run[part](inputs[n])
    sync(device)
    extra = {n: dict.fromkeys(keys, 0) for n in pipelines}
    for n in pipelines:
        costs[n].rounds_ms = {k: [] for k in keys}
    for r in range(repeats):
        step(f"timing {size}x{size}: round {r + 1}/{repeats}, {' / '.join(pipelines)} interleaved")
        for part in keys:
            for n, p in pipelines.items():
                sync(device)
                if cuda:
                    before = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                p.run[part](inputs[n])
                sync(device)
                costs[n].rounds_ms[part].append((time.perf_counter() - start) * 1000)
                if cuda:
                    extra[n][part] = max(extra[n][part], torch.cuda.max_memory_allocated(device) - before)
    for n, p in pipelines.items():
        weights = weight_bytes(p.modules_all()) if cuda else None
        for part in keys:
            entry = costs[n].entry(part)
            entry["latency_ms"] = statistics.median(costs[n].rounds_ms[part])
            entry["peak_memory_mb"] = (weights + extra[n][part]) / MIB if cuda else None
        for name, fn in p.once.items():  # one run: it happens once per process
            step(f"timing {n}'s {name} (once)")
            costs[n].once[name]["latency_ms"] = timed(fn, device) * 1000


def paired_ratio(ours_ms: list[float], other_ms: list[float]) -> float | None:
    """Median of the per-round ratios other / ours (rounds timed interleaved)."""
    pairs = [o / s for s, o in zip(ours_ms, other_ms, strict=True) if s > 0]
    return statistics.median(pairs) if pairs else None


def sum_of_parts_warning(name: str, cost: PipelineCost) -> str | None:
    """A warning when end_to_end's latency (one call) and the sum of its parts' medians are > 25% apart."""
    e2e = cost.end_to_end.get("latency_ms")
    parts = [cost.parts[p].get("latency_ms") for p in END_TO_END_PARTS]
    if e2e is None or None in parts:
        return None
    total = sum(parts)
    if abs(e2e - total) <= SUM_OF_PARTS_TOLERANCE * max(e2e, total):
        return None
    return (
        f"{name}: end_to_end timed {e2e:.1f} ms as one call but its parts sum to {total:.1f} ms "
        f"({' + '.join(f'{x:.1f}' for x in parts)}), more than {SUM_OF_PARTS_TOLERANCE:.0%} apart: the latency "
        "numbers of this run are not consistent (a busy machine?)"
    )


def device_name(device: torch.device) -> str:
    import os
    import platform

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def ratios(ours: PipelineCost, other: PipelineCost) -> dict:
    """other / ours of end_to_end (and per part), for each quantity measured on both; latency as the median of
    the per-round ratios when both were timed in the same interleaved rounds."""

    def div(a, b):
        return None if a is None or b in (None, 0) else a / b

    keys = ("params", "macs", "latency_ms", "peak_memory_mb")
    out = {}
    for part in (*PARTS, "end_to_end"):
        out[part] = {k: div(other.entry(part)[k], ours.entry(part)[k]) for k in keys}
        if ours.rounds_ms.get(part) and other.rounds_ms.get(part):  # timed in the same rounds
            out[part]["latency_ms"] = paired_ratio(ours.rounds_ms[part], other.rounds_ms[part])
    return out


@dataclass
class BenchOptions:
    sizes: tuple[int, ...] = (512,)
    batch_size: int = 1
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    latency: str = "auto"  # auto | on | off
    warmup: int = 2
    repeats: int = 5
    compare: tuple[str, ...] = ()
    random_weights: bool = False
    base: str | None = None
    seed: int = 0
    tagger: str = "none"  # none | clip: the prompt tagger Pi, reported as its own line
    tagger_model: str | None = None  # CLIP hub id or local folder (default: the clip tagger's default)
    full_vae: bool = False  # ignore distilled students: count the teacher VAE
    vae_decoder: str | None = None  # full | lite | a folder; None: what the model records


def tagger_cost(options: BenchOptions, device: torch.device) -> dict | None:
    """Cost of the prompt tagger per image, a line of its own (it runs once per input image, on the LQ input
    resized to the tagger's resolution, so it does not grow with the output size).

    params/MACs: CLIP image tower + projection counted on the meta device (`clip_image_macs`); the vocabulary's
    text embeddings are computed once per run and not included. Latency: measured with `measure_tagger` when
    latency is on and the CLIP weights can be loaded; otherwise null with the reason.
    """
    if options.tagger == "none":
        return None
    if options.tagger != "clip":
        raise ValueError(f"bench counts the cost of the clip tagger only (got --tagger {options.tagger})")
    from transformers import CLIPConfig, CLIPModel

    from sanasr_cli.prompts.clip_tagger import clip_image_macs
    from sanasr_cli.prompts.taggers import DEFAULT_CLIP_MODEL

    source = options.tagger_model or DEFAULT_CLIP_MODEL
    if options.tagger_model and Path(options.tagger_model).is_dir():
        config = CLIPConfig.from_pretrained(options.tagger_model)
    else:
        config = CLIPConfig()  # transformers' default CLIPConfig is ViT-B/32 at 224, the default tagger model
        if source != DEFAULT_CLIP_MODEL:
            raise ValueError(f"--tagger-model {source}: give a local folder to count a CLIP other than the default")
    with torch.device("meta"):
        model = CLIPModel._from_config(config)
    vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("vision_model", "visual_proj")))
    cost = {
        "name": "clip",
        "model": source,
        "params": sum(p.numel() for p in model.parameters()),
        "image_params": vision,
        "macs": clip_image_macs(config) * options.batch_size,
        "latency_ms": None,
        "peak_memory_mb": None,
        "note": "per batch of input images at the tagger's resolution; vocabulary text embeddings excluded",
    }
    do, why = _latency_decision(options.latency, device, cost["macs"] / options.batch_size / 1e9)
    if do:
        from sanasr_cli.prompts.clip_tagger import ClipTagger
        from sanasr_cli.prompts.rule import measure_tagger

        try:
            tagger = ClipTagger(model=source, device=str(device))
            measured = measure_tagger(tagger, torch.rand(3, 64, 64), repeats=options.repeats)
            cost["latency_ms"] = measured.median_seconds * 1000 * options.batch_size
            if measured.peak_cuda_bytes is not None:
                cost["peak_memory_mb"] = measured.peak_cuda_bytes / 2**20
        except Exception as e:  # noqa: BLE001 - weights missing offline: report, do not fail the bench
            why = f"not measured: CLIP weights could not be loaded ({type(e).__name__})"
    cost["note"] += f"; latency {why}"
    return cost


def _latency_decision(mode: str, device: torch.device, gmacs_per_image: float) -> tuple[bool, str]:
    if mode == "on":
        return True, "measured (--latency on)"
    if mode == "off":
        return False, "not measured (--latency off)"
    if device.type == "cuda":
        return True, "measured on CUDA"
    if gmacs_per_image <= AUTO_LATENCY_CPU_MAX_GMACS:
        return True, f"measured on CPU (small pipeline: {gmacs_per_image:.2f} GMACs per image)"
    return False, (
        f"not measured: CPU and {gmacs_per_image:.0f} GMACs per image (too slow; run on a GPU, or pass "
        f"--latency on to force)"
    )


COMPARABLE = ("osediff", "full-prompt", "full-vae", "decoder-full")


def comparable_models() -> tuple[str, ...]:
    """Other SANA-SR models `--compare` accepts by name (presets and shipped models), beside COMPARABLE."""
    from sanasr_cli.models.presets import PRESETS, SHIPPED_MODELS, SHIPPED_STUDENTS

    return (*PRESETS, *SHIPPED_MODELS, *SHIPPED_STUDENTS)


def run_bench(spec: str, options: BenchOptions, on_step: Callable[[str], None] | None = None) -> list[dict]:
    """Measure `spec` (and each pipeline in options.compare) at every size; one JSON-ready dict per size."""
    step = on_step or (lambda _msg: None)
    device = torch.device(options.device)
    known = (*COMPARABLE, *comparable_models())
    unknown = [c for c in options.compare if c not in known]
    if unknown:
        raise ValueError(f"unknown --compare {', '.join(unknown)}; known: {', '.join(known)}")
    step("building the pipelines on the meta device")
    meta_model = build_sanasr(
        spec,
        "meta",
        random_weights=True,
        base=options.base,
        seed=options.seed,
        full_vae=options.full_vae,
        vae_decoder=options.vae_decoder,
    )
    if "decoder-full" in options.compare and meta_model.info.get("full_decoder") is None:
        raise ValueError("--compare decoder-full measures the full decoder beside another one: add --vae-decoder lite")

    def build(name: str, device, model=None) -> Pipeline:
        if name == "osediff":
            return osediff_pipeline(device, options.dtype, options.seed)
        if name == "decoder-full":
            return sana_pipeline(with_decoder(model, model.info["full_decoder"]), name=name)
        if name == "sanasr" or name in COMPARABLE:  # the measured model itself, or a variant of it
            return sana_pipeline(model, full_prompt=name == "full-prompt", full_vae=name == "full-vae")
        meta = torch.device(device).type == "meta"  # another SANA-SR model by name (e.g. the unpruned preset)
        other = build_sanasr(name, device, options.dtype, meta or options.random_weights, options.base, options.seed)
        return sana_pipeline(other, name=name)

    meta_ours = sana_pipeline(meta_model)
    meta_other = {name: build(name, "meta", meta_model) for name in options.compare}
    for size in options.sizes:
        for p in (meta_ours, *meta_other.values()):
            if size % p.size_multiple:
                raise ValueError(f"--size {size} is not a multiple of {p.size_multiple} (needed by {p.name})")
    tagger = tagger_cost(options, device)
    costs: dict[int, dict[str, PipelineCost]] = {}
    for size in options.sizes:
        step(f"counting MACs at {size}x{size}")
        costs[size] = {"sanasr": measure_macs(meta_ours, size, options.batch_size)}
        costs[size].update({n: measure_macs(p, size, options.batch_size) for n, p in meta_other.items()})
    # Latency: every pipeline measured at a size is resident and timed in the same interleaved rounds.
    names = ("sanasr", *meta_other)
    notes: dict[int, dict[str, str]] = {size: {} for size in options.sizes}
    real: dict[str, Pipeline] = {}
    real_model = None
    for size in options.sizes:
        timed = []
        for name in names:
            gmacs = costs[size][name].end_to_end["macs"] / options.batch_size / 1e9
            do, why = _latency_decision(options.latency, device, gmacs)
            notes[size][name] = why
            if do:
                timed.append(name)
        for name in timed:
            if name not in real:
                step(f"building {name} on {device} for latency")
                if name != "osediff" and real_model is None:
                    real_model = build_sanasr(
                        spec, device, options.dtype, options.random_weights, options.base, options.seed,
                        options.full_vae, options.vae_decoder,
                    )  # fmt: skip
                real[name] = build(name, device, real_model)
        if timed:
            measure_latency_paired(
                {n: real[n] for n in timed}, costs[size], size, options.batch_size, device, options.dtype,
                options.warmup, options.repeats, step,
            )  # fmt: skip
    del real, real_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reports = []
    for size in options.sizes:
        ours = costs[size]["sanasr"]
        report = _report(size, options, device, ours, notes[size]["sanasr"], meta_ours.description)
        warnings = [w for w in [sum_of_parts_warning("sanasr", ours)] if w]
        for name in meta_other:
            sub = _report(size, options, device, costs[size][name], notes[size][name], meta_other[name].description)
            sub.pop("compare")
            sub["ratios"] = ratios(ours, costs[size][name])
            report["compare"][name] = sub
            warnings += [w for w in [sum_of_parts_warning(name, costs[size][name])] if w]
        report["warnings"] = warnings
        if tagger is not None:
            report["tagger"] = tagger
        reports.append(report)
    return reports


def _report(size, options, device, cost: PipelineCost, latency_note: str, description: str) -> dict:
    return {
        "size": size,
        "batch_size": options.batch_size,
        "device": device_name(device),
        "parts": cost.parts,
        "end_to_end": cost.end_to_end,
        "once": cost.once,
        "compare": {},
        "precision": str(options.dtype).replace("torch.", ""),
        "pipeline": description,
        "notes": {
            "macs": "FLOPs/2 from torch.utils.flop_counter.FlopCounterMode on the meta device",
            "latency": latency_note
            + (
                f"; median of {options.repeats} runs after {options.warmup} warm-up runs"
                if latency_note.startswith("measured")
                else ""
            ),
            "peak_memory_mb": "the pipeline's weights + torch.cuda.max_memory_allocated above the allocation "
            "before the part, MiB"
            if device.type == "cuda"
            else "not measured on CPU",
            "ratios": "other / ours; latency: median of per-round ratios, rounds timed interleaved in one process",
            "once": "once-per-process costs (SANA-SR: the instruction prefix through the text encoder; "
            "latency: one run)",
            "end_to_end": "vae_encode + transformer + vae_decode; text encoder reported separately, tagger not counted",
        },
    }
