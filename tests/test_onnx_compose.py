"""Issue 24: the pieces of `sanasr export` that need no model, on hand-made ONNX graphs (fast): model.onnx is the
composition head -> encoder -> restorer -> decoder, and --quantize int8 quantizes the restorer's weights."""

import numpy as np
import pytest

# skipped only where the onnx extra is not installed: an installed one that fails to import fails the file
onnx = pytest.importorskip("onnx", exc_type=ModuleNotFoundError)
ort = pytest.importorskip("onnxruntime", exc_type=ModuleNotFoundError)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _save(folder, name, nodes, inputs, outputs, initializers=()):
    def info(n):
        return helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 3] if "prompt" in n else ["b", 4])

    graph = helper.make_graph(nodes, name, [info(n) for n in inputs], [info(n) for n in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(folder / name))


def _const(name, values, dtype=TensorProto.FLOAT, dims=()):
    return helper.make_tensor(name, dtype, list(dims), list(values))


def test_model_onnx_is_the_stages_composed(tmp_path):
    from sanasr_cli.export.contract import STAGE_FILES
    from sanasr_cli.export.onnx_export import compose_model

    node = helper.make_node
    head = [
        node("Mul", ["lq", "two"], ["image"]),
        node("Shape", ["lq"], ["batch"], end=1),
        node("Concat", ["batch", "three"], ["shape"], axis=0),
        node("Expand", ["embeds", "shape"], ["prompt_embeds"]),
        node("Identity", ["prompt_embeds"], ["prompt_mask"]),
    ]
    consts = [
        _const("two", [2.0]),
        _const("embeds", [1.0, 2.0, 3.0], dims=(1, 3)),
        _const("three", [3], TensorProto.INT64, (1,)),
    ]
    _save(tmp_path, "head.onnx", head, ["lq"], ["image", "prompt_embeds", "prompt_mask"], consts)
    _save(
        tmp_path,
        "encoder.onnx",
        [node("Add", ["image", "one"], ["latent"])],
        ["image"],
        ["latent"],
        [_const("one", [1.0])],
    )
    restorer = [
        node("ReduceSum", ["prompt_embeds"], ["e"], keepdims=1),
        node("Add", ["latent", "e"], ["t"]),
        node("ReduceSum", ["prompt_mask"], ["m"], keepdims=1),
        node("Sub", ["t", "m"], ["restored_latent"]),
    ]
    _save(tmp_path, "restorer.onnx", restorer, ["latent", "prompt_embeds", "prompt_mask"], ["restored_latent"])
    _save(
        tmp_path,
        "decoder.onnx",
        [node("Mul", ["restored_latent", "one"], ["sr"])],
        ["restored_latent"],
        ["sr"],
        [_const("one", [3.0])],
    )
    compose_model(tmp_path, STAGE_FILES)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["lq"] and [o.name for o in session.get_outputs()] == ["sr"]
    lq = np.arange(8, dtype=np.float32).reshape(2, 4)
    # decoder(restorer(encoder(head))): 3 * ((2 lq + 1) + sum(embeds over the batch) - sum(mask over the batch))
    assert np.allclose(session.run(None, {"lq": lq})[0], 3 * (2 * lq + 1))


def test_int8_quantizes_weights_the_exporter_feeds_through_a_transpose(tmp_path):
    """torch's exporter (optimize=False) writes a Linear as MatMul(x, Transpose(W)): the export folds the Transpose
    first, so int8 quantizes the weight (MatMulInteger), and the result stays close to fp32."""
    from sanasr_cli.export.onnx_export import fold_constants, quantize_int8

    weight = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32) * 10
    linear = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["latent", "wt"], ["restored_latent"]),
    ]
    _save(tmp_path, "restorer.onnx", linear, ["latent"], ["restored_latent"], [numpy_helper.from_array(weight, "w")])
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "restorer.onnx")).run(None, {"latent": x})[0]
    assert np.allclose(ref, x @ weight.T, atol=1e-4)
    fold_constants(tmp_path, ["restorer.onnx"])
    record = quantize_int8(tmp_path, {"restorer": "restorer.onnx"})
    assert "int8" in record["restorer"] and sorted(p.name for p in tmp_path.iterdir()) == ["restorer.onnx"]
    graph = onnx.load(str(tmp_path / "restorer.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMulInteger" in ops and not {"MatMul", "Transpose"} & ops
    assert all(i.data_type != TensorProto.FLOAT for i in graph.initializer if len(i.dims) == 2)  # no fp32 copy left
    out = ort.InferenceSession(str(tmp_path / "restorer.onnx")).run(None, {"latent": x})[0]
    assert 0 < np.abs(out - ref).max() < 0.05 * np.abs(ref).max()  # quantised: close, not equal
