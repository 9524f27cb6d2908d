"""What a session prepares before it serves, on real ONNX Runtime sessions (CPU here; the
GPU runs of the same paths are marked `gpu`): IO binding per thread, warm-up of every size."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from scorer import imaging, providers
from scorer.model import ModelOptions, inspect_export
from scorer.session import LoadedModel, Preparation, open_session
from scorer.settings import Settings
from scorer.vocabulary import CudnnSearch, Switch, YoloResize
from scorer.worker_app import model_options, provider_options, session_opener

from tests.conftest import cuda_works
from tests.unit.test_model import _save, yolo_model, zipmap_model

CPU_ONLY = ["CPUExecutionProvider"]
BIND = Preparation(io_binding=Switch.ON)


class RecordedSession:
    """A real session that also notes the input shape of every run."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.shapes: list[tuple[int, ...]] = []

    def run(self, names: Sequence[str], feeds: dict[str, np.ndarray]) -> Any:
        self.shapes.extend(tuple(array.shape) for array in feeds.values())
        return self.session.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def photos(count: int, size: tuple[int, int] = (300, 200)) -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        for _ in range(count)
    ]


@pytest.mark.parametrize("model", ["squares", "colors-fp16"])  # three outputs; FP16 input
def test_io_binding_gives_the_same_outputs_as_a_plain_run(demo_dir: Path, model: str) -> None:
    spec = inspect_export(demo_dir / "models" / model)
    bound = open_session(spec, CPU_ONLY, preparation=BIND)
    unbound = open_session(spec, CPU_ONLY)
    assert bound.bound is not None and bound.bound.device == "cpu" and unbound.bound is None
    for picture in photos(3, (320, 320)):
        tensor = imaging.to_tensor(picture, spec.preprocessing)
        for ours, plain in zip(bound.run(tensor), unbound.run(tensor), strict=True):
            assert np.array_equal(ours, plain)


def test_io_binding_never_writes_into_a_callers_tensor(demo_dir: Path) -> None:
    """A CPU buffer made from the first request's array would be that array: the next
    request's pixels were copied into it."""
    spec = inspect_export(demo_dir / "models" / "colors")
    model = open_session(spec, CPU_ONLY, preparation=BIND)
    first, second = (imaging.to_tensor(p, spec.preprocessing) for p in photos(2, (224, 224)))
    kept = first.copy()
    model.run(first)
    model.run(second)
    assert np.array_equal(first, kept)


def test_io_binding_of_a_zipmap_export_decodes_the_same_probabilities(tmp_path: Path) -> None:
    spec = inspect_export(_save(tmp_path / "m", zipmap_model(["a", "b", "c"]), ["a", "b", "c"]))
    bound = open_session(spec, CPU_ONLY, preparation=BIND)
    assert bound.bound is not None
    tensor = imaging.to_tensor(photos(1)[0], spec.preprocessing)
    plain = open_session(spec, CPU_ONLY)
    assert bound.decode(bound.run(tensor)) == plain.decode(plain.run(tensor))


