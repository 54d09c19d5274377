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

OSEDiff-shaped pipeline: diffusers `AutoencoderKL` (SD VAE) + `UNet2DConditionModel` with the SD-2.1 configs
below, the SD-2.1 text encoder (OpenCLIP ViT-H text tower as `CLIPTextModel`, 77 tokens), one UNet step at
t = 999; random weights (the cost does not depend on them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

PARTS = ("vae_encode", "text_encoder", "transformer", "vae_decode")
# 30 words: 22 of content tags, 8 of App. B's quality template (the prompt rule's default), like a tagged image
BENCH_PROMPT = (
    "red flower, green leaf, wooden table, white cup, old book, glass window, blue sky, "
    "stone wall, small dog, yellow lamp, tall tree, clean, extremely detailed, best quality, sharp, "
    "high-resolution"
)
SUM_OF_PARTS_TOLERANCE = 0.25  # end_to_end vs the sum of its parts' latencies: warn beyond this
END_TO_END_PARTS = ("vae_encode", "transformer", "vae_decode")
AUTO_LATENCY_CPU_MAX_GMACS = 5.0  # `--latency auto` on CPU: measure only pipelines this cheap per image
MIB = 2**20

# SD-2.1 (stabilityai/stable-diffusion-2-1-base) configs, as in its unet/ and vae/ config.json.
SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=True,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)
SD21_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)


# ---------------------------------------------------------------- pipelines as parts


@dataclass
class Pipeline:
    """Built modules of one pipeline, with one callable per part; inputs are made for a (batch, size)."""

    name: str
    modules: dict[str, list[torch.nn.Module]]  # part -> modules whose parameters the part uses
    make_inputs: Callable[[int, int, torch.device, torch.dtype], dict]
    run: dict[str, Callable[[dict], object]]  # part -> fn(inputs); plus "end_to_end"
    size_multiple: int
    description: str
    once: dict[str, Callable[[], object]] = field(default_factory=dict)  # once-per-process costs, counted apart

    def modules_all(self) -> list[torch.nn.Module]:
        return [m for ms in self.modules.values() for m in ms]

    def params(self, part: str) -> int:
        parts = END_TO_END_PARTS if part == "end_to_end" else (part,)
        return sum(p.numel() for q in parts for m in self.modules[q] for p in m.parameters())


