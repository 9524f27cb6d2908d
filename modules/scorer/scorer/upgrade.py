"""Upgrade 2018 Windows ML ("ONNX 1.0", opset 1) exports to a graph today's ONNX Runtime loads.

Those exports use experimental ops (`FC`, `ImageScaler`, `com.microsoft.LegacyPadding`) and
opset-1 attributes (`consumed_inputs`, `is_test`, `broadcast`/`axis`) that were later removed.
Each is rewritten into standard opset-13 ops with the same semantics; the tests check every
rewrite against a numpy model of the legacy op.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from . import rewrites

log = logging.getLogger(__name__)

TARGET_OPSET = 13
TARGET_IR_VERSION = 7
FIRST_SUPPORTED_OPSET = 7
# Attributes of opset 1 that later opsets dropped; they carry no meaning at inference time.
OBSOLETE_ATTRIBUTES = {"consumed_inputs", "is_test", "spatial"}


def needs_upgrade(model: onnx.ModelProto) -> bool:
    """True for exports older than the first opset ONNX Runtime supports."""
    default_opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return bool(default_opsets) and min(default_opsets) < FIRST_SUPPORTED_OPSET


class _Rewriter:
    """Walks the graph in order, replacing legacy nodes, with shapes of what came before."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self._counter = 0

    def name(self, base: str) -> str:
        self._counter += 1
        return f"{base}__upgraded_{self._counter}"

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def array(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def shape(self, name: str) -> list[int]:
        """Static shape of a value computed by the nodes rewritten so far."""
        constant = self.array(name)
        if constant is not None:
            return list(constant.shape)
        graph = helper.make_graph(
            self.nodes,
            "probe",
            list(self.model.graph.input),
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)],
            list(self.initializers.values()),
        )
        probe = helper.make_model(
            graph, opset_imports=_target_opsets(self.model), ir_version=TARGET_IR_VERSION
        )
        inferred = shape_inference.infer_shapes(probe, strict_mode=False)
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            if info.name == name and info.type.tensor_type.HasField("shape"):
                dims = [
                    d.dim_value if d.HasField("dim_value") else -1
                    for d in info.type.tensor_type.shape.dim
                ]
                if dims:
                    return dims
        raise ValueError(f"cannot infer the shape of {name!r} to upgrade the legacy graph")


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes so that each comes after its producers; the first exports were not sorted."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            missing = sorted({i for n in pending for i in n.input} - available)
            raise ValueError(f"graph has a cycle or undefined inputs: {missing[:3]}")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        pending = [n for n in pending if n not in ready]
    return ordered


def _target_opsets(model: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    others = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", "com.microsoft")]
    return [helper.make_opsetid("", TARGET_OPSET), *others]


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _image_scaler(node: onnx.NodeProto, rw: _Rewriter) -> list[onnx.NodeProto]:
    """ImageScaler: y = scale * x + bias[c]."""
    attrs = _attributes(node)
    bias = np.asarray(attrs.get("bias", [0.0]), np.float32).reshape(1, -1, 1, 1)
    scale = np.asarray(attrs.get("scale", 1.0), np.float32)
    scaled = rw.name(node.output[0])
    return [
        helper.make_node("Mul", [node.input[0], rw.constant("scale", scale)], [scaled]),
        helper.make_node("Add", [scaled, rw.constant("bias", bias)], list(node.output)),
    ]


def _fully_connected(node: onnx.NodeProto, rw: _Rewriter) -> list[onnx.NodeProto]:
    """FC (Caffe2): y = flatten(x, axis) @ flatten(W, axis_w).T + b."""
    attrs = _attributes(node)
    weights = rw.array(node.input[1])
    if weights is None:
        raise ValueError(f"FC node {node.name!r} has weights that are not constant")
    axis_w = int(attrs.get("axis_w", 1))
    matrix = weights.reshape(math.prod(weights.shape[:axis_w]), -1)
    flat = rw.name(node.input[0])
    inputs = [flat, rw.constant("fc_weights", matrix)]
    if len(node.input) > 2:
        inputs.append(node.input[2])
    return [
        helper.make_node("Flatten", [node.input[0]], [flat], axis=int(attrs.get("axis", 1))),
        helper.make_node("Gemm", inputs, list(node.output), transB=1),
    ]


def legacy_padding_pads(
    spatial: list[int], kernel: list[int], strides: list[int], pads: list[int]
) -> tuple[list[int], list[int]]:
    """Head and tail padding of Caffe's pooling, whose output size rounds up, not down."""
    heads, tails = [], []
    for size, k, s, p in zip(spatial, kernel, strides, pads, strict=True):
        out = math.ceil((size + 2 * p - k) / s) + 1
        if p > 0 and (out - 1) * s >= size + p:
            out -= 1  # the last window must start inside the image or its head padding
        heads.append(p)
        tails.append(max(0, (out - 1) * s + k - size - p))
    return heads, tails


def _legacy_padding(node: onnx.NodeProto, rw: _Rewriter) -> list[onnx.NodeProto]:
    """LegacyPadding: pad so that a following VALID pooling yields Caffe's output size."""
    attrs = _attributes(node)
    shape = rw.shape(node.input[0])
    spatial = shape[2:]
    if any(d < 0 for d in spatial):
        raise ValueError(f"LegacyPadding {node.name!r} needs a fixed input size, got {shape}")
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1] * len(kernel)))
    pads = list(attrs.get("pads", [0] * len(kernel)))[: len(kernel)]
    heads, tails = legacy_padding_pads(spatial, kernel, strides, pads)
    all_pads = np.asarray([0, 0, *heads, 0, 0, *tails], np.int64)
    value = np.asarray(attrs.get("value", 0.0), np.float32)
    return [
        helper.make_node(
            "Pad",
            [node.input[0], rw.constant("pads", all_pads), rw.constant("pad_value", value)],
            list(node.output),
            mode="constant",
        )
    ]


