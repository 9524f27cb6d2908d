"""Settings: defaults, validation with one clear line, and `.env.example` documenting them all."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from scorer.settings import Settings, SettingsError
from scorer.vocabulary import CudnnSearch, NmsScope, PixelFormat, Switch

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_defaults_serve_http_8080_and_grpc_50051_with_auto_providers() -> None:
    settings = Settings.from_env({})
    assert (settings.http_port, settings.grpc_port) == (8080, 50051)
    assert settings.providers == ("auto",)
    assert settings.url_enabled is False


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "SCORER_HTTP_PORT": "0",
            "SCORER_PROVIDERS": "cuda, cpu",
            "SCORER_JPEG_DRAFT": "false",
            "SCORER_MODEL_DIR": "/models/x",
            "SCORER_URL_ENABLED": "yes",
            "SCORER_URL_ALLOWED_HOSTS": "Cams.Local, 10.0.0.5",
            # closed vocabularies, into their enums
            "SCORER_PIXEL_FORMAT": "Bgr8",
            "SCORER_PIXEL_RANGE": "auto",
            "SCORER_IO_BINDING": "on",
            "SCORER_YOLO_NMS": "global",
            "SCORER_CUDNN_CONV_ALGO_SEARCH": "HEURISTIC",
        }
    )
    assert settings.http_port == 0
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.jpeg_draft is False
    assert settings.model_dir == Path("/models/x")
    assert settings.url_allowed_hosts == ("cams.local", "10.0.0.5")
    assert settings.pixel_format is PixelFormat.BGR8
    assert settings.pixel_range is None  # auto: as the export says
    assert settings.io_binding is Switch.ON
    assert settings.yolo_nms is NmsScope.GLOBAL
    assert settings.cudnn_conv_algo_search is CudnnSearch.HEURISTIC
    assert Settings.from_env({}).pixel_range is Settings().pixel_range is None


def test_empty_value_means_default() -> None:
    assert Settings.from_env({"SCORER_THREADS": ""}).threads == Settings().threads


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SCORER_HTTP_PORT", "80a", "SCORER_HTTP_PORT='80a'"),
        ("SCORER_HTTP_PORT", "70000", "port number"),
        ("SCORER_THREADS", "0", "above 0"),
        ("SCORER_DEFAULT_THRESHOLD", "1.5", "from 0 to 1"),
        ("SCORER_PROVIDERS", "gpu", "auto"),
        ("SCORER_JPEG_DRAFT", "maybe", "true or false"),
        ("SCORER_YOLO_NMS", "everywhere", "per_class"),
        ("SCORER_LOG_LEVEL", "LOUD", "DEBUG"),
        ("SCORER_YOLO_MAX_ASPECT", "0.5", "from 1 to 16"),
        ("SCORER_YOLO_MAX_ASPECT", "17", "from 1 to 16"),
        ("SCORER_CUDNN_CONV_ALGO_SEARCH", "fast", "EXHAUSTIVE"),
        ("SCORER_GPU_MEM_LIMIT_MB", "-1", "0 or more"),
        ("SCORER_IO_BINDING", "yes", "expected one of auto, on, off"),
        ("SCORER_PIXEL_FORMAT", "bgr8", "expected one of auto, Rgb8, Bgr8"),
        ("SCORER_YOLO_RESIZE", "auto,export", "expected one of auto, export, stretch"),
        ("SCORER_TLS", "files", "expected one of auto, edge"),
        ("SCORER_MAX_CONNECTIONS", "0", "above 0"),
        ("SCORER_IDLE_CONNECTION_S", "1.5", "SCORER_IDLE_CONNECTION_S"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value)


def test_unknown_scorer_variable_is_refused() -> None:
    with pytest.raises(SettingsError, match="SCORER_THREAD is not a scorer setting"):
        Settings.from_env({"SCORER_THREAD": "4"})


def test_url_fetching_needs_an_allow_list() -> None:
    with pytest.raises(SettingsError, match="SCORER_URL_ALLOWED_HOSTS"):
        Settings.from_env({"SCORER_URL_ENABLED": "true"})


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#?\s*(SCORER_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert {name for name, _, _ in Settings.documented()} <= documented


def test_iot_edge_is_recognised_only_by_its_complete_module_environment() -> None:
    from scorer.settings import EDGE_VARIABLES, run_by_iot_edge

    complete = {name: "x" for name in EDGE_VARIABLES}
    assert run_by_iot_edge(complete)
    assert not run_by_iot_edge({**complete, "IOTEDGE_WORKLOADURI": ""})
    assert not run_by_iot_edge({})


def test_outside_iot_edge_the_azure_sdk_is_never_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scorer built without azure-iot-device (or a GPU test machine) must still start."""
    from scorer import worker_app as entry
    from scorer.settings import EDGE_VARIABLES

    for name in EDGE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "azure", None)  # any import of it now fails
    monkeypatch.delitem(sys.modules, "scorer.edge", raising=False)
    assert entry.start_edge(object(), Settings.from_env({}), None) is None  # type: ignore[arg-type]


def test_yolo_exports_are_sized_as_their_script_unless_the_sessions_run_on_tensorrt() -> None:
    """On TensorRT each new input shape builds an engine (minutes on a Jetson, past the
    inference time limit): `auto` keeps the one declared shape there."""
    from scorer.vocabulary import YoloResize
    from scorer.worker_app import model_options

    default = Settings.from_env({})
    assert default.yolo_resize is None  # auto
    assert model_options(default).yolo_resize is YoloResize.EXPORT
    assert model_options(default, tensorrt=True).yolo_resize is YoloResize.STRETCH
    chosen = Settings.from_env({"SCORER_YOLO_RESIZE": "export"})
    assert model_options(chosen, tensorrt=True).yolo_resize is YoloResize.EXPORT
