#!/usr/bin/env python3
"""Does the GPU really initialise in this image, for this user? Exit 0 only if it does.

scripts/build_base_image runs it inside the built image the way IoT Edge runs the scorer:
as uid 10001 with the manifest's groups and the nvidia runtime. It runs a convolution on
CUDA, and on TensorRT where the image has TensorRT's library, and fails unless each provider
really ran it. A device node this user may not open is named with its group, because that
is the usual reason a non-root module loses the GPU on a Jetson. Needs only what the base
image has (onnxruntime-gpu, onnx, numpy).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DEVICE_NODES = ("/dev/nvmap", "/dev/nvhost-ctrl*", "/dev/nvgpu/igpu0/*", "/dev/nvidia[0-9]*")


def convolution() -> bytes:
    """Conv + Relu on a 1x3x64x64 input: enough for cuDNN and a TensorRT engine."""
    weights = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32) / 27, "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "gpu-check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 62, 62])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def tensorrt_installed() -> bool:
    for name in ("libnvinfer.so.10", "libnvinfer.so.8"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def refused_nodes() -> list[str]:
    """Device nodes this process may not open, each with its owning group id."""
    nodes = sorted(node for pattern in DEVICE_NODES for node in glob.glob(pattern))
    return [
        f"{node} (gid {os.stat(node).st_gid})"
        for node in nodes
        if not os.access(node, os.R_OK | os.W_OK)
    ]


def runs_on(provider: str, model: bytes) -> bool:
    session = ort.InferenceSession(model, providers=[provider, "CPUExecutionProvider"])
    session.run(None, {"x": np.ones((1, 3, 64, 64), np.float32)})
    used = session.get_providers()
    print(f"gpu_check: {provider}: session providers {used}")
    return used[0] == provider


def main() -> int:
    print(
        f"gpu_check: onnxruntime {ort.__version__} as uid {os.getuid()}, "
        f"groups {sorted(os.getgroups())}"
    )
    wanted = [CUDA] + ([TENSORRT] if tensorrt_installed() else [])
    model = convolution()
    failed = [p for p in wanted if p not in ort.get_available_providers() or not runs_on(p, model)]
    if not failed:
        print(f"gpu_check: OK, {' and '.join(wanted)} ran the convolution")
        return 0
    refused = refused_nodes()
    why = (
        "permission denied on " + ", ".join(refused) + ": give the module that group "
        "(GPU_VIDEO_GROUP / GPU_RENDER_GROUP in .env)"
        if refused
        else "see the ONNX Runtime errors above"
    )
    print(f"gpu_check: FAILED, {', '.join(failed)} did not run: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
