"""The real scorer over HTTP: gunicorn on 127.0.0.1, real models, real images."""

from __future__ import annotations

import concurrent.futures
import http.server
import io
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import SHARED_IMAGES, SHARED_MODELS, cuda_works, require_shared
from tests.integration.conftest import MAX_BODY
from tests.scorer_process import ScorerProcess


def _image_bytes(colour: tuple[int, int, int], fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def _top(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["tagName"]


def _error(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert "Traceback" not in response.text
    return body["error"]["message"]


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("BMP", "image/bmp"),
        ("PNG", "application/octet-stream"),
    ],
)
def test_raw_body_of_each_format(colors: ScorerProcess, fmt: str, mime: str) -> None:
    response = requests.post(
        colors.url + "/score", data=_image_bytes((20, 30, 220), fmt), headers={"Content-Type": mime}
    )
    assert _top(response) == "blue"
    assert response.json()["provider"] == "CPUExecutionProvider"


def test_multipart_image_field_and_first_file(colors: ScorerProcess, demo_dir: Path) -> None:
    red = (demo_dir / "images" / "red.jpg").read_bytes()
    assert _top(requests.post(colors.url + "/score", files={"image": red})) == "red"
    assert _top(requests.post(colors.url + "/score", files={"photo": red})) == "red"


def test_query_threshold_and_max_predictions(colors: ScorerProcess, demo_dir: Path) -> None:
    green = (demo_dir / "images" / "green.jpg").read_bytes()
    response = requests.post(
        colors.url + "/score?threshold=0.5", data=green, headers={"Content-Type": "image/jpeg"}
    )
    assert [p["tagName"] for p in response.json()["predictions"]] == ["green"]
    response = requests.post(
        colors.url + "/score?maxPredictions=2", data=green, headers={"Content-Type": "image/jpeg"}
    )
    assert len(response.json()["predictions"]) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/image",
        "/myproject/image/nostore",
        "/myproject/classify/iterations/Iteration3/image",
        "/myproject/detect/iterations/Iteration3/image/nostore",
    ],
)
def test_custom_vision_container_routes(colors: ScorerProcess, demo_dir: Path, path: str) -> None:
    green = (demo_dir / "images" / "green.jpg").read_bytes()
    as_file = requests.post(colors.url + path, files={"imageData": green})
    raw = requests.post(
        colors.url + path, data=green, headers={"Content-Type": "application/octet-stream"}
    )
    for response in (as_file, raw):
        assert _top(response) == "green"
        assert {"id", "project", "iteration", "created", "predictions"} <= set(response.json())


def test_empty_body(colors: ScorerProcess) -> None:
    response = requests.post(
        colors.url + "/score", data=b"", headers={"Content-Type": "image/jpeg"}
    )
    _error(response, 400, "EMPTY_BODY")


