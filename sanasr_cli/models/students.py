"""Students of the DC-AE (`sanasr distill`): an LQ-native encoder and a light decoder.

Both are built from diffusers' own DC-AE parts (`diffusers.models.autoencoders.autoencoder_dc.Encoder` and
`Decoder`, i.e. AutoencoderDC's ResBlock / EfficientViT blocks and its down/up-sampling blocks) with a pixel
(un)shuffle at the image end, and save / load as diffusers-style folders (`config.json` +
`diffusion_pytorch_model.safetensors`) with `save_pretrained` / `from_pretrained`.

- `LQEncoder`: reads the LQ image at its own resolution and predicts the teacher's *scaled* latent
  z_L = E(bicubic_x4(x_L)) * scaling_factor. Tensor contract: lq (B, 3, h, w) in [0, 1], h and w multiples of
  `lq_factor` (= teacher factor / 4) -> (B, C, 4h / f, 4w / f). The x4 image is never formed: at 512^2 output
  the SANA DC-AE encoder reads 16x the pixels the LQ holds.
- `LightDecoder`: scaled latents (B, C, h, w) -> images (B, 3, f h, f w) in [-1, 1] like the teacher's decoder
  (LatentCodec maps to [0, 1]); the last x`out_shuffle` of the upsampling is a pixel shuffle of a 3 s^2-channel
  output, so no full-resolution feature map is ever formed.

Default configurations per base preset are in STUDENT_CONFIGS (nano: measured in models/nano_fast/README.md;
sana-600m-512: counted only, random weights, quality unmeasured).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_dc import Decoder, Encoder
from diffusers.models.modeling_utils import ModelMixin

from sanasr_cli.errors import ModelDirError

KINDS = ("encoder", "decoder")
SR_SCALE = 4  # the student encoder reads the x4 model's LQ input


class LQEncoder(ModelMixin, ConfigMixin):
    """LQ image -> the teacher's scaled latent of its x4 bicubic upsampling (see the module docstring)."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        teacher_factor: int = 4,
        in_unshuffle: int = 1,
        block_out_channels: tuple[int, ...] = (32,),
        layers_per_block: tuple[int, ...] = (2,),
        block_types: tuple[str, ...] = ("ResBlock",),
        qkv_multiscales: tuple[tuple[int, ...], ...] = ((),),
        attention_head_dim: int = 16,
        downsample_block_type: str = "Conv",
    ):
        super().__init__()
        lq_factor = teacher_factor // SR_SCALE
        stages = in_unshuffle * 2 ** (len(block_out_channels) - 1)
        if teacher_factor % SR_SCALE or stages != lq_factor:
            raise ValueError(
                f"LQEncoder: in_unshuffle {in_unshuffle} x 2^{len(block_out_channels) - 1} stages = {stages} must "
                f"equal the teacher factor / {SR_SCALE} = {teacher_factor / SR_SCALE:g}"
            )
        self.encoder = Encoder(
            in_channels=3 * in_unshuffle**2,
            latent_channels=latent_channels,
            attention_head_dim=attention_head_dim,
            block_type=tuple(block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=tuple(layers_per_block),
            qkv_multiscales=tuple(tuple(q) for q in qkv_multiscales),
            downsample_block_type=downsample_block_type,
            out_shortcut=block_out_channels[-1] % latent_channels == 0,
        )

    @property
    def lq_factor(self) -> int:
        return self.config.teacher_factor // SR_SCALE

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        x = lq.to(self.dtype) * 2 - 1
        if self.config.in_unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.in_unshuffle)
        return self.encoder(x)


