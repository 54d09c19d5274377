"""Issue 36: `sanasr export` at real size keeps each stage's weights in ONNX's external data (`<stage>.onnx.data`)
through every step (tracing, folding, quantizing, composing), so no graph has to fit in one 2 GiB protobuf. The size
threshold is lowered here to take that path on the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import make_photo_like, run

pytest.importorskip("onnxruntime", exc_type=ModuleNotFoundError)
pytest.importorskip("onnxscript", exc_type=ModuleNotFoundError)

TORCH_THREADS = 1
STAGES = ("encoder.onnx", "restorer.onnx", "decoder.onnx")


@pytest.fixture(scope="module")
def exports(tiny_bench_backends, tmp_path_factory):
    """The tiny preset exported int8 twice: weights inside the graphs (the int8 export `bench --compare-backends`
    made in tests/conftest.py: tiny's default threshold keeps them inside), and in external data (threshold 0)."""
    from sanasr_cli.export.onnx_export import export_onnx
    from sanasr_cli.models.sanasr import load_model

    external = tmp_path_factory.mktemp("external") / "external"
    export_onnx(load_model("tiny"), external, source="tiny", quantize="int8", external_data_above=0, free_model=True)
    return {"inside": tiny_bench_backends[1] / "ort_int8", "external": external}


def _data_locations(path):
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    m = onnx.load(str(path), load_external_data=False)
    return {
        e.value
        for t in _get_all_tensors(m)
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


def test_every_graph_keeps_its_weights_in_data_files_inside_the_folder(exports):
    folder = exports["external"]
    contract = json.loads((folder / "sanasr-onnx.json").read_text())
    for stage in STAGES:
        assert _data_locations(folder / stage) == {stage + ".data"}  # folded and quantized, still external
        assert (folder / stage).stat().st_size < (folder / (stage + ".data")).stat().st_size
    # model.onnx points at the stages' own data: the weights are stored once
    assert _data_locations(folder / "model.onnx") == {s + ".data" for s in STAGES}
    assert contract["external_data"]["model.onnx"] == sorted(s + ".data" for s in STAGES)
    names = {p.name for p in folder.iterdir()}
    assert names == {*STAGES, *(s + ".data" for s in STAGES), "model.onnx", "prompt.npz", "README.md",
                     "sanasr-onnx.json"}  # fmt: skip
    assert {s + ".data" for s in STAGES} <= set(contract["files"]) and set(contract["sha256"]) == names - {
        "sanasr-onnx.json"
    }
    assert not _data_locations(exports["inside"] / "restorer.onnx")


def test_the_external_export_runs_as_the_inline_one(exports):
    """Through sanasr's host path (the stage graphs) and model.onnx alone, the same int8 graphs with their weights
    elsewhere give the same images."""
    from sanasr_cli.models.onnx_backend import run_model_onnx
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import upscale_tensor

    lq = torch.from_numpy(make_photo_like(10, 14, 3)).permute(2, 0, 1).float() / 255
    a, b = load_model(exports["external"]), load_model(exports["inside"])
    sr_a = upscale_tensor(a, lq, a.prompts.text, tile="none")
    sr_b = upscale_tensor(b, lq, b.prompts.text, tile="none")
    assert float((sr_a - sr_b).abs().max()) <= 1e-6
    whole_a, whole_b = (run_model_onnx(exports[k], lq[None]) for k in ("external", "inside"))
    assert float((whole_a - whole_b).abs().max()) <= 1e-6


def test_an_external_export_is_replaced_by_overwrite_and_upscales_from_the_cli(exports, tmp_path):
    import shutil

    folder = tmp_path / "onnx"
    shutil.copytree(exports["external"], folder)
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(make_photo_like(12, 16, 0)).save(tmp_path / "in" / "a.png")
    r = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", folder)
    assert r.exit_code == 0, r.output
    # every file, .data included, is recorded with its sha256: --overwrite may replace them all
    from sanasr_cli.export.onnx_export import check_earlier_export

    check_earlier_export(folder)
    (folder / "restorer.onnx.data").write_bytes(b"changed")
    with pytest.raises(Exception, match="changed since"):
        check_earlier_export(folder)


def test_running_out_of_memory_in_a_step_is_one_line_naming_it():
    from sanasr_cli.export.onnx_export import ExportMemoryError, export_step

    with pytest.raises(ExportMemoryError, match="while folding constants"):
        with export_step("folding constants"):
            raise RuntimeError("std::bad_alloc")
    with pytest.raises(ExportMemoryError, match="while composing"):
        with export_step("composing model.onnx"):
            raise MemoryError()
    with pytest.raises(ValueError, match="not memory"):  # anything else is not said to be memory
        with export_step("composing model.onnx"):
            raise ValueError("not memory")