def test_unsupported_media_type_says_what_to_send(colors: ScorerProcess, demo_dir: Path) -> None:
    response = requests.post(
        colors.url + "/score", data=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert "image/jpeg" in _error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_garbage_and_truncated_images_are_invalid(colors: ScorerProcess, demo_dir: Path) -> None:
    jpeg = (demo_dir / "images" / "squares.jpg").read_bytes()
    for body in (b"\xff\xd8 definitely not a jpeg", jpeg[: len(jpeg) // 3]):
        response = requests.post(
            colors.url + "/score", data=body, headers={"Content-Type": "image/jpeg"}
        )
        _error(response, 400, "INVALID_IMAGE")


def test_too_many_pixels(colors: ScorerProcess) -> None:
    body = _image_bytes((0, 0, 0), "PNG", (2000, 1500))
    assert len(body) < MAX_BODY
    response = requests.post(
        colors.url + "/score", data=body, headers={"Content-Type": "image/png"}
    )
    assert "2000x1500" in _error(response, 413, "IMAGE_TOO_LARGE")


def test_body_over_the_limit(colors: ScorerProcess) -> None:
    response = requests.post(
        colors.url + "/score", data=b"\xff" * (MAX_BODY + 1), headers={"Content-Type": "image/jpeg"}
    )
    assert str(MAX_BODY) in _error(response, 413, "BODY_TOO_LARGE")


@pytest.mark.parametrize(
    "query", ["threshold=abc", "threshold=1.5", "maxPredictions=-2", "maxPredictions=2.5"]
)
def test_bad_query_is_invalid_argument(colors: ScorerProcess, demo_dir: Path, query: str) -> None:
    body = (demo_dir / "images" / "red.jpg").read_bytes()
    response = requests.post(
        f"{colors.url}/score?{query}", data=body, headers={"Content-Type": "image/jpeg"}
    )
    _error(response, 400, "INVALID_ARGUMENT")


def test_unknown_route_and_method_use_the_error_shape(colors: ScorerProcess) -> None:
    _error(requests.get(colors.url + "/nothing-here"), 404, "NOT_FOUND")
    response = requests.get(colors.url + "/score")
    _error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["Allow"]


def test_url_route_is_off_by_default(colors: ScorerProcess) -> None:
    response = requests.post(colors.url + "/url", json={"url": "http://127.0.0.1/x.jpg"})
    assert "SCORER_URL_ENABLED" in _error(response, 403, "URL_NOT_ALLOWED")


def test_worker_survives_every_bad_request(colors: ScorerProcess, demo_dir: Path) -> None:
    for body in (b"", b"junk", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50):
        requests.post(colors.url + "/score", data=body, headers={"Content-Type": "image/png"})
    red = (demo_dir / "images" / "red.jpg").read_bytes()
    assert (
        _top(requests.post(colors.url + "/score", data=red, headers={"Content-Type": "image/jpeg"}))
        == "red"
    )
    assert "Traceback" not in colors.log


def each_of_twenty_clients_gets_its_own_answers(url: str, demo_dir: Path) -> None:
    images = {
        label: (demo_dir / "images" / f"{label}.jpg").read_bytes()
        for label in ("red", "green", "blue")
    }
    jobs = [random.Random(i).choice(list(images)) for i in range(100)]

    def score(label: str) -> tuple[str, str]:
        with requests.Session() as session:
            for _ in range(200):  # 20 clients, 16 slots: a client told 429 retries, as it should
                response = session.post(
                    url + "/score",
                    data=images[label],
                    headers={"Content-Type": "image/jpeg"},
                    timeout=30,
                )
                if response.status_code != 429:
                    return label, _top(response)
            raise AssertionError("still 429 after 200 tries: a slot is never given back")

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(score, jobs))
    assert all(sent == got for sent, got in answers)


def test_twenty_concurrent_clients_get_their_own_answers(
    colors: ScorerProcess, demo_dir: Path
) -> None:
    each_of_twenty_clients_gets_its_own_answers(colors.url, demo_dir)


def test_io_binding_on_the_serving_threads_keeps_each_clients_answer(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    """Forced on the CPU, the binding a GPU gets: one input buffer per serving thread."""
    server = start_scorer(demo_dir / "models" / "colors", IO_BINDING="on", PROVIDERS="cpu")
    each_of_twenty_clients_gets_its_own_answers(server.url, demo_dir)
    assert "IO binding on cpu" in server.log and "Traceback" not in server.log
    info = requests.get(server.url + "/model").json()
    assert (info["ioBinding"], info["warmInputSizes"]) == ("cpu", 1)


def test_model_and_metrics(colors: ScorerProcess, demo_dir: Path) -> None:
    info = requests.get(colors.url + "/model").json()
    assert info["kind"] == "classification" and info["labels"] == ["red", "green", "blue"]
    assert info["providers"] == ["CPUExecutionProvider"] and len(info["sha256"]) == 64
    assert (info["ioBinding"], info["warmInputSizes"]) == ("off", 1)  # off by default
    requests.post(colors.url + "/score", data=b"junk", headers={"Content-Type": "image/jpeg"})
    text = requests.get(colors.url + "/metrics").text
    assert 'scorer_requests_total{code="INVALID_IMAGE"}' in text
    assert 'scorer_stage_seconds_bucket{le="0.001",stage="inference"}' in text
    assert 'provider="CPUExecutionProvider"' in text
    assert "scorer_inflight_requests 0.0" in text


@pytest.mark.skipif(cuda_works(), reason="CUDA initialises here: auto keeps it, nothing falls back")
def test_auto_reports_the_gpu_providers_it_dropped_and_why(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    """onnxruntime-gpu on a machine without a GPU: reported in /model and /metrics; the
    open /readyz says ready and nothing of the libraries behind it."""
    server = start_scorer(demo_dir / "models" / "colors", PROVIDERS="auto")
    dropped = requests.get(server.url + "/model").json()["providerFallbacks"]
    assert {f["provider"] for f in dropped} == {
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    }
    assert {f["reason"] for f in dropped} == {"no_gpu"} and all(f["detail"] for f in dropped)
    assert requests.get(server.url + "/readyz").json() == {"status": "ready"}
    text = requests.get(server.url + "/metrics").text
    assert 'scorer_provider_fallback{provider="CUDAExecutionProvider",reason="no_gpu"} 1.0' in text
    assert "dropped (no_gpu)" in server.log


@pytest.mark.parametrize(
    ("model", "tolerance"),
    [
        ("squares", 0.02),
        # The YOLO head proposes 160-pixel boxes on a 32-pixel grid: near, not exact.
        ("squares-yolo", 0.04),
    ],
)
def test_detection_boxes_over_http(
    start_scorer: Callable[..., ScorerProcess],
    demo_dir: Path,
    demo_answers: dict,
    model: str,
    tolerance: float,
) -> None:
    server = start_scorer(demo_dir / "models" / model)
    response = requests.post(
        server.url + "/score?threshold=0.5",
        data=(demo_dir / "images" / "squares.jpg").read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert response.status_code == 200
    found = {p["tagName"]: p["boundingBox"] for p in response.json()["predictions"]}
    expected = {d["label"]: d["box"] for d in demo_answers["squares.jpg"]["detections"]}
    assert set(found) == set(expected)
    for label, (left, top, width, height) in expected.items():
        box = found[label]
        assert [box["left"], box["top"], box["width"], box["height"]] == pytest.approx(
            [left, top, width, height], abs=tolerance
        )


def test_readyz_is_503_until_warm_up_then_200(
    start_scorer: Callable[..., ScorerProcess], slow_model_dir: Path
) -> None:
    server = start_scorer(slow_model_dir, wait=False)
    server.wait_listening()
    early = requests.get(server.url + "/readyz")
    assert early.status_code == 503 and early.json()["error"]["code"] == "NOT_READY"
    assert requests.get(server.url + "/healthz").status_code == 200
    assert server.health_check().stderr == "unhealthy: loading\n"  # the image's check
    server.wait_ready()
    assert requests.get(server.url + "/readyz").json()["status"] == "ready"
    deadline = time.monotonic() + 10  # the loop writes the change at its next turn
    while (checked := server.health_check()).returncode != 0:
        assert time.monotonic() < deadline, checked.stderr


def test_a_heartbeat_that_cannot_be_written_leaves_the_scorer_serving(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the heartbeat's folder should be")
    server = start_scorer(demo_dir / "models" / "colors", HEARTBEAT_PATH=str(blocked / "beat"))
    red = (demo_dir / "images" / "red.jpg").read_bytes()
    for _ in range(3):
        scored = requests.post(
            server.url + "/score", data=red, headers={"Content-Type": "image/jpeg"}
        )
        assert scored.json()["predictions"][0]["tagName"] == "red"
    assert server.log.count("cannot write the heartbeat") == 1
    assert server.health_check().stderr.startswith("unhealthy: no heartbeat")


def test_beyond_the_in_flight_limit_answers_429_at_once(
    start_scorer: Callable[..., ScorerProcess], slow_model_dir: Path
) -> None:
    server = start_scorer(slow_model_dir, MAX_INFLIGHT="1", THREADS="4")
    body = _image_bytes((10, 10, 10), "PNG")
    holder: dict[str, requests.Response] = {}
    first = threading.Thread(
        target=lambda: holder.setdefault(
            "r",
            requests.post(server.url + "/score", data=body, headers={"Content-Type": "image/png"}),
        )
    )
    first.start()
    while "scorer_inflight_requests 1.0" not in requests.get(server.url + "/metrics").text:
        assert first.is_alive(), "the slow request finished before the test could overlap it"
    second = requests.post(server.url + "/score", data=body, headers={"Content-Type": "image/png"})
    _error(second, 429, "OVERLOADED")
    assert second.headers["Retry-After"] == "1"
    first.join()
    assert holder["r"].status_code == 200


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    image = b""

    def do_GET(self) -> None:
        if self.path == "/red.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def test_url_route_fetches_only_from_allowed_hosts(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    _ImageHandler.image = (demo_dir / "images" / "red.jpg").read_bytes()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{upstream.server_address[1]}"
    try:
        server = start_scorer(
            demo_dir / "models" / "colors",
            URL_ENABLED="true",
            URL_ALLOWED_HOSTS=f"127.0.0.1:{upstream.server_address[1]}",
        )
        assert _top(requests.post(server.url + "/url", json={"url": base + "/red.jpg"})) == "red"
        assert (
            _top(
                requests.post(
                    server.url + "/proj/classify/iterations/it/url", json={"Url": base + "/red.jpg"}
                )
            )
            == "red"
        )
        other = base.replace("127.0.0.1", "localhost")
        _error(
            requests.post(server.url + "/url", json={"url": other + "/red.jpg"}),
            403,
            "URL_NOT_ALLOWED",
        )
        _error(
            requests.post(server.url + "/url", json={"url": base + "/missing.jpg"}),
            502,
            "URL_FETCH_FAILED",
        )
        _error(requests.post(server.url + "/url", data=b"{not json"), 400, "INVALID_ARGUMENT")
    finally:
        upstream.shutdown()


def test_real_export_over_http(start_scorer: Callable[..., ScorerProcess]) -> None:
    model = require_shared(SHARED_MODELS / "cv-cls-catdog-negative-opset7")
    server = start_scorer(model)
    photo = (require_shared(SHARED_IMAGES) / "chelsea.jpg").read_bytes()
    assert (
        _top(
            requests.post(server.url + "/score", data=photo, headers={"Content-Type": "image/jpeg"})
        )
        == "cat"
    )


def test_sigterm_stops_cleanly(start_scorer: Callable[..., ScorerProcess], demo_dir: Path) -> None:
    server = start_scorer(demo_dir / "models" / "colors")
    assert server.stop() == 0
    assert "Traceback" not in server.log and "terminate called" not in server.log
