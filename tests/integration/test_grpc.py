"""The real scorer over gRPC, started as production starts it, against the same core as HTTP."""

from __future__ import annotations

import concurrent.futures
import io
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from scorer.client import GrpcClient, HttpClient, ScoringFailed
from scorer.generated import scoring_pb2

from tests.conftest import SHARED_IMAGES, shared_model_dirs
from tests.integration.conftest import MAX_BODY
from tests.scorer_process import ScorerProcess


@pytest.fixture
def client(colors: ScorerProcess) -> Iterator[GrpcClient]:
    grpc_client = GrpcClient(colors.grpc_target)
    yield grpc_client
    grpc_client.close()


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _predictions(result: dict) -> list[dict]:
    return result["predictions"]


def _models_and_images(demo_dir: Path) -> list[tuple[Path, list[Path]]]:
    demo_images = sorted((demo_dir / "images").glob("*.jpg"))
    pairs = [(m, demo_images) for m in sorted((demo_dir / "models").iterdir())]
    if SHARED_IMAGES.is_dir():
        photos = sorted(SHARED_IMAGES.glob("*.jpg"))
        pairs += [(m, photos) for m in shared_model_dirs()]
    return pairs


def test_http_grpc_unary_and_stream_give_the_same_predictions(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    pairs = _models_and_images(demo_dir)
    assert len(pairs) >= 3
    for model_dir, images in pairs:
        server = start_scorer(model_dir)
        http_client, grpc_client = HttpClient(server.url), GrpcClient(server.grpc_target)
        try:
            streamed = list(
                grpc_client.stream(grpc_client.request(p.read_bytes(), p.name) for p in images)
            )
            for image, from_stream in zip(images, streamed, strict=True):
                data = image.read_bytes()
                over_http = http_client.score(data)
                unary = grpc_client.score(data)
                assert _predictions(unary) == _predictions(over_http), (model_dir, image)
                assert _predictions(from_stream) == _predictions(over_http), (model_dir, image)
                assert from_stream["requestId"] == image.name
                assert unary["model"] == over_http["model"]
                assert unary["provider"] == over_http["provider"]
            assert grpc_client.model() == http_client.model()
        finally:
            http_client.close()
            grpc_client.close()
            server.stop()


def test_result_fields_are_typed_messages(client: GrpcClient, demo_dir: Path) -> None:
    response = client.stub.Score(
        client.request((demo_dir / "images" / "red.jpg").read_bytes(), "frame-1", 0.5)
    )
    assert response.request_id == "frame-1" and response.id
    assert response.created.seconds > 1_700_000_000
    assert [p.tag_name for p in response.predictions] == ["red"]
    assert response.model.kind == "classification"
    assert response.timing.total_ms >= response.timing.inference_ms > 0
    assert response.provider == "CPUExecutionProvider"
    assert not response.HasField("error")


def _failure(client: GrpcClient, request: scoring_pb2.ScoreRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.Score(request)
    return caught.value


@pytest.mark.parametrize(
    ("make_request", "status", "code"),
    [
        (lambda c, d: c.request(b""), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_BODY"),
        (lambda c, d: c.request(b"junk"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IMAGE"),
        (
            lambda c, d: c.request((d / "images" / "squares.jpg").read_bytes()[:2000]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_IMAGE",
        ),
        (
            lambda c, d: c.request(_png((0, 0, 0), (2000, 1500))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "IMAGE_TOO_LARGE",
        ),
        (
            lambda c, d: c.request(b"\xff" * (MAX_BODY + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BODY_TOO_LARGE",
        ),
        (
            lambda c, d: c.request(_png((1, 2, 3)), threshold=1.5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
    ],
    ids=["empty", "garbage", "truncated", "too-many-pixels", "too-large", "bad-threshold"],
)
def test_bad_input_maps_to_its_status_and_code_name(
    client: GrpcClient,
    demo_dir: Path,
    make_request: Callable,
    status: grpc.StatusCode,
    code: str,
) -> None:
    error = _failure(client, make_request(client, demo_dir))
    assert error.code() == status
    assert dict(error.trailing_metadata())["error-code"] == code
    assert error.details()


def test_two_hundred_frames_in_two_hundred_answers_out(client: GrpcClient, demo_dir: Path) -> None:
    images = {c: (demo_dir / "images" / f"{c}.jpg").read_bytes() for c in ("red", "green", "blue")}
    labels = [("red", "green", "blue")[i % 3] for i in range(200)]
    answers = list(
        client.stream(client.request(images[label], f"f{i}") for i, label in enumerate(labels))
    )
    assert len(answers) == 200
    for i, (label, answer) in enumerate(zip(labels, answers, strict=True)):
        assert isinstance(answer, dict), answer
        assert answer["requestId"] == f"f{i}"
        assert answer["predictions"][0]["tagName"] == label


def test_a_bad_frame_does_not_end_the_stream(client: GrpcClient, demo_dir: Path) -> None:
    good = (demo_dir / "images" / "blue.jpg").read_bytes()
    frames = [client.request(good, "a"), client.request(b"junk", "b"), client.request(good, "c")]
    answers = list(client.stream(frames))
    assert isinstance(answers[1], ScoringFailed)
    assert (answers[1].code, answers[1].request_id) == ("INVALID_IMAGE", "b")
    assert [a["requestId"] for a in (answers[0], answers[2])] == ["a", "c"]


def test_cancelling_a_stream_frees_the_server(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    server = start_scorer(demo_dir / "models" / "colors", MAX_INFLIGHT="1", THREADS="4")
    client = GrpcClient(server.grpc_target)
    image = (demo_dir / "images" / "green.jpg").read_bytes()
    stop = threading.Event()

    def endless() -> Iterator[scoring_pb2.ScoreRequest]:
        i = 0
        while not stop.is_set():
            i += 1
            yield client.request(image, str(i))

    call = client.stub.ScoreStream(endless())
    for _ in range(5):
        next(call)
    call.cancel()
    stop.set()
    # With one in-flight slot, this succeeds only if the cancelled stream gave its slot back.
    deadline = time.monotonic() + 10
    while True:
        try:
            assert client.score(image)["predictions"][0]["tagName"] == "green"
            break
        except ScoringFailed:
            assert time.monotonic() < deadline, "the cancelled stream still holds the server"
            time.sleep(0.1)
    assert "scorer_inflight_requests 0.0" in requests.get(server.url + "/metrics").text
    client.close()


def test_health_goes_from_not_serving_to_serving_across_warm_up(
    start_scorer: Callable[..., ScorerProcess], slow_model_dir: Path
) -> None:
    server = start_scorer(slow_model_dir, wait=False)
    server.wait_listening()
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "scoring.v1.Scoring"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        server.wait_ready()
        for service in ("", "scoring.v1.Scoring"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(client: GrpcClient) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in response.list_services_response.service}
    assert {"scoring.v1.Scoring", "grpc.health.v1.Health"} <= names


def test_sigterm_during_a_burst_finishes_the_calls_in_flight(
    start_scorer: Callable[..., ScorerProcess], slow_model_dir: Path
) -> None:
    server = start_scorer(slow_model_dir, MAX_INFLIGHT="4")
    client = GrpcClient(server.grpc_target, timeout=60)
    image = _png((90, 40, 200))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(client.score, image) for _ in range(3)]
        while "scorer_inflight_requests 3.0" not in requests.get(server.url + "/metrics").text:
            assert not any(c.done() for c in calls), "calls finished before the SIGTERM"
        server.proc.send_signal(signal.SIGTERM)
        results = [c.result() for c in calls]
    assert all(r["predictions"] for r in results)
    assert server.proc.wait(60) == 0
    client.close()


@pytest.mark.parametrize(
    "mode", [["--http-url"], ["--grpc"], ["--grpc", "--stream"]], ids=["http", "unary", "stream"]
)
def test_client_command_prints_each_image(
    colors: ScorerProcess, demo_dir: Path, mode: list[str]
) -> None:
    import json
    import subprocess
    import sys

    where = ["--http", colors.url] if mode == ["--http-url"] else [mode[0], colors.grpc_target]
    images = [str(demo_dir / "images" / f"{c}.jpg") for c in ("red", "green", "blue")]
    command = [sys.executable, "-m", "scorer.client", *where, *mode[1:], "--json", *images]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    lines = [json.loads(line) for line in output.stdout.splitlines()]
    assert [line["predictions"][0]["tagName"] for line in lines] == ["red", "green", "blue"]
    table = subprocess.run(command[:-4] + images, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "99." in table.stdout and "blue" in table.stdout


def test_client_command_fails_on_a_bad_image(colors: ScorerProcess, tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    result = subprocess.run(
        [sys.executable, "-m", "scorer.client", "--grpc", colors.grpc_target, str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "INVALID_IMAGE" in result.stderr
