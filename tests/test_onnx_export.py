"""Issue 24: `sanasr export` (ONNX), and the ONNX Runtime backend behind the one inference path.

The tiny preset is exported once per session (each stage is traced by torch.export: tens of seconds; the fixture
tiny_onnx is in tests/conftest.py, shared with tests/test_onnx_external_data.py's int8 reference).
"""

import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import REPO_ROOT, make_photo_like, one_error_line, run, snapshot

# skipped only where the onnx extra is not installed: an installed one that fails to import fails the file
pytest.importorskip("onnxruntime", exc_type=ModuleNotFoundError)
pytest.importorskip("onnxscript", exc_type=ModuleNotFoundError)

TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)
TOLERANCE = 1e-4  # max abs error of the fp32 graphs against PyTorch, on [0, 1] images


@pytest.fixture(scope="session")
def tiny_onnx_prompt_input(tmp_path_factory):
    """The tiny preset (seed 0) exported by the CLI with --prompt-input, fp32."""
    out = tmp_path_factory.mktemp("onnx") / "tiny_onnx_prompt_input"
    result = run("export", "tiny", "-o", out, "--prompt-input")
    assert result.exit_code == 0, result.output
    return out


def _pytorch_sr(model, lq: torch.Tensor, prompt: str) -> torch.Tensor:
    from sanasr_cli.data.resample import upsample_bicubic
    from sanasr_cli.pipeline.upscale import restore_upsampled

    embeds, mask = model.prompts.encode_for_transformer([prompt] * lq.shape[0])
    with torch.no_grad():
        return restore_upsampled(model, upsample_bicubic(lq, 4), embeds, mask)


def test_the_folder_holds_the_contract_and_the_model_card(tiny_onnx, tiny_model):
    from sanasr_cli.export.onnx_export import weights_sha256

    contract = json.loads((tiny_onnx / "sanasr-onnx.json").read_text())
    assert contract["scale"] == 4 and contract["input"]["range"] == [0.0, 1.0]
    assert contract["input"]["layout"] == "NCHW" and contract["input"]["multiple_of"] == 2  # 4 * 2 = VAE factor 8
    assert contract["prompt"]["text"] == tiny_model.description.prompt.template and not contract["prompt"]["input"]
    assert contract["quantization"]["mode"] == "none" and contract["opset"] >= 17
    assert contract["source_weights_sha256"] == weights_sha256(tiny_model)
    assert {"model.onnx", "encoder.onnx", "restorer.onnx", "decoder.onnx"} <= set(contract["files"])
    assert "multiples of 2" in (tiny_onnx / "README.md").read_text()


def test_model_onnx_equals_pytorch_at_sizes_it_was_not_exported_at(tiny_onnx, tiny_model):
    """The deployable graph alone (bicubic inside, prompt baked): two batch sizes and shapes, none the export's
    (2 x 6 x 8), no NaN / inf, within 1e-4 of the PyTorch model."""
    from sanasr_cli.models.onnx_backend import run_model_onnx

    prompt = json.loads((tiny_onnx / "sanasr-onnx.json").read_text())["prompt"]["text"]
    torch.manual_seed(1)
    for shape in [(1, 3, 10, 14), (3, 3, 16, 4)]:
        lq = torch.rand(*shape)
        sr = run_model_onnx(tiny_onnx, lq)
        ref = _pytorch_sr(tiny_model, lq, prompt)
        assert sr.shape == ref.shape == (shape[0], 3, 4 * shape[2], 4 * shape[3])
        assert torch.isfinite(sr).all()
        assert float((sr - ref).abs().max()) < TOLERANCE, shape


def test_upscale_through_onnx_tiles_as_pytorch_does(tiny_onnx, tiny_model):
    """The host path (padding, overlapping tiles, colour fix, resize) around the ONNX stages: an odd-sized image
    (padded), tiled, equals the PyTorch model's through the same code."""
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import upscale_tensor

    onnx_model = load_model(tiny_onnx)
    lq = torch.from_numpy(make_photo_like(13, 19, 4)).permute(2, 0, 1).float() / 255
    prompt = onnx_model.description.prompt.template
    sr, plan = upscale_tensor(onnx_model, lq, prompt, tile=32, scale=3.0, return_plan=True)
    ref, ref_plan = upscale_tensor(tiny_model, lq, prompt, tile=32, scale=3.0, return_plan=True)
    assert plan.dit_tiles > 1 and plan.to_dict() == ref_plan.to_dict()
    assert sr.shape == ref.shape == (3, 39, 57) and torch.isfinite(sr).all()
    assert float((sr - ref).abs().max()) < TOLERANCE