def sana_pipeline(model, full_prompt: bool = False, full_vae: bool = False, name: str | None = None) -> Pipeline:
    """Parts of a SanaSR (see sanasr_cli.models.sanasr.SanaSR.restore, which end_to_end follows).

    Distilled students (models/students.py) replace the VAE parts: the student encoder reads the LQ image
    (size / 4), the light decoder decodes. full_vae: the teacher VAE instead (`--compare full-vae`).

    As inference runs it: the instruction prefix's KV cache reused, the prompt's own tokens through the text
    encoder, the transformer given the text positions the prompt needs. full_prompt: the padded full-length
    encode (`SanaPipeline.encode_prompt`) and all max_length text positions (`--compare full-prompt`).
    """
    from sanasr_cli.models.text_encoder import trim_text_positions

    codec, prompts, restorer = model.codec, model.prompts, model.restorer
    if full_vae:
        codec = codec.without_students()
    f, c = codec.factor, codec.latent_channels
    reuse = not full_prompt

    def make_inputs(batch, size, device, dtype):
        tok = prompts.tokenize([BENCH_PROMPT] * batch)
        mask = tok["mask"][:, prompts.select_index]  # laid out as the embeddings are
        if reuse:
            prompts.prefix_state()  # once per process: not part of the per-prompt cost (see `once`)
            _, mask = trim_text_positions(mask, mask)  # on the CPU: meta tensors have no values to trim by
        caption = prompts.text_encoder.config.hidden_size
        latent = -(-size // f)
        return {
            "image": torch.rand(batch, 3, size, size, device=device)
            if device.type != "meta"
            else torch.empty(batch, 3, size, size, device=device),
            "prompts": [BENCH_PROMPT] * batch,
            "mask": mask.to(device),
            "embeds": torch.zeros(batch, mask.shape[1], caption, device=device, dtype=dtype),
            "latents": torch.zeros(batch, c, latent, latent, device=device, dtype=dtype),
            "lq": torch.rand(batch, 3, size // 4, size // 4, device=device)
            if device.type != "meta"
            else torch.empty(batch, 3, size // 4, size // 4, device=device),
        }

    def encode(i):
        if codec.encodes_lq:  # the student reads the LQ image at its own resolution
            return codec.encode_lq(codec.pad_lq(i["lq"]))
        return codec.encode_padded(i["image"])

    def end_to_end(i):
        h, w = i["image"].shape[-2:]
        return codec.crop(codec.decode(restorer(encode(i), i["embeds"], i["mask"])), h, w)

    prefix = f"instruction prefix reused, {len(prompts.prefix_ids)} tokens once per process" if (
        reuse and prompts.complex_human_instruction
    ) else "full-length padded encode"
    students = [
        what
        for what, m in (("student encoder (reads the LQ)", codec.lq_encoder), ("light decoder", codec.light_decoder))
        if m is not None
    ]
    return Pipeline(
        name=name or ("full-prompt" if full_prompt else "full-vae" if full_vae else "sanasr"),
        modules={
            "vae_encode": [codec.lq_encoder or codec.vae.encoder],
            "text_encoder": [prompts.text_encoder],
            "transformer": [restorer.transformer],
            "vae_decode": [codec.light_decoder or codec.vae.decoder],
        },
        make_inputs=make_inputs,
        run={
            "vae_encode": encode,
            "text_encoder": lambda i: prompts.run_encoder(i["prompts"], reuse_prefix=reuse),
            "transformer": lambda i: restorer(i["latents"], i["embeds"], i["mask"]),
            "vae_decode": lambda i: codec.decode(i["latents"]),
            "end_to_end": end_to_end,
        },
        size_multiple=f,
        description=f"SANA-SR ({model.description.base_preset}"
        f"{', distilled ' + ' and '.join(students) if students else ''}): DC-AE encode, LinearDiT one step (Eq. 4), "
        f"DC-AE decode; text encoder separate, per distinct prompt of 30 words ({prefix}; the transformer "
        f"attends over {'the text positions the prompt needs' if reuse else f'all {prompts.max_length}'})",
        once={"text_encoder_prefix": lambda: prompts.prefix_state(refresh=True)} if reuse else {},
    )


def osediff_pipeline(
    device: torch.device | str = "meta", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Pipeline:
    """An SD-2.1-shaped one-step pipeline (OSEDiff's structure), random weights, on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
    for m in (unet, vae, text):
        m.to(dtype=dtype).eval().requires_grad_(False)
    sf = SD_VAE["scaling_factor"]

    def make_inputs(batch, size, device, dtype):
        real = device.type != "meta"
        return {
            "image": torch.rand(batch, 3, size, size, device=device)
            if real
            else torch.empty(batch, 3, size, size, device=device),
            "input_ids": torch.zeros(batch, 77, dtype=torch.long, device=device),
            "embeds": torch.zeros(batch, 77, SD21_TEXT["hidden_size"], device=device, dtype=dtype),
            "latents": torch.zeros(batch, 4, size // 8, size // 8, device=device, dtype=dtype),
        }

    def encode(x):
        return vae.encode((x * 2 - 1).to(dtype)).latent_dist.mode() * sf

    def denoise(z, embeds):
        t = torch.full((z.shape[0],), 999, device=z.device, dtype=torch.long)
        return (
            z - unet(z, t, encoder_hidden_states=embeds).sample
        )  # one step; the update itself is negligible

    def decode(z):
        return ((vae.decode(z / sf).sample.float() + 1) / 2).clamp(0, 1)

    return Pipeline(
        name="osediff",
        modules={
            "vae_encode": [vae.encoder, vae.quant_conv],
            "text_encoder": [text],
            "transformer": [unet],
            "vae_decode": [vae.post_quant_conv, vae.decoder],
        },
        make_inputs=make_inputs,
        run={
            "vae_encode": lambda i: encode(i["image"]),
            "text_encoder": lambda i: text(input_ids=i["input_ids"]),
            "transformer": lambda i: denoise(i["latents"], i["embeds"]),
            "vae_decode": lambda i: decode(i["latents"]),
            "end_to_end": lambda i: decode(denoise(encode(i["image"]), i["embeds"])),
        },
        size_multiple=64,
        description="OSEDiff-shaped: SD VAE encode, SD-2.1 UNet one step (t=999, its 'transformer' part), "
        "SD VAE decode; SD-2.1 text encoder separate (77 tokens); random weights",
    )


# ---------------------------------------------------------------- building SANA-SR for bench


def build_sanasr(
    spec: str,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
    base: str | None = None,
    seed: int = 0,
    full_vae: bool = False,
):
    """A SanaSR for measuring. On the meta device, or with random weights, the modules are built directly on
    `device` with the same builders `load_model` uses (no CPU detour for a real-size model, no download); the
    transformer follows the model directory (its own config when it has one, e.g. pruned; its LoRA adapter
    unmerged). Otherwise `load_model` loads the real weights.
    """
    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.models.sanasr import (
        assemble_model,
        build_random_text,
        build_random_transformer,
        build_random_vae,
        build_students,
        load_model,
        resolve_model,
    )

    device = torch.device(device)
    description, folder = resolve_model(spec, base=base, random_weights=random_weights, seed=seed)
    if device.type != "meta" and not (random_weights or description.random_weights):
        return load_model(spec, device=device, dtype=dtype, base=base, seed=seed, full_vae=full_vae)

    from diffusers import SanaTransformer2DModel

    preset = PRESETS[description.base_preset]
    seed_ = int(description.random_seed or seed)
    with torch.device(device):
        if description.transformer != "base":
            config = SanaTransformer2DModel.load_config(str(folder / description.transformer))
            transformer = SanaTransformer2DModel.from_config(config)
        else:
            transformer = build_random_transformer(preset, seed_)
        if description.adapter:
            from peft import LoraConfig

            transformer.add_adapter(LoraConfig.from_pretrained(str(folder / description.adapter)))
        vae = build_random_vae(preset, seed_)
        tokenizer, text_encoder = build_random_text(preset, seed_)
    students = build_students(description, folder, preset, vae, dtype, full_vae, device=device, random_weights=True)
    for m in (transformer, vae, text_encoder):
        m.to(dtype=dtype).eval().requires_grad_(False)
    return assemble_model(transformer, vae, tokenizer, text_encoder, description, preset, folder, students)


# ---------------------------------------------------------------- measuring


@torch.no_grad()
def count_macs(fn: Callable[[], object]) -> int:
    """MACs (= FLOPs / 2) of one call, counted by FlopCounterMode. Run it on meta tensors (see module doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops()) // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _weight_bytes(modules: list[torch.nn.Module]) -> int:
    seen: dict[int, torch.Tensor] = {}
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            seen[id(t)] = t
    return sum(t.numel() * t.element_size() for t in seen.values())


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
    _sync(device)
    extra = {n: dict.fromkeys(keys, 0) for n in pipelines}
    for n in pipelines:
        costs[n].rounds_ms = {k: [] for k in keys}
    for r in range(repeats):
        step(f"timing {size}x{size}: round {r + 1}/{repeats}, {' / '.join(pipelines)} interleaved")
        for part in keys:
            for n, p in pipelines.items():
                _sync(device)
                if cuda:
                    before = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                p.run[part](inputs[n])
                _sync(device)
                costs[n].rounds_ms[part].append((time.perf_counter() - start) * 1000)
                if cuda:
                    extra[n][part] = max(extra[n][part], torch.cuda.max_memory_allocated(device) - before)
    for n, p in pipelines.items():
        weights = _weight_bytes(p.modules_all()) if cuda else None
        for part in keys:
            entry = costs[n].entry(part)
            entry["latency_ms"] = statistics.median(costs[n].rounds_ms[part])
            entry["peak_memory_mb"] = (weights + extra[n][part]) / MIB if cuda else None
        for name, fn in p.once.items():  # one run: it happens once per process
            step(f"timing {n}'s {name} (once)")
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            costs[n].once[name]["latency_ms"] = (time.perf_counter() - start) * 1000


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


COMPARABLE = ("osediff", "full-prompt", "full-vae")


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
        spec, "meta", random_weights=True, base=options.base, seed=options.seed, full_vae=options.full_vae
    )

    def build(name: str, device, model=None) -> Pipeline:
        if name == "osediff":
            return osediff_pipeline(device, options.dtype, options.seed)
        if name == "sanasr" or name in COMPARABLE:  # the measured model itself, or a variant of it
            return sana_pipeline(model, full_prompt=name == "full-prompt", full_vae=name == "full-vae")
        meta = torch.device(device).type == "meta"  # another SANA-SR model by name (e.g. the unpruned preset)
        other = build_sanasr(
            name, device, options.dtype, meta or options.random_weights, options.base, options.seed
        )
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
                        options.full_vae,
                    )
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
            sub = _report(
                size, options, device, costs[size][name], notes[size][name], meta_other[name].description
            )
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
            "end_to_end": "vae_encode + transformer + vae_decode; text encoder reported separately, "
            "tagger not counted",
        },
    }


