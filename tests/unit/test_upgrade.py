"""Each legacy Windows ML op, rewritten by `upgrade`, against a numpy model of its semantics."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from scorer import upgrade

RNG = np.random.default_rng(7)


def _legacy_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int]],
    output: str,
    initializers: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """An opset-1 model as WinMLTools wrote them: initializers also listed as inputs."""
    initializers = initializers or {}
    graph_inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()
    ]
    graph_inputs += [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape))
        for n, v in initializers.items()
    ]
    graph = helper.make_graph(
        nodes,
        "legacy",
        graph_inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in initializers.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 1), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 3
    return model


def _run_upgraded(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    assert upgrade.needs_upgrade(model)
    upgraded = upgrade.upgrade(model)
    session = ort.InferenceSession(upgraded.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_image_scaler_scales_then_adds_per_channel_bias() -> None:
    x = RNG.uniform(0, 255, (2, 3, 5, 4)).astype(np.float32)
    bias = [-104.0, 12.5, 3.0]
    node = helper.make_node("ImageScaler", ["x"], ["y"], scale=0.5, bias=bias)
    got = _run_upgraded(_legacy_model([node], {"x": [2, 3, 5, 4]}, "y"), {"x": x})
    expected = x * 0.5 + np.asarray(bias, np.float32)[None, :, None, None]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_fc_is_flatten_then_matmul_with_transposed_weights_plus_bias() -> None:
    x = RNG.normal(size=(2, 8, 1, 1)).astype(np.float32)
    weights = RNG.normal(size=(3, 8)).astype(np.float32)
    bias = RNG.normal(size=(3,)).astype(np.float32)
    node = helper.make_node("FC", ["x", "W", "b"], ["y"], axis=1, axis_w=1)
    model = _legacy_model([node], {"x": [2, 8, 1, 1]}, "y", {"W": weights, "b": bias})
    got = _run_upgraded(model, {"x": x})
    np.testing.assert_allclose(got, x.reshape(2, 8) @ weights.T + bias, rtol=1e-5, atol=1e-6)


def _caffe_max_pool_reference(x: np.ndarray, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Caffe's MAX pooling: output size rounded up, windows clipped to the padded image."""
    _, _, height, width = x.shape
    out_h = -(-(height + 2 * pad - kernel) // stride) + 1
    out_w = -(-(width + 2 * pad - kernel) // stride) + 1
    if pad and (out_h - 1) * stride >= height + pad:
        out_h -= 1
    if pad and (out_w - 1) * stride >= width + pad:
        out_w -= 1
    out = np.empty((*x.shape[:2], out_h, out_w), np.float32)
    for i in range(out_h):
        for j in range(out_w):
            top, left = max(i * stride - pad, 0), max(j * stride - pad, 0)
            bottom = min(i * stride - pad + kernel, height)
            right = min(j * stride - pad + kernel, width)
            out[:, :, i, j] = x[:, :, top:bottom, left:right].max(axis=(2, 3))
    return out


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad"),
    [(113, 3, 2, 0), (56, 3, 2, 0), (28, 3, 2, 0), (10, 3, 2, 1), (7, 2, 2, 0), (9, 3, 3, 0)],
)
def test_legacy_padding_then_valid_pool_matches_caffe_ceil_pooling(
    size: int, kernel: int, stride: int, pad: int
) -> None:
    x = RNG.normal(size=(1, 2, size, size + 1)).astype(np.float32)
    nodes = [
        helper.make_node(
            "LegacyPadding",
            ["x"],
            ["padded"],
            domain="com.microsoft",
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad, pad],
            value=-3.4028234663852886e38,
        ),
        helper.make_node(
            "MaxPool",
            ["padded"],
            ["y"],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            auto_pad="VALID",
        ),
    ]
    got = _run_upgraded(_legacy_model(nodes, {"x": [1, 2, size, size + 1]}, "y"), {"x": x})
    np.testing.assert_array_equal(got, _caffe_max_pool_reference(x, kernel, stride, pad))


def test_legacy_padding_sizes_of_squeezenet() -> None:
    # 56 -> 3x3/2 pooling: Caffe gives 28 outputs (floor would give 27), so one extra row.
    assert upgrade.legacy_padding_pads([56, 113], [3, 3], [2, 2], [0, 0]) == ([0, 0], [1, 0])


def test_opset1_batch_normalization_drops_obsolete_attributes() -> None:
    x = RNG.normal(size=(1, 3, 4, 4)).astype(np.float32)
    scale, bias = RNG.uniform(0.5, 2, 3), RNG.normal(size=3)
    mean, var = RNG.normal(size=3), RNG.uniform(0.5, 2, 3)
    node = helper.make_node(
        "BatchNormalization",
        ["x", "s", "b", "m", "v"],
        ["y"],
        epsilon=1e-5,
        is_test=1,
        spatial=1,
        momentum=0.9,
        consumed_inputs=[0, 0, 0, 1, 1],
    )
    model = _legacy_model(
        [node], {"x": [1, 3, 4, 4]}, "y", {"s": scale, "b": bias, "m": mean, "v": var}
    )
    got = _run_upgraded(model, {"x": x})
    c = (slice(None), None, None)
    expected = (x - mean[c]) / np.sqrt(var[c] + 1e-5) * scale[c] + bias[c]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_opset1_broadcast_along_axis_aligns_b_to_that_axis(op: str) -> None:
    x = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    b = RNG.normal(size=(3,)).astype(np.float32)
    node = helper.make_node(op, ["x", "b"], ["y"], broadcast=1, axis=1)
    got = _run_upgraded(_legacy_model([node], {"x": [2, 3, 4, 5]}, "y", {"b": b}), {"x": x})
    aligned = b[None, :, None, None]
    np.testing.assert_allclose(got, x + aligned if op == "Add" else x * aligned, rtol=1e-6)


def test_unsorted_graph_is_put_in_topological_order() -> None:
    nodes = [
        helper.make_node("Relu", ["mid"], ["y"]),
        helper.make_node("Neg", ["x"], ["mid"]),
    ]
    x = RNG.normal(size=(1, 3, 2, 2)).astype(np.float32)
    got = _run_upgraded(_legacy_model(nodes, {"x": [1, 3, 2, 2]}, "y"), {"x": x})
    np.testing.assert_array_equal(got, np.maximum(-x, 0))


def test_current_exports_are_not_upgraded() -> None:
    graph = helper.make_graph([], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    assert not upgrade.needs_upgrade(model)