def test_cli_upscale_and_the_api_run_the_onnx_folder(tiny_onnx, tmp_path):
    """`sanasr upscale --model ONNX_DIR` keeps alpha and 16 bits as for PyTorch; the outputs agree (8/16-bit
    quantisation aside); `SanaSRPipeline.from_pretrained(ONNX_DIR)` runs it too."""
    from sanasr_cli import SanaSRPipeline

    (tmp_path / "in").mkdir()
    rgb = make_photo_like(12, 10, 5)
    alpha = np.linspace(0, 255, 120, dtype=np.uint8).reshape(12, 10, 1)
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(tmp_path / "in" / "a.png")
    gray16 = (make_photo_like(10, 8, 6)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "in" / "g.png")
    for model, out in ((tiny_onnx, "onnx"), ("tiny", "torch")):
        result = run("upscale", tmp_path / "in", "-o", tmp_path / out, "--model", model, "--tile", "32")
        assert result.exit_code == 0, result.output
    for name in ("a.png", "g.png"):
        a, b = Image.open(tmp_path / "onnx" / name), Image.open(tmp_path / "torch" / name)
        assert a.mode == b.mode and a.size == b.size
        levels = 8 if name == "g.png" else 1  # 16-bit: 8 levels of 65535 is 1.2e-4
        assert np.abs(np.asarray(a).astype(np.int64) - np.asarray(b).astype(np.int64)).max() <= levels
    out = SanaSRPipeline.from_pretrained(tiny_onnx)(Image.fromarray(rgb), output_type="np")
    assert out.images[0].shape == (48, 40, 3) and np.isfinite(out.images[0]).all()


def test_a_prompt_other_than_the_baked_one_is_one_line(tiny_onnx, tmp_path):
    Image.fromarray(make_photo_like(8, 8, 0)).save(tmp_path / "a.png")
    result = run("upscale", tmp_path / "a.png", "-o", tmp_path / "out", "--model", tiny_onnx, "--prompt", "a cat")
    assert result.exit_code == 1
    assert "baked in" in result.output and "Traceback" not in result.output