def _broadcast_binary(node: onnx.NodeProto, rw: _Rewriter) -> list[onnx.NodeProto]:
    """Add/Mul with opset-1 `broadcast`+`axis`: align B to A's `axis`, numpy-style."""
    attrs = _attributes(node)
    if not attrs.get("broadcast"):
        return [helper.make_node(node.op_type, list(node.input), list(node.output))]
    second = node.input[1]
    rank_a = len(rw.shape(node.input[0]))
    rank_b = len(rw.shape(second))
    axis = int(attrs.get("axis", rank_a - rank_b))
    trailing = rank_a - axis - rank_b
    if trailing > 0:
        value = rw.array(second)
        if value is not None:
            second = rw.constant(second, value.reshape(value.shape + (1,) * trailing))
        else:
            axes = rw.constant("axes", np.arange(rank_b, rank_b + trailing, dtype=np.int64))
            expanded = rw.name(second)
            rw.nodes.append(helper.make_node("Unsqueeze", [second, axes], [expanded]))
            second = expanded
    return [helper.make_node(node.op_type, [node.input[0], second], list(node.output))]


def _drop_obsolete_attributes(node: onnx.NodeProto, rw: _Rewriter) -> list[onnx.NodeProto]:
    kept = [a for a in node.attribute if a.name not in OBSOLETE_ATTRIBUTES]
    del node.attribute[:]
    node.attribute.extend(kept)
    return [node]


REWRITES: dict[str, Callable[[onnx.NodeProto, _Rewriter], list[onnx.NodeProto]]] = {
    "ImageScaler": _image_scaler,
    "FC": _fully_connected,
    "LegacyPadding": _legacy_padding,
    "Add": _broadcast_binary,
    "Mul": _broadcast_binary,
}


def _sequence_of_maps(output: onnx.ValueInfoProto) -> None:
    """ZipMap returns a sequence of maps; the first exports declared a bare map."""
    if output.type.HasField("map_type"):
        map_type = onnx.TypeProto()
        map_type.CopyFrom(output.type)
        output.type.Clear()
        output.type.sequence_type.elem_type.CopyFrom(map_type)


def upgrade(model: onnx.ModelProto) -> onnx.ModelProto:
    """A standard opset-13 copy of a legacy export; raises `ValueError` when it cannot."""
    rw = _Rewriter(model)
    for node in topological_order(model.graph):
        rewrite = REWRITES.get(node.op_type, _drop_obsolete_attributes)
        rw.nodes.extend(rewrite(node, rw))
    used = {name for node in rw.nodes for name in node.input}
    initializers = [init for name, init in rw.initializers.items() if name in used]
    inputs = [i for i in model.graph.input if i.name not in rw.initializers]
    outputs = []
    for output in model.graph.output:
        fixed = onnx.ValueInfoProto()
        fixed.CopyFrom(output)
        _sequence_of_maps(fixed)
        if fixed.type.tensor_type.elem_type == TensorProto.STRING:
            # ArrayFeatureExtractor returns [N, 1] where the export declared [1].
            fixed.type.tensor_type.shape.ClearField("dim")
            fixed.type.tensor_type.shape.dim.add().dim_param = "N"
            fixed.type.tensor_type.shape.dim.add().dim_value = 1
        outputs.append(fixed)
    graph = helper.make_graph(
        rw.nodes, model.graph.name or "upgraded", inputs, outputs, initializers
    )
    upgraded = helper.make_model(
        graph,
        opset_imports=_target_opsets(model),
        ir_version=TARGET_IR_VERSION,
        producer_name="scorer.upgrade",
        doc_string=f"Upgraded from {model.producer_name} {model.producer_version} (opset 1).",
    )
    upgraded.metadata_props.extend(model.metadata_props)
    return upgraded


def cached_upgrade(source: Path, digest: str, cache_dir: Path) -> rewrites.Derived:
    """The upgraded copy of `source`, converted once per content hash."""
    target = cache_dir / f"upgraded-{digest[:16]}-opset{TARGET_OPSET}.onnx"
    if not target.exists():
        log.info("upgrading legacy opset-1 export %s into %s", source, target)
    return rewrites.cached(target, lambda: upgrade(onnx.load(str(source))))