class LightDecoder(ModelMixin, ConfigMixin):
    """Scaled latents -> images in [-1, 1] (see the module docstring)."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        teacher_factor: int = 4,
        out_shuffle: int = 2,
        block_out_channels: tuple[int, ...] = (16, 32),
        layers_per_block: tuple[int, ...] = (1, 2),
        block_types: tuple[str, ...] = ("ResBlock", "ResBlock"),
        qkv_multiscales: tuple[tuple[int, ...], ...] = ((), ()),
        attention_head_dim: int = 16,
        upsample_block_type: str = "interpolate",
    ):
        super().__init__()
        stages = out_shuffle * 2 ** (len(block_out_channels) - 1)
        if stages != teacher_factor:
            raise ValueError(
                f"LightDecoder: out_shuffle {out_shuffle} x 2^{len(block_out_channels) - 1} stages = {stages} must "
                f"equal the teacher factor {teacher_factor}"
            )
        self.decoder = Decoder(
            in_channels=3 * out_shuffle**2,
            latent_channels=latent_channels,
            attention_head_dim=attention_head_dim,
            block_type=tuple(block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=tuple(layers_per_block),
            qkv_multiscales=tuple(tuple(q) for q in qkv_multiscales),
            norm_type="rms_norm",
            act_fn="silu",
            upsample_block_type=upsample_block_type,
            in_shortcut=block_out_channels[-1] % latent_channels == 0,
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.decoder(latents.to(self.dtype))
        if self.config.out_shuffle > 1:
            x = F.pixel_shuffle(x, self.config.out_shuffle)
        return x


STUDENT_CLASSES = {"encoder": LQEncoder, "decoder": LightDecoder}

# Default student configs per base preset (teacher_factor / latent_channels follow the preset's VAE).
STUDENT_CONFIGS: dict[str, dict[str, dict]] = {
    # nano f4c32: latent at the LQ's own resolution; 0.77 + 1.47 GMACs at 512^2 vs the teacher's 6.27 + 9.29
    "nano": {
        "encoder": dict(
            block_out_channels=(32,), layers_per_block=(2,), block_types=("ResBlock",), qkv_multiscales=((),)
        ),
        "decoder": dict(
            out_shuffle=2,
            block_out_channels=(16, 32),
            layers_per_block=(1, 2),
            block_types=("ResBlock", "ResBlock"),
            qkv_multiscales=((), ()),
        ),
    },
    # tiny f8c8 (tests): LQ factor 2
    "tiny": {
        "encoder": dict(
            block_out_channels=(8, 16),
            layers_per_block=(1, 1),
            block_types=("ResBlock", "ResBlock"),
            qkv_multiscales=((), ()),
            attention_head_dim=8,
        ),
        "decoder": dict(
            out_shuffle=2,
            block_out_channels=(8, 16, 16),
            layers_per_block=(1, 1, 1),
            block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
            qkv_multiscales=((), (), (5,)),
            attention_head_dim=8,
        ),
    },
    # SANA DC-AE f32c32 (counted only, random weights: see docs/distill.md). The teacher's cost is
    # its wide full-resolution stages (128 channels at 512^2, 256 at 256^2, 512 at 128^2, 3 layers each); the
    # students keep EfficientViT stages at 1/16 and 1/32 of the output (the decoder's at the teacher's 1024 channels)
    # and thin the high-resolution ones.
    # Encoder: reads the 128^2 LQ of a 512^2 output, 3 downsamplings to the 16^2 latent (no x4 image formed).
    "sana-600m-512": {
        "encoder": dict(
            in_unshuffle=1,
            block_out_channels=(128, 256, 512, 1024),
            layers_per_block=(1, 2, 3, 3),
            block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
            qkv_multiscales=((), (), (5,), (5,)),
            attention_head_dim=32,
        ),
        # Decoder: the teacher's six stages at a quarter (full resolution) to a half (1/4, 1/8) of its widths.
        "decoder": dict(
            out_shuffle=1,
            block_out_channels=(32, 64, 128, 256, 1024, 1024),
            layers_per_block=(1, 1, 2, 2, 3, 3),
            block_types=("ResBlock",) * 4 + ("EfficientViTBlock",) * 2,
            qkv_multiscales=((), (), (), (), (5,), (5,)),
            attention_head_dim=32,
        ),
    },
}


def student_config(kind: str, vae_config, preset_name: str, overrides: dict | None = None) -> dict:
    """The config of a `kind` student for a teacher VAE config (the preset's default, then `overrides`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown student kind {kind!r} (known: {', '.join(KINDS)})")
    get = vae_config.get if isinstance(vae_config, dict) else lambda k: getattr(vae_config, k)
    factor = 2 ** (len(get("encoder_block_out_channels")) - 1)
    cfg = dict(STUDENT_CONFIGS.get(preset_name, STUDENT_CONFIGS["nano"])[kind])
    cfg.update(latent_channels=int(get("latent_channels")), teacher_factor=factor)
    cfg.update(overrides or {})
    return cfg


def build_student(kind: str, config: dict, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return STUDENT_CLASSES[kind](**config)


def load_student(kind: str, folder: Path, dtype: torch.dtype = torch.float32):
    """A saved student folder -> the module (eval, frozen). ModelDirError (one line) when it cannot be loaded."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ModelDirError(f"{kind} student folder {folder} lacks config.json or its *.safetensors weights")
    try:
        cls_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{folder}/config.json is not valid JSON ({e})") from None
    cls = STUDENT_CLASSES[kind]
    if cls_name != cls.__name__:
        raise ModelDirError(f"{folder}: a {kind} student must be a {cls.__name__}, not {cls_name!r}")
    from sanasr_cli.models.folder_check import load_diffusers_folder

    # config and header checked before anything is built, weights finite once loaded (models/folder_check.py)
    module = load_diffusers_folder(cls, folder, f"{folder}: {kind} student", dtype)
    return module.eval().requires_grad_(False)


def check_teacher_fit(kind: str, student, vae) -> None:
    """ModelDirError when a student does not fit the teacher VAE it is paired with (factor, latent channels)."""
    factor = int(vae.spatial_compression_ratio)
    c = int(vae.config.latent_channels)
    if student.config.teacher_factor != factor or student.config.latent_channels != c:
        raise ModelDirError(
            f"the {kind} student was distilled for a VAE of factor {student.config.teacher_factor} and "
            f"{student.config.latent_channels} latent channels, but this model's VAE has factor {factor} and {c}"
        )