def runs_keep_their_answers(folder: Path, chosen: list[Any], threads_at_once: int) -> LoadedModel:
    """Runs one bound session from `threads_at_once` threads at once, each on its own
    picture, and checks every answer against an unbound CPU session's."""
    spec = inspect_export(folder)
    model = open_session(spec, chosen, preparation=BIND)
    tensors = [
        imaging.to_tensor(picture, spec.preprocessing)
        for picture in photos(threads_at_once, (224, 224))
    ]
    unbound = open_session(spec, CPU_ONLY)
    expected = [unbound.run(tensor)[0] for tensor in tensors]
    wrong: list[int] = []
    start = threading.Barrier(len(tensors))

    def runs(index: int) -> None:
        start.wait()
        for _ in range(60):
            if not np.allclose(model.run(tensors[index])[0], expected[index], rtol=1e-3, atol=1e-4):
                wrong.append(index)

    threads = [threading.Thread(target=runs, args=(i,)) for i in range(len(tensors))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert model.bound is not None and 1 <= model.bound.made <= len(tensors)
    return model


def test_concurrent_runs_never_share_a_buffer_so_they_keep_their_answers(
    demo_dir: Path,
) -> None:
    """One buffer shared by concurrent runs would let a run score another's picture."""
    runs_keep_their_answers(demo_dir / "models" / "colors", CPU_ONLY, 8)


def test_threads_taking_turns_share_one_binding(demo_dir: Path) -> None:
    """Buffers on the device are as many as runs at once, not one per serving thread."""
    spec = inspect_export(demo_dir / "models" / "colors")
    model = open_session(spec, CPU_ONLY, preparation=BIND)
    tensor = imaging.to_tensor(photos(1, (224, 224))[0], spec.preprocessing)
    for _ in range(20):
        thread = threading.Thread(target=model.run, args=(tensor,))
        thread.start()
        thread.join()
    assert model.bound is not None and model.bound.made == 1


def test_auto_leaves_a_cpu_session_unbound_and_warms_one_size(demo_dir: Path) -> None:
    spec = inspect_export(demo_dir / "models" / "squares-yolo")
    model = open_session(spec, CPU_ONLY)
    assert model.bound is None
    assert model.warm_sizes == ((512, 512),)


def test_an_input_of_several_sizes_is_never_bound(demo_dir: Path) -> None:
    spec = inspect_export(demo_dir / "models" / "squares-yolo")
    assert open_session(spec, CPU_ONLY, preparation=BIND).bound is None


def test_warm_up_runs_every_size_and_a_size_beyond_them_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = inspect_export(_save(tmp_path / "m", yolo_model(["x", "y"]), ["x", "y"]))
    preparation = Preparation(warm_every_size=Switch.ON, max_aspect=1.8)
    session = RecordedSession(open_session(spec, CPU_ONLY).session)
    model = LoadedModel(spec, session, preparation)  # type: ignore[arg-type]
    model.warm_up()
    assert len(model.warm_sizes) > 10
    assert session.shapes == [(1, 3, height, width) for width, height in model.warm_sizes]
    with caplog.at_level(logging.INFO, logger="scorer.session"):
        for picture in [*photos(2, (1920, 1080)), *photos(2, (3000, 1000))]:
            model.run(imaging.to_tensor(picture, spec.preprocessing))
    notes = [r.getMessage() for r in caplog.records if "was not warmed up" in r.getMessage()]
    assert notes == [
        "input size 896x288 was not warmed up (an image more elongated than"
        " SCORER_YOLO_MAX_ASPECT): its first run pays for it"
    ]


def test_the_settings_reach_the_session(demo_dir: Path, tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "SCORER_IO_BINDING": "on",
            "SCORER_WARM_EVERY_SIZE": "on",
            "SCORER_YOLO_MAX_ASPECT": "1.5",
            "SCORER_CACHE_DIR": str(tmp_path),
        }
    )
    open_model = session_opener(settings, CPU_ONLY)
    assert open_model(inspect_export(demo_dir / "models" / "colors")).bound is not None
    yolo = open_model(inspect_export(demo_dir / "models" / "squares-yolo"))
    assert yolo.bound is None and len(yolo.warm_sizes) > 1
    assert max(max(w / h, h / w) for w, h in yolo.warm_sizes) < 1.5 + 0.25  # 32-pixel steps


def test_gpu_provider_options_for_a_yolo_export_on_tensorrt(demo_dir: Path, tmp_path: Path) -> None:
    """TensorRT gets one engine for every size (a profile); on it, elongated images are
    sized to stay inside that profile. CUDA's search and arena follow the settings."""
    settings = Settings.from_env(
        {
            "SCORER_YOLO_RESIZE": "export",
            "SCORER_CUDNN_CONV_ALGO_SEARCH": "HEURISTIC",
            "SCORER_GPU_MEM_LIMIT_MB": "1536",
            "SCORER_CACHE_DIR": str(tmp_path),  # engines go there on a machine with a GPU
        }
    )
    options = model_options(settings, tensorrt=True)
    assert options.yolo_resize is YoloResize.EXPORT and options.yolo_max_aspect == 2.5
    spec = inspect_export(demo_dir / "models" / "squares-yolo", options, tmp_path)
    gpu = [providers.TENSORRT, providers.CUDA, providers.CPU]
    chosen = provider_options(settings, spec, ort.__version__, gpu)
    trt = chosen[providers.TENSORRT]
    assert trt["trt_profile_opt_shapes"] == f"{spec.input_name}:1x3x512x512"
    assert trt["trt_profile_min_shapes"] == f"{spec.input_name}:1x3x320x320"
    assert trt["trt_profile_max_shapes"] == f"{spec.input_name}:1x3x800x800"
    panorama = imaging.to_tensor(Image.new("RGB", (6000, 1000)), spec.preprocessing)
    assert panorama.shape == (1, 3, 320, 800)
    assert chosen[providers.CUDA] == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": 1536 * 1024 * 1024,
    }
    fixed = inspect_export(demo_dir / "models" / "colors", ModelOptions(), tmp_path)
    fixed_trt = provider_options(settings, fixed, ort.__version__, gpu)[providers.TENSORRT]
    assert not any(key.startswith("trt_profile") for key in fixed_trt)
    # no TensorRT chosen: no TensorRT options (nor an engine folder on a GPU machine)
    assert provider_options(settings, spec, ort.__version__, [providers.CUDA]).keys() == {
        providers.CUDA
    }


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_works(), reason="needs a CUDA GPU with onnxruntime-gpu")
def test_cuda_io_binding_keeps_its_buffer_on_the_gpu_and_answers_as_the_cpu(
    demo_dir: Path,
) -> None:
    spec = inspect_export(demo_dir / "models" / "colors")
    cuda = [(providers.CUDA, providers.cuda_options(CudnnSearch.EXHAUSTIVE, 0))]
    model = open_session(spec, cuda, preparation=Preparation(io_binding=Switch.AUTO))
    assert model.providers[0] == providers.CUDA and model.bound is not None
    assert model.bound.device == "cuda"
    on_cpu = open_session(spec, CPU_ONLY)
    for picture in photos(3, (224, 224)):
        tensor = imaging.to_tensor(picture, spec.preprocessing)
        np.testing.assert_allclose(
            model.run(tensor)[0], on_cpu.run(tensor)[0], rtol=1e-3, atol=1e-4
        )


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_works(), reason="needs a CUDA GPU with onnxruntime-gpu")
def test_sixteen_threads_on_cuda_buffers_keep_their_answers(demo_dir: Path) -> None:
    """`update_inplace` into device buffers from as many threads as a worker serves with."""
    cuda = [(providers.CUDA, providers.cuda_options(CudnnSearch.EXHAUSTIVE, 0))]
    model = runs_keep_their_answers(demo_dir / "models" / "squares", cuda, 16)
    assert model.providers[0] == providers.CUDA
    assert model.bound is not None and model.bound.device == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_works(), reason="needs a CUDA GPU with onnxruntime-gpu")