# ---------------------------------------------------------------- plot


def plot_reports(reports: list[dict], path: str | Path) -> None:
    """PNG of MACs and latency against resolution, for SANA-SR and each compared pipeline (atomic write)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in reports]
    series = {"SANA-SR": [r["end_to_end"] for r in reports]}
    for name in reports[0]["compare"]:
        series[f"{name}-shaped"] = [r["compare"][name]["end_to_end"] for r in reports]
    fig, (ax_m, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in series.items():
        ax_m.plot(sizes, [p["macs"] / 1e9 for p in points], marker="o", label=label)
        lat = [
            (s, p["latency_ms"]) for s, p in zip(sizes, points, strict=True) if p["latency_ms"] is not None
        ]
        if lat:
            ax_l.plot([s for s, _ in lat], [v for _, v in lat], marker="o", label=label)
    ax_m.set(
        title="end-to-end GMACs (FlopCounterMode, meta)",
        xlabel="output size (px, square)",
        ylabel="GMACs",
        yscale="log",
    )
    ax_l.set(
        title=f"end-to-end latency (median)\n{reports[0]['device']}, {reports[0]['precision']}",
        xlabel="output size (px, square)",
        ylabel="ms",
        yscale="log",
    )
    if not ax_l.lines:
        ax_l.text(0.5, 0.5, "latency not measured", ha="center", va="center", transform=ax_l.transAxes)
    for ax in (ax_m, ax_l):
        ax.set_xticks(sizes)
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from sanasr_cli.safe_files import write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=120, format="png")
    finally:
        plt.close(fig)
    write_bytes(path, buf.getvalue())  # atomic, through links, never replacing a special file
