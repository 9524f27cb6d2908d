"""Copies of an export's graph that the scorer serves instead of the file itself, written once
into the cache under a name that carries the source's content hash."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import onnx

from .atomic import write_atomically

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Derived:
    """A graph derived from an export: in the cache, or, when the cache could not take it
    (a full or read-only volume), only in memory, so the scorer serves all the same."""

    path: Path  # where it is cached, or would have been
    graph: bytes | None = None  # the serialized graph, when it is not in the cache


def cached(target: Path, make: Callable[[], onnx.ModelProto]) -> Derived:
    """`target`, written from `make()` unless it exists; atomic, so a crash never leaves
    half a model behind for the next start to trust. A cache that cannot take it (full,
    read-only) keeps nothing of a failed write, and the graph is served from memory; a
    later start writes it once there is room."""
    if target.exists():
        return Derived(target)
    graph = make().SerializeToString()
    try:
        write_atomically(target, graph)
    except OSError as error:
        log.warning(
            "cannot write %s (%s): serving that graph from memory (%.1f MB) until a start"
            " finds room in the cache",
            target,
            error.strerror or error,
            len(graph) / 1e6,
        )
        return Derived(target, graph)
    return Derived(target)


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