def test_cuda_warms_every_yolo_size_before_it_serves(demo_dir: Path, tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"SCORER_YOLO_RESIZE": "export", "SCORER_CACHE_DIR": str(tmp_path)}
    )
    spec = inspect_export(demo_dir / "models" / "squares-yolo", model_options(settings, False))
    model = session_opener(settings, [providers.CUDA, "CPUExecutionProvider"])(spec)
    assert model.providers[0] == providers.CUDA
    model.warm_up()
    assert len(model.warm_sizes) == 31


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_works(), reason="needs a CUDA GPU with onnxruntime-gpu")
def test_tensorrt_serves_every_yolo_size_from_one_profile(demo_dir: Path, tmp_path: Path) -> None:
    works, why = providers.provider_works(providers.TENSORRT)
    if not works:
        pytest.skip(f"TensorRT does not initialise here: {why}")
    settings = Settings.from_env(
        {"SCORER_YOLO_RESIZE": "export", "SCORER_CACHE_DIR": str(tmp_path)}
    )
    spec = inspect_export(demo_dir / "models" / "squares-yolo", model_options(settings, True))
    model = session_opener(settings, [providers.TENSORRT, providers.CUDA, "CPUExecutionProvider"])(
        spec
    )
    assert model.providers[0] == providers.TENSORRT
    model.warm_up()
    assert len(model.warm_sizes) > 10
    for picture in [Image.new("RGB", (6000, 1000)), Image.new("RGB", (1000, 6000))]:
        grid = model.run(imaging.to_tensor(picture, spec.preprocessing))[0]
        assert grid.ndim == 4


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_works(), reason="needs a CUDA GPU with onnxruntime-gpu")
def test_a_truncated_tensorrt_engine_is_built_again_instead_of_failing_every_start(
    demo_dir: Path, tmp_path: Path
) -> None:
    """A power cut or a full volume while ONNX Runtime writes an engine leaves it truncated."""
    works, why = providers.provider_works(providers.TENSORRT)
    if not works:
        pytest.skip(f"TensorRT does not initialise here: {why}")
    settings = Settings.from_env({"SCORER_CACHE_DIR": str(tmp_path)})
    spec = inspect_export(demo_dir / "models" / "colors", model_options(settings, True))
    opener = session_opener(settings, [providers.TENSORRT, "CPUExecutionProvider"])
    first = opener(spec)
    assert first.providers[0] == providers.TENSORRT
    engines = list((tmp_path / "tensorrt").glob("*/*.engine"))
    assert engines, "TensorRT kept no engine"
    for engine in engines:
        engine.write_bytes(engine.read_bytes()[:64])
    again = opener(spec)
    assert again.providers[0] == providers.TENSORRT
    assert all(engine.stat().st_size > 64 for engine in engines)
