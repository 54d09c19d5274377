"""The pipelines `sanasr bench` measures, as parts (VAE encode, text encoder, denoiser, VAE decode, end to end):
SANA-SR as inference runs it (and its full-prompt variant), and an OSEDiff-shaped one-step SD-2.1 pipeline.

OSEDiff-shaped pipeline: diffusers `AutoencoderKL` (SD VAE) + `UNet2DConditionModel` with the SD-2.1 configs
below, the SD-2.1 text encoder (OpenCLIP ViT-H text tower as `CLIPTextModel`, 77 tokens), one UNet step at
t = 999; random weights (the cost does not depend on them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PARTS = ("vae_encode", "text_encoder", "transformer", "vae_decode")
END_TO_END_PARTS = ("vae_encode", "transformer", "vae_decode")
# 30 words: 22 of content tags, 8 of App. B's quality template (the prompt rule's default), like a tagged image
BENCH_PROMPT = (
    "red flower, green leaf, wooden table, white cup, old book, glass window, blue sky, "
    "stone wall, small dog, yellow lamp, tall tree, clean, extremely detailed, best quality, sharp, "
    "high-resolution"
)

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
    """Parts of a SanaSR; end_to_end is `models.sanasr.restore_upsampled`, the inference path itself.

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

    run_model = model if codec is model.codec else dataclasses.replace(model, codec=codec)

    def end_to_end(i):  # the path every command runs (the prompt encoded apart, as its own part)
        from sanasr_cli.models.sanasr import restore_upsampled

        return restore_upsampled(run_model, i["image"], i["embeds"], i["mask"], lq=i["lq"])

    decoder = {"full": "DC-AE", "lite": "DC-AE-Lite"}.get(model.description.vae_decoder) or (
        f"DC-AE ({model.description.vae_decoder}'s decoder)"
    )
    prefix = (
        f"instruction prefix reused, {len(prompts.prefix_ids)} tokens once per process"
        if (reuse and prompts.complex_human_instruction)
        else "full-length padded encode"
    )
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
        f"{decoder} decode; text encoder separate, per distinct prompt of 30 words ({prefix}; the transformer "
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
        return z - unet(z, t, encoder_hidden_states=embeds).sample  # one step; the update itself is negligible

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
    vae_decoder: str | None = None,
):
    """A SanaSR for measuring. On the meta device, or with random weights, the modules are built directly on
    `device` with the same builders `load_model` uses (no CPU detour for a real-size model, no download); the
    transformer follows the model directory (its own config when it has one, e.g. pruned; its LoRA adapter
    unmerged). Otherwise `load_model` loads the real weights. vae_decoder: as `load_model`'s; the decoder it
    replaced (the full one, for `--compare decoder-full`) is kept in `model.info["full_decoder"]`.
    """
    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.models.sanasr import (
        assemble_model,
        build_random_text,
        build_random_transformer,
        build_random_vae,
        build_students,
        load_model,
        refuse_unused_decoder,
        resolve_model,
        use_decoder,
    )

    device = torch.device(device)
    description, folder = resolve_model(spec, base=base, random_weights=random_weights, seed=seed)
    preset = PRESETS[description.base_preset]
    if device.type != "meta" and not (random_weights or description.random_weights):
        choice = vae_decoder or description.vae_decoder
        # the full decoder first (kept for --compare decoder-full), then `choice` swapped in; the user's flag is
        # checked against a decoder student here, as load_model would check it
        refuse_unused_decoder(spec, vae_decoder, None if full_vae else description.decoder)
        model = load_model(
            spec,
            device=device,
            dtype=dtype,
            base=base,
            seed=seed,
            full_vae=full_vae,
            vae_decoder=None if description.vae_decoder == "full" else "full",
        )
        model.info["full_decoder"] = use_decoder(model.codec.vae, model.description, choice, preset, dtype)
        model.codec.vae.to(device=device, dtype=dtype)
        return model

    from diffusers import SanaTransformer2DModel

    if folder is not None:  # built from the folder's configs: checked as load_model checks them (no weights read)
        from sanasr_cli.errors import ModelDirError
        from sanasr_cli.models.folder_check import check_adapter_config, check_diffusers_folder
        from sanasr_cli.models.sanasr import model_dir_problem

        problem = model_dir_problem(folder)
        if problem:
            raise ModelDirError(problem)
        if description.transformer != "base":
            where = f"{folder}: transformer folder '{description.transformer}/'"
            check_diffusers_folder(SanaTransformer2DModel, folder / description.transformer, where)
        if description.adapter:
            check_adapter_config(folder / description.adapter, f"{folder}: adapter folder '{description.adapter}/'")
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
        full_decoder = use_decoder(vae, description, vae_decoder, preset, dtype, build_only=True)
        tokenizer, text_encoder = build_random_text(preset, seed_)
    students = build_students(description, folder, preset, vae, dtype, full_vae, device=device, random_weights=True)
    refuse_unused_decoder(spec, vae_decoder, students[1])
    for m in (transformer, vae, text_encoder, full_decoder):
        if m is not None:
            m.to(dtype=dtype).eval().requires_grad_(False)
    model = assemble_model(transformer, vae, tokenizer, text_encoder, description, preset, folder, students)
    model.info["full_decoder"] = full_decoder
    return model


def with_decoder(model, decoder: torch.nn.Module, label: str = "full"):
    """The same SanaSR (shared transformer, text encoder, VAE encoder) decoding with `decoder`: the variant that
    `--compare decoder-full` measures beside a lite-decoder model. The model's own VAE is left as it is."""
    import copy

    from sanasr_cli.models.vae import LatentCodec

    vae = copy.copy(model.codec.vae)
    vae._modules = dict(vae._modules)  # its own module table: the swap below does not reach the model's VAE
    vae.decoder = decoder
    description = dataclasses.replace(model.description, vae_decoder=label)
    codec = LatentCodec(vae, model.codec.lq_encoder, model.codec.light_decoder)  # the students stay
    return dataclasses.replace(model, codec=codec, description=description, info={})