def test_bad_export_targets_are_one_line(tiny_onnx, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("the user's")
    before = snapshot(tmp_path)
    for args, code, words in [
        (["tiny", "-o", tmp_path / "full"], 2, "not empty"),
        (["tiny", "-o", tmp_path / "full", "--overwrite"], 2, "not a folder written by `sanasr export`"),
        (["no-such-model", "-o", tmp_path / "new"], 2, "neither a preset"),
        (["tiny", "-o", tmp_path / "new", "--quantize", "int4"], 2, "--quantize"),
        ([tiny_onnx, "-o", tmp_path / "new"], 2, "already an ONNX export"),
    ]:
        result = run("export", *args)
        assert result.exit_code == code, (args, result.output)
        assert words in one_error_line(result), args
    assert snapshot(tmp_path) == before


def test_a_size_the_graph_cannot_take_is_one_line(tiny_onnx):
    from sanasr_cli.export.contract import OnnxInputError
    from sanasr_cli.models.onnx_backend import run_model_onnx

    with pytest.raises(OnnxInputError, match="multiples of 2, not 9x8"):
        run_model_onnx(tiny_onnx, torch.rand(1, 3, 9, 8))


def _without(module: str, *argv) -> subprocess.CompletedProcess:
    """`sanasr ARGV` in a fresh process of this checkout where `import module` fails as if not installed."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; from sanasr_cli.cli import main; "
        "sys.argv = ['sanasr', *sys.argv[1:]]; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )


def test_missing_onnxruntime_is_one_clear_line(tiny_onnx, tmp_path):
    Image.fromarray(make_photo_like(8, 8, 0)).save(tmp_path / "a.png")
    for argv in (
        ["upscale", tmp_path / "a.png", "-o", tmp_path / "out", "--model", tiny_onnx],
        ["export", "tiny", "-o", tmp_path / "exp"],
    ):
        proc = _without("onnxruntime", *argv)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 1, proc.stderr
        assert len(errors) == 1 and "pip install 'sanasr[onnx]'" in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "exp").exists()


def test_a_torch_too_old_to_export_is_one_clear_line(tmp_path):
    """torch < 2.12 cannot export the stages (.ci/oldest): one line naming the version, nothing written."""
    code = (
        "import sys, torch; torch.__version__ = '2.6.0'; from sanasr_cli.cli import main; "
        "sys.argv = ['sanasr', *sys.argv[1:]]; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "export", "tiny", "-o", str(tmp_path / "exp")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and "torch >= 2.12 (this is 2.6.0)" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "exp").exists()


def test_prompt_input_export_equals_the_baked_one_for_the_same_prompt(tiny_onnx, tiny_onnx_prompt_input, tiny_model):
    """--prompt-input: model.onnx takes prompt_embeds / prompt_mask (the untrimmed layout, padding masked): fed the
    default prompt's, it gives the baked export's output within 1e-4; fed another prompt's, PyTorch's for it."""
    from sanasr_cli.models.onnx_backend import run_model_onnx

    contract = json.loads((tiny_onnx_prompt_input / "sanasr-onnx.json").read_text())
    assert contract["prompt"]["input"] and contract["prompt"]["tokens"] == tiny_model.prompts.max_length
    assert contract["prompt"]["tokens"] > json.loads((tiny_onnx / "sanasr-onnx.json").read_text())["prompt"]["tokens"]
    lq = torch.rand(2, 3, 12, 6, generator=torch.Generator().manual_seed(3))
    with_inputs, baked = run_model_onnx(tiny_onnx_prompt_input, lq), run_model_onnx(tiny_onnx, lq)
    assert torch.isfinite(with_inputs).all() and float((with_inputs - baked).abs().max()) < TOLERANCE
    embeds, mask = tiny_model.prompts.encode(["a cat", "a dog on grass"], reuse_prefix=True)
    other = run_model_onnx(tiny_onnx_prompt_input, lq, prompt_embeds=embeds, prompt_mask=mask)
    ref = _pytorch_sr(tiny_model, lq[:1], "a cat")
    assert float((other[:1] - ref).abs().max()) < TOLERANCE and float((other[0] - other[1]).abs().max()) > 1e-3


def test_prompt_input_export_runs_other_prompts_through_the_source_text_encoder(tiny_onnx_prompt_input, tiny_model):
    """upscale's path with --prompt on a --prompt-input export: the text encoder of the contract's source (tiny,
    random weights, seed 0) is rebuilt when first needed, and the output is PyTorch's for that prompt."""
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import upscale_tensor

    onnx_model = load_model(tiny_onnx_prompt_input)
    lq = torch.from_numpy(make_photo_like(11, 9, 2)).permute(2, 0, 1).float() / 255
    sr = upscale_tensor(onnx_model, lq, "a red barn", tile="none")
    assert onnx_model.prompts.text_encoder is not None  # built on first need
    ref = upscale_tensor(tiny_model, lq, "a red barn", tile="none")
    assert float((sr - ref).abs().max()) < TOLERANCE


def test_prompt_input_export_whose_text_encoder_cannot_be_had_is_one_line(tiny_onnx_prompt_input, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(tiny_onnx_prompt_input, moved)
    contract = json.loads((moved / "sanasr-onnx.json").read_text())
    contract["source_model"] = str(tmp_path / "gone_model_dir")  # exported from a model directory not here
    (moved / "sanasr-onnx.json").write_text(json.dumps(contract))
    Image.fromarray(make_photo_like(8, 8, 0)).save(tmp_path / "a.png")
    ok = run("upscale", tmp_path / "a.png", "-o", tmp_path / "ok", "--model", moved)  # its default prompt: no encoder
    assert ok.exit_code == 0, ok.output
    result = run("upscale", tmp_path / "a.png", "-o", tmp_path / "out", "--model", moved, "--prompt", "a cat")
    assert result.exit_code == 1 and "needs the text encoder of its source" in result.output
    assert "Traceback" not in result.output


def test_bench_compare_backends_reports_ratios_per_size(tiny_bench_backends, tmp_path):
    """`sanasr bench --compare-backends` on tiny: PyTorch, ORT fp32, ORT int8 timed interleaved per size, the
    ratios in the JSON (no timing is asserted); an export already in --export-dir with the same weights is reused
    (the run: tiny_bench_backends in tests/conftest.py; its int8 export is also tests/test_onnx_external_data.py's)."""
    result, exports, report, before = tiny_bench_backends
    assert result.exit_code == 0, result.output
    assert report["backends"] == ["pytorch", "ort_fp32", "ort_int8"] and report["threads"] >= 1
    assert [e["size"] for e in report["per_size"]] == [32, 48] and [e["lq_size"] for e in report["per_size"]] == [8, 12]
    for entry in report["per_size"]:
        assert set(entry["speedup_vs_pytorch"]) == {"ort_fp32", "ort_int8"}
        assert all(r > 0 for r in entry["speedup_vs_pytorch"].values())
        assert all(len(s) == 3 for s in entry["seconds"].values())
    memory = report["per_size"][-1]["memory_mib"]  # at the largest size, each backend in a process of its own
    assert set(memory) == {"pytorch", "ort_fp32", "ort_int8"} and not report["per_size"][0]["memory_mib"]
    assert all(0 < m["loaded_rss_mib"] <= m["peak_rss_mib"] for m in memory.values())
    assert report["model_onnx_mib"]["ort_int8"] < report["model_onnx_mib"]["ort_fp32"]
    assert (exports / "ort_fp32" / "model.onnx").stat().st_mtime_ns == before  # reused, not exported again
    assert json.loads((exports / "ort_int8" / "sanasr-onnx.json").read_text())["quantization"]["mode"] == "int8"
    assert "speed-up" in result.output
    bad = run("bench", "--model", "tiny", "--compare-backends", "--plot", tmp_path / "p.png")
    assert bad.exit_code == 2 and "--compare-backends does not take --plot" in one_error_line(bad)


# ---------------------------------------------------------------- issue 34: an ONNX folder is untrusted input
# Each hostile folder is a copy of the one tiny export with one thing changed; it must end in one line: a
# ModelDirError from the Python API (SanaSRPipeline.from_pretrained), exit 2 from the CLI, never a traceback or
# "this is a bug", and nothing outside the folder is opened.


def _contract(folder, **changes):
    path = folder / "sanasr-onnx.json"
    c = json.loads(path.read_text())
    for key, value in changes.items():
        target = c
        *parents, last = key.split("__")
        for p in parents:
            target = target[p]
        if value is _DROP:
            del target[last]
        else:
            target[last] = value
    path.write_text(json.dumps(c))


_DROP = object()


def _externalise(folder, stage: str, location: str) -> None:
    """Move the initializers of `stage`.onnx into an external data file at `location` (ONNX's external data)."""
    import onnx

    m = onnx.load(str(folder / f"{stage}.onnx"))
    onnx.save_model(m, str(folder / f"{stage}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{stage}.data", size_threshold=1024)  # fmt: skip
    if location != f"{stage}.data":  # then point the graph elsewhere (the bytes copied there)
        m = onnx.load(str(folder / f"{stage}.onnx"), load_external_data=False)
        for t in m.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(m, str(folder / f"{stage}.onnx"))


def _edit_graph(folder, stage: str, change) -> None:
    import onnx

    m = onnx.load(str(folder / f"{stage}.onnx"))
    change(m)
    onnx.save_model(m, str(folder / f"{stage}.onnx"))


def _custom_op(m) -> None:
    import onnx

    m.graph.node[0].domain = "evil.ops"
    m.opset_import.append(onnx.helper.make_opsetid("evil.ops", 1))


def _broken_node(m) -> None:
    m.graph.node[0].ClearField("input")  # an operator without its inputs: ONNX Runtime's own InvalidGraph


def _npz(folder, **arrays) -> None:
    np.savez(folder / "prompt.npz", **arrays)


def _huge_npz(folder) -> None:
    """A prompt.npz whose header declares a 1 x 4096 x 131072 float32 array (2 GiB) over a few bytes of data."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1, 4096, 131072)})
    with zipfile.ZipFile(folder / "prompt.npz", "w") as z:
        z.writestr("embeds.npy", header.getvalue() + b"\0" * 64)
        mask = io.BytesIO()
        np.save(mask, np.ones((1, 4096), np.int64))
        z.writestr("mask.npy", mask.getvalue())


def _link_out(folder, name: str, tmp) -> None:
    import shutil

    shutil.move(folder / name, tmp / f"outside_{name}")
    (folder / name).symlink_to(tmp / f"outside_{name}")


ONNX_CASES = [
    # item 6: nothing outside the folder is read
    ("stage_absolute", lambda f, t: _contract(f, stages__encoder=str(t / "outside_encoder.onnx")), "must be the name"),
    ("stage_dotdot", lambda f, t: _contract(f, stages__encoder="../outside_encoder.onnx"), "must be the name"),
    ("stage_link_out", lambda f, t: _link_out(f, "encoder.onnx", t), "leads outside"),
    ("stage_unknown", lambda f, t: _contract(f, stages__evil="/etc/passwd"), "'stages' must name exactly"),
    ("contract_link_out", lambda f, t: _link_out(f, "sanasr-onnx.json", t), "leads outside"),
    ("prompt_link_out", lambda f, t: _link_out(f, "prompt.npz", t), "leads outside"),
    ("external_data_outside", lambda f, t: _externalise(f, "encoder", "../outside_encoder.data"), "not a file name"),
    ("external_data_absolute", lambda f, t: _externalise(f, "restorer", "/etc/hostname"), "not a file name"),
    # item 7: sizes before allocation
    ("prompt_declares_2gib", lambda f, t: _huge_npz(f), "'embeds' is float32 [1, 4096, 131072]"),
    ("prompt_width_2gib", lambda f, t: _contract(f, prompt__tokens=4096, prompt__width=131072), "'width' must be"),
    ("factor_16384", lambda f, t: _contract(f, factor=16384), "'factor' must be a whole number from 1 to 64"),
    ("contract_300mb", lambda f, t: os.truncate(f / "sanasr-onnx.json", 300 << 20), "too large for a config"),
    # item 8: every malformed folder is one line
    ("factor_0", lambda f, t: _contract(f, factor=0), "'factor' must be a whole number"),
    ("version_word", lambda f, t: _contract(f, version="one"), "'version' must be a whole number"),
    ("version_nan", lambda f, t: _contract(f, version=float("nan")), "'version' must be a whole number"),
    ("stages_list", lambda f, t: _contract(f, stages=["encoder.onnx"]), "'stages' must be an object"),
    ("stages_missing_key", lambda f, t: _contract(f, stages__decoder=_DROP), "'stages' must name exactly"),
    ("contract_deep", lambda f, t: (f / "sanasr-onnx.json").write_text("[" * 100_000 + "]" * 100_000), "nested"),
    ("scale_2", lambda f, t: _contract(f, scale=2), "'scale' must be 4"),
    ("scale_minus_4", lambda f, t: _contract(f, scale=-4), "'scale' must be 4"),
    ("tau_g_nan", lambda f, t: _contract(f, tau_g=float("nan")), "'tau_g' must be a finite number"),
    ("lq_factor_0", lambda f, t: _contract(f, lq_factor=0), "'lq_factor' must be a whole number"),
    ("multiple_of_wrong", lambda f, t: _contract(f, input__multiple_of=3), "'input.multiple_of' must be 2"),
    ("prompt_text_missing", lambda f, t: _contract(f, prompt__text=_DROP), "'text' must be a string"),
    ("stage_empty", lambda f, t: (f / "decoder.onnx").write_bytes(b""), "decoder.onnx is empty"),
    ("stage_random", lambda f, t: (f / "decoder.onnx").write_bytes(bytes(range(256)) * 8), "not an ONNX model"),
    ("stage_text", lambda f, t: (f / "decoder.onnx").write_text("hello, not a graph\n"), "not an ONNX model"),
    ("stage_pickle", lambda f, t: (f / "decoder.onnx").write_bytes(pickle.dumps({"a": 1})), "not an ONNX model"),
    ("stage_custom_op", lambda f, t: _edit_graph(f, "restorer", _custom_op), "custom domain 'evil.ops'"),
    ("stage_invalid_graph", lambda f, t: _edit_graph(f, "decoder", _broken_node), "cannot be loaded by ONNX Runtime"),
    ("stage_other_graph", lambda f, t: shutil.copy(f / "decoder.onnx", f / "encoder.onnx"), "encoder.onnx takes"),
    (
        "external_data_past_end",
        lambda f, t: (_externalise(f, "encoder", "encoder.data"), os.truncate(f / "encoder.data", 16)),
        "points past the end",
    ),  # fmt: skip
    ("prompt_pickle", lambda f, t: (f / "prompt.npz").write_bytes(pickle.dumps([1, 2])), "not the prompt arrays"),
    ("prompt_object_array", lambda f, t: _npz(f, embeds=np.array([None], object), mask=np.ones((1, 1))), "object"),
    (
        "prompt_wrong_shape",
        lambda f, t: _npz(f, embeds=np.zeros((1, 2, 3), np.float32), mask=np.ones((1, 2), np.int64)),
        "the contract says",
    ),  # fmt: skip
    ("prompt_extra_member", lambda f, t: _npz(f, embeds=np.zeros(1), mask=np.zeros(1), x=np.zeros(1)), "exactly"),
]


@pytest.mark.parametrize(("case", "tamper", "words"), ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_a_hostile_onnx_folder_is_one_line_exit_2(tiny_onnx, tmp_path, case, tamper, words):
    from sanasr_cli import SanaSRPipeline
    from sanasr_cli.errors import ModelDirError

    folder = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, folder)
    for name in ("encoder.onnx", "encoder.data", "restorer.data"):  # what a case may point at outside the folder
        if (tiny_onnx / name).exists():
            shutil.copy(tiny_onnx / name, tmp_path / f"outside_{name}")
    shutil.copy(tiny_onnx / "encoder.onnx", tmp_path / "outside_encoder.onnx")
    tamper(folder, tmp_path)
    with pytest.raises(ModelDirError, match=re.escape(words)):
        SanaSRPipeline.from_pretrained(folder)
    Image.fromarray(make_photo_like(8, 8, 0)).save(tmp_path / "a.png")
    result = run("upscale", tmp_path / "a.png", "-o", tmp_path / "out", "--model", folder)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert words in line and "this is a bug" not in line, line
    assert not (tmp_path / "out" / "a.png").exists()


FAST_AND_SMALL = ["prompt_declares_2gib", "factor_16384", "contract_300mb"]


@pytest.fixture(scope="module")
def refusals_measured(tiny_onnx, tmp_path_factory):
    """Each case of FAST_AND_SMALL applied to a copy of the export, then loaded in a process of its own (one new
    interpreter, a fork per folder: tests/helpers.py): case -> (outcome, seconds, peak RSS growth in MB)."""
    from tests.helpers import load_each_in_a_fresh_process

    folders = []
    for case in FAST_AND_SMALL:
        tmp = tmp_path_factory.mktemp(case)
        folder = tmp / "onnx"
        shutil.copytree(tiny_onnx, folder)
        dict((c[0], c[1]) for c in ONNX_CASES)[case](folder, tmp)
        folders.append(folder)
    return dict(zip(FAST_AND_SMALL, load_each_in_a_fresh_process(folders), strict=True))


@pytest.mark.parametrize("case", FAST_AND_SMALL)
def test_a_hostile_onnx_folder_is_refused_fast_and_small(refusals_measured, case):
    """Item 7: sizes are checked before anything is allocated: a prompt.npz declaring 2 GiB (4.9 GB of RSS
    before), `factor` 16384 (3.9 GB), a 300 MB contract (read whole): refused in well under a second and under
    200 MB, measured in a fresh process."""
    outcome, seconds, grown_mb = refusals_measured[case]
    assert outcome.startswith("REFUSED"), outcome
    assert seconds < 5 and grown_mb < 200, (seconds, grown_mb)


def test_external_data_inside_the_folder_is_accepted(tiny_onnx, tmp_path):
    """ONNX's external data (`*.data` beside the graphs, as large exports write them) loads and gives the same
    result as the graphs with their weights inside."""
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import upscale_tensor

    folder = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, folder)
    _externalise(folder, "restorer", "restorer.data")
    assert (folder / "restorer.data").stat().st_size > 1000
    lq = torch.from_numpy(make_photo_like(8, 8, 1)).permute(2, 0, 1).float() / 255
    external, inside = load_model(folder), load_model(tiny_onnx)
    a = upscale_tensor(external, lq, external.prompts.text, tile="none")
    b = upscale_tensor(inside, lq, inside.prompts.text, tile="none")
    assert float((a - b).abs().max()) == 0.0  # the same graph, the same weights, the same runtime


def test_a_contract_never_makes_sanasr_open_a_local_model_or_base(tiny_onnx_prompt_input, tmp_path, fresh_tiny_model):
    """Item 6: `source_model` and `source_options.base` of a --prompt-input export name what loads the text encoder
    for other prompts. A local folder there is never opened because the export names it (as a model folder's
    local base_source): a source model folder is refused (the Python API takes its encoder as prompt_encoder=),
    a local base only when the user names the same one with --base."""
    from sanasr_cli.models.sanasr import save_model_dir

    elsewhere = save_model_dir(fresh_tiny_model, tmp_path / "elsewhere_model")
    Image.fromarray(make_photo_like(8, 8, 0)).save(tmp_path / "a.png")
    for i, (changes, extra, code, words) in enumerate([
        ({"source_model": str(elsewhere)}, [], 1, "which sanasr does not open because the export names it"),
        ({"source_options__base": str(tmp_path / "a_base")}, [], 1, f"pass --base {tmp_path / 'a_base'}"),
        ({"source_options__base": str(tmp_path / "a_base")}, ["--base", tmp_path / "a_base"], 0, None),
    ]):  # fmt: skip
        folder = tmp_path / f"onnx{i}"
        shutil.copytree(tiny_onnx_prompt_input, folder)
        _contract(folder, **changes)
        snapshot_before = snapshot(elsewhere)
        result = run("upscale", tmp_path / "a.png", "-o", tmp_path / f"out{i}", "--model", folder, "--prompt", "a cat",
                     *extra)  # fmt: skip
        assert result.exit_code == code, result.output
        if words:  # the file that needed the prompt fails, naming why
            assert words in result.output
        assert snapshot(elsewhere) == snapshot_before


# ---------------------------------------------------------------- issue 34, item 2: export replaces only its own files


def test_overwrite_replaces_only_what_an_earlier_export_provably_wrote(tiny_onnx, tmp_path):
    """--overwrite trusted any sanasr-onnx.json (even `{}`) and deleted the folder's other files. Now every entry
    must be a regular file the contract records, with the sha256 it records; refused (exit 2, before the model
    loads) otherwise. An untouched copy of an export passes the check."""
    from sanasr_cli.export.onnx_export import check_earlier_export

    check_earlier_export(tiny_onnx)  # what sanasr wrote, as it wrote it
    cases = {
        "empty_contract": (lambda f: ((f / "sanasr-onnx.json").write_text("{}"), (f / "README.md").write_text("mine"))),
        "users_notes": lambda f: (f / "notes.txt").write_text("the user's"),
        "readme_edited": lambda f: (f / "README.md").write_text("my own card"),
        "model_onnx_a_folder": lambda f: (
            (f / "model.onnx").unlink(),
            (f / "model.onnx").mkdir(),
            (f / "model.onnx" / "mine.txt").write_text("the user's"),
        ),  # fmt: skip
        "no_hashes": lambda f: _contract(f, sha256=_DROP),
    }
    words = {
        "empty_contract": "is not a folder written by `sanasr export`",
        "users_notes": "holds files sanasr did not write there (notes.txt)",
        "readme_edited": "README.md changed since sanasr exported it",
        "model_onnx_a_folder": "model.onnx is a folder or a link",
        "no_hashes": "does not record the sha256",
    }
    for case, tamper in cases.items():
        folder = tmp_path / case
        shutil.copytree(tiny_onnx, folder)
        tamper(folder)
        before = snapshot(folder)
        result = run("export", "tiny", "-o", folder, "--overwrite")
        assert result.exit_code == 2, (case, result.output)
        assert words[case] in one_error_line(result), case
        assert snapshot(folder) == before, case


def test_a_folder_made_at_out_during_the_export_is_never_replaced(tmp_path):
    """The check of OUT is made again right before the finished export is moved into place (`replace_dir`'s
    check, which export_onnx and save_model_dir pass): a folder the user made at OUT while the export ran (about
    3 minutes for tiny here) is left as it is, and so is the staging folder's content for another try."""
    from sanasr_cli.errors import UnsafeOutputError
    from sanasr_cli.export.onnx_export import check_export_target
    from sanasr_cli.safe_files import replace_dir

    out, staging = tmp_path / "out", tmp_path / ".out.staging"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"the new export")
    check_export_target(out, overwrite=False)  # at the start: OUT is new
    out.mkdir()  # ... the user makes it while the export runs
    (out / "notes.txt").write_text("the user's")
    for overwrite in (False, True):
        with pytest.raises(UnsafeOutputError):
            replace_dir(staging, out, check=lambda o, ow=overwrite: check_export_target(o, ow))
        assert (out / "notes.txt").read_text() == "the user's" and (staging / "model.onnx").is_file()
    (out / "notes.txt").unlink()  # an empty folder there holds nothing to lose: the export takes its place
    replace_dir(staging, out, check=lambda o: check_export_target(o, False))
    assert (out / "model.onnx").read_bytes() == b"the new export" and not staging.exists()
