"""Copies of an export's graph that the scorer serves instead of the file itself, written once
into the cache under a name that carries the source's content hash."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

log = logging.getLogger(__name__)


def cached(target: Path, make: Callable[[], onnx.ModelProto]) -> Path:
    """`target`, written from `make()` unless it exists; atomic, so a crash never leaves
    half a model behind for the next start to trust."""
    if target.exists():
        return target
    model = make()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as handle:
        handle.write(model.SerializeToString())
    os.replace(handle.name, target)
    return target


def free_image_dims(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    """The graph with the image input's height and width (and its 4-D outputs' grid sides)
    symbolic, as the script in Custom Vision's YOLO exports does, so one session runs images
    of any aspect: a YOLO head is fully convolutional; the declared 416x416 is only where
    the export was traced."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        if value.name == input_name:
            _symbolic(value, ("height", "width"))
    for value in copy.graph.output:
        if len(value.type.tensor_type.shape.dim) == 4:
            _symbolic(value, ("grid_height", "grid_width"))
    del copy.graph.value_info[:]  # intermediate shapes traced at the fixed size
    return copy


def _symbolic(value: onnx.ValueInfoProto, names: tuple[str, str]) -> None:
    dims = value.type.tensor_type.shape.dim
    for dim, name in zip((dims[2], dims[3]), names, strict=True):
        dim.Clear()
        dim.dim_param = name
