"""gRPC under idle streams, a taken port, garbage and SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scorer.client import GrpcClient, ScoringFailed
from scorer.generated import scoring_pb2

from tests.scorer_process import ScorerProcess, scorer_env

pytestmark = pytest.mark.reliability


@pytest.fixture
def server(start_scorer: Callable[..., ScorerProcess], demo_dir: Path) -> ScorerProcess:
    return start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu", GRACEFUL_TIMEOUT_S="60")


def idle_stream(channel: grpc.Channel, stop: threading.Event) -> grpc.Future:
    """A ScoreStream that is open and sends nothing until `stop`."""

    def nothing() -> Iterator[scoring_pb2.ScoreRequest]:
        stop.wait()
        return
        yield  # a generator that yields nothing

    stream = channel.stream_stream(
        "/scoring.v1.Scoring/ScoreStream",
        request_serializer=scoring_pb2.ScoreRequest.SerializeToString,
        response_deserializer=scoring_pb2.ScoreResponse.FromString,
    )
    return stream(nothing())


def scores_red_once_freed(client: GrpcClient, image: bytes) -> bool:
    """Whether a call on the red picture is served within 5 s, the time the server takes to
    see that what held its limit has gone."""
    for _ in range(50):
        try:
            return bool(client.score(image)["predictions"][0]["tagName"] == "red")
        except ScoringFailed:
            time.sleep(0.1)
    return False


def test_a_hundred_idle_streams_leave_score_and_health_working(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    server = start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu", GRPC_MAX_CALLS="128")
    stop = threading.Event()
    with grpc.insecure_channel(server.grpc_target) as channel:
        streams = [idle_stream(channel, stop) for _ in range(100)]
        client = GrpcClient(server.grpc_target)
        try:
            image = (demo_dir / "images" / "red.jpg").read_bytes()
            for _ in range(5):
                assert client.score(image)["predictions"][0]["tagName"] == "red"
            check = health_pb2_grpc.HealthStub(channel).Check
            status = check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        finally:
            client.close()
            stop.set()
            for stream in streams:
                stream.cancel()


def test_a_call_beyond_the_call_limit_is_refused_at_once_and_served_once_one_ends(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    """Each call may hold a message of up to SCORER_MAX_BODY_BYTES inside gRPC's core while it
    arrives: the call limit is what bounds that memory."""
    server = start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu", GRPC_MAX_CALLS="4")
    image = (demo_dir / "images" / "red.jpg").read_bytes()
    stop = threading.Event()
    client = GrpcClient(server.grpc_target)
    with grpc.insecure_channel(server.grpc_target) as channel:
        streams = [idle_stream(channel, stop) for _ in range(4)]
        try:
            with pytest.raises(ScoringFailed) as refused:
                for _ in range(50):  # until the four streams have started on the server
                    client.score(image)
                    time.sleep(0.1)
            assert refused.value.code == "RESOURCE_EXHAUSTED"  # gRPC's own, no error-code
        finally:
            stop.set()
            for stream in streams:
                stream.cancel()
    assert scores_red_once_freed(client, image), "calls still refused after the streams ended"
    client.close()


def test_an_undecodable_request_is_invalid_argument(server: ScorerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        score = channel.unary_unary("/scoring.v1.Scoring/Score")
        with pytest.raises(grpc.RpcError) as failure:
            score(b"\xff\xff\xff\xff not protobuf", timeout=5)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("error-code", "INVALID_ARGUMENT") in failure.value.trailing_metadata()


def test_a_second_scorer_on_a_taken_grpc_port_fails_to_start_with_one_line(
    server: ScorerProcess, demo_dir: Path, tmp_path: Path
) -> None:
    env = scorer_env(
        demo_dir / "models" / "colors", tmp_path, PROVIDERS="cpu", GRPC_PORT=str(server.grpc_port)
    )
    result = subprocess.run(
        [sys.executable, "-m", "scorer"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "gRPC cannot listen" in lines[0]
    assert "Traceback" not in result.stderr


def test_sigterm_ends_an_open_stream_cleanly_without_waiting_out_the_grace(
    server: ScorerProcess, demo_dir: Path
) -> None:
    image = (demo_dir / "images" / "green.jpg").read_bytes()
    client = GrpcClient(server.grpc_target)
    frames = threading.Event()
    stop = threading.Event()

    def one_frame_then_wait() -> Iterator[scoring_pb2.ScoreRequest]:
        yield client.request(image, "first")
        frames.set()
        stop.wait(120)

    stream = client.stub.ScoreStream(one_frame_then_wait())
    assert next(stream).request_id == "first"
    frames.wait(10)
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as ended:
        next(stream)
    stop.set()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stopping" in ended.value.details()
    assert server.proc.wait(30) == 0  # the grace period is 60 s: it was not waited out
    client.close()
