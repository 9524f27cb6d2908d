"""Provider choice: what really initialises, what the operator insisted on, quiet native logs."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from scorer import providers
from scorer.model import inspect_export
from scorer.session import open_session

from tests.conftest import cuda_works

CUDA_WORKS = cuda_works()


@pytest.mark.skipif(CUDA_WORKS, reason="CUDA initialises here, so its probe cannot fail")
def test_a_failing_probe_says_why_without_touching_this_process_output(
    capfd: pytest.CaptureFixture[str],
) -> None:
    capfd.readouterr()
    works, why = providers.provider_works("CUDAExecutionProvider")
    assert not works and why and "\x1b" not in why
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the probe's native errors stayed in the child


def test_other_threads_output_is_never_swallowed_while_probing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Probing used to redirect fds 1 and 2: lines other threads wrote meanwhile were lost."""
    capfd.readouterr()
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            os.write(2, b"other thread\n")
            stop.wait(0.01)

    writer = threading.Thread(target=chatter)
    writer.start()
    providers.provider_works("CUDAExecutionProvider")
    stop.set()
    writer.join()
    _, err = capfd.readouterr()
    assert err.count("other thread") >= 5 and set(err.split("\n")) <= {"other thread", ""}


def test_auto_always_ends_with_cpu_and_only_keeps_gpu_providers_that_work() -> None:
    chosen, fallbacks = providers.resolve(("auto",))
    names = [c if isinstance(c, str) else c[0] for c in chosen]
    assert names[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in names) == CUDA_WORKS
    installed = set(ort.get_available_providers())
    assert {f.provider for f in fallbacks} == (set(providers.GPU_PREFERENCE) & installed) - set(
        names
    )


def test_a_machine_without_gpu_nodes_is_no_gpu_not_a_fault() -> None:
    fallback = providers.classify_failure("CUDAExecutionProvider", "libcuda.so.1 missing", [])
    assert fallback.reason is providers.FallbackReason.NO_GPU
    assert "libcuda.so.1 missing" in fallback.detail


def test_a_device_node_this_user_cannot_open_is_named_with_its_group(tmp_path: Path) -> None:
    """Like /dev/nvmap (root:video, 0660) seen by the module's uid 10001 outside `video`."""
    node = tmp_path / "nvmap"
    node.write_bytes(b"")
    refused = str(node)
    fallback = providers.classify_failure(
        "CUDAExecutionProvider", "cuInit failed", [refused], accessible=lambda n: n != refused
    )
    assert fallback.reason is providers.FallbackReason.PERMISSION_DENIED
    gid = node.stat().st_gid
    assert f"permission denied on {node} (group " in fallback.detail
    assert f"gid {gid}" in fallback.detail and "GroupAdd" in fallback.detail


def test_the_real_access_check_refuses_a_node_without_permissions(tmp_path: Path) -> None:
    node = tmp_path / "nvmap"
    node.write_bytes(b"")
    node.chmod(0o000)
    assert providers.can_open(str(node)) == (os.getuid() == 0)


def test_a_gpu_that_fails_for_another_reason_says_why(tmp_path: Path) -> None:
    node = tmp_path / "nvidia0"
    node.write_bytes(b"")
    fallback = providers.classify_failure("CUDAExecutionProvider", "driver too old", [str(node)])
    assert fallback.reason is providers.FallbackReason.INIT_FAILED
    assert fallback.detail == "driver too old"


@pytest.mark.skipif(CUDA_WORKS, reason="CUDA works here, so insisting on it cannot fail")
def test_insisting_on_a_provider_that_does_not_initialise_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider was requested but"):
        providers.resolve(("CUDAExecutionProvider", "CPUExecutionProvider"))


def test_a_provider_missing_from_the_build_is_reported_as_such() -> None:
    works, why = providers.provider_works("NoSuchExecutionProvider")
    assert not works and "not in this onnxruntime build" in why


def test_tensorrt_engine_cache_goes_where_configured(tmp_path: Path) -> None:
    options = providers.tensorrt_options(False, tmp_path)
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_fp16_enable"] is False


def test_auto_on_this_machine_loads_a_session_quietly(
    demo_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """With onnxruntime-gpu on a CPU-only machine nothing native reaches the terminal."""
    capfd.readouterr()  # drop what fixtures printed
    chosen, _ = providers.resolve(("auto",))
    model = open_session(inspect_export(demo_dir / "models" / "colors"), chosen)
    model.warm_up()
    out, err = capfd.readouterr()
    assert "onnxruntime" not in out + err and "EP Error" not in out + err
    assert model.providers[-1] == "CPUExecutionProvider"


def test_onnx_runtimes_warnings_reach_the_terminal_at_debug_only(
    demo_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An initializer no node uses: ONNX Runtime warns that it removes it."""
    folder = tmp_path / "colors"
    shutil.copytree(demo_dir / "models" / "colors", folder)
    graph = onnx.load(folder / "model.onnx")
    graph.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    onnx.save(graph, folder / "model.onnx")
    spec = inspect_export(folder)
    capfd.readouterr()
    open_session(spec, [providers.CPU], log_level=logging.DEBUG)
    assert "Removing initializer 'unused'" in capfd.readouterr().err
    open_session(spec, [providers.CPU])  # INFO, as the scorer runs by default
    out, err = capfd.readouterr()
    assert "onnxruntime" not in out + err


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_WORKS, reason="needs a CUDA GPU with onnxruntime-gpu")
def test_auto_runs_on_cuda_when_there_is_a_gpu(demo_dir: Path) -> None:
    chosen, _ = providers.resolve(("auto",))
    model = open_session(inspect_export(demo_dir / "models" / "colors"), chosen)
    assert model.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert "CUDAExecutionProvider" in ort.get_available_providers()
