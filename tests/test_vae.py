import pytest
import torch

from sanasr_cli.models.vae import LatentCodec


@pytest.mark.parametrize("size", [(13, 21), (8, 8), (1, 1), (3, 40), (17, 9)])
def test_pad_crop_round_trip_on_odd_sizes(tiny_model, size):
    codec = tiny_model.codec
    h, w = size
    x = torch.rand(1, 3, h, w)
    padded = codec.pad(x)
    assert padded.shape[-2] % codec.factor == 0 and padded.shape[-1] % codec.factor == 0
    assert padded.shape[-2] - h < codec.factor and padded.shape[-1] - w < codec.factor
    torch.testing.assert_close(codec.crop(padded, h, w), x)
    with torch.no_grad():
        z = codec.encode(padded)
        assert z.shape == (
            1,
            codec.latent_channels,
            padded.shape[-2] // codec.factor,
            padded.shape[-1] // codec.factor,
        )
        y = codec.crop(codec.decode(z), h, w)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_factor_and_scaling_come_from_the_config(tiny_model):
    codec = tiny_model.codec
    assert codec.factor == 8  # tiny: 4 stages -> 2**3
    assert codec.scaling_factor == tiny_model.codec.vae.config.scaling_factor


def test_scaling_factor_is_applied(tiny_model):
    codec = tiny_model.codec
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        raw = codec.vae.encode(x * 2 - 1).latent
        torch.testing.assert_close(codec.encode(x), raw * codec.scaling_factor)


def test_encode_refuses_unpadded_sizes(tiny_model):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_model.codec.encode(torch.rand(1, 3, 9, 16))


def test_real_dcae_factor_is_32():
    from diffusers import AutoencoderDC

    from sanasr_cli.models.presets import get_preset

    with torch.device("meta"):
        vae = AutoencoderDC(**get_preset("sana-600m-512").vae)
    assert LatentCodec(vae).factor == 32
    assert LatentCodec(vae).scaling_factor == pytest.approx(0.41407)
