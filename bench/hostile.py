#!/usr/bin/env python3
"""Hostile clients and overload, measured against the same server's quiet figures.

1. Sequential `POST /score` latency on a quiet server (the baseline), then with 200
   slowloris connections and 200 stalled bodies held open: p50 ratio to the baseline, and
   `/healthz` and gRPC `Score` latency meanwhile.
2. 64 clients at 4x the in-flight budget (16) for `--seconds`: how many 200, 429 and
   failures, and p50/p99 of the 200s against the budget times one request's latency.
3. 100 clients each sending 7.9 MB of an 8 MB body and stalling: their answers and the
   worker's peak resident memory, against what they sent (SCORER_READ_BUDGET_BYTES).
4. 30 gRPC calls (raw HTTP/2) each sending 7.9 MB of an 8 MB message and stalling: the
   worker's resident memory before and after; gRPC's core keeps what has arrived, so
   SCORER_GRPC_MAX_CALLS x SCORER_MAX_BODY_BYTES is the bound there.

    .venv/bin/python bench/hostile.py [--seconds 60] [--read-budget BYTES]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "modules" / "scorer")]

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import make_demo_models  # noqa: E402
import requests  # noqa: E402
from scorer.client import GrpcClient  # noqa: E402
from scorer.generated import scoring_pb2  # noqa: E402

from tests.scorer_process import ScorerProcess, memory_mb, scorer_env, worker_pid  # noqa: E402

BUDGET = 16
STALLERS = 100
GRPC_STALLERS = 30
MAX_BODY = 8 * 1024 * 1024


def timed_ms(call, count: int) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def hostile(server: ScorerProcess) -> list[socket.socket]:
    held = []
    for i in range(400):
        sock = socket.create_connection(("127.0.0.1", server.port))
        if i % 2:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        else:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 150000\r\n\r\nab")
        held.append(sock)
    return held


def stall_with_bodies(server: ScorerProcess) -> tuple[collections.Counter, float]:
    """Answers to STALLERS clients each sending most of a maximal body, and the worker's
    peak resident memory (MB) meanwhile."""
    head = (
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: %d\r\n\r\n" % MAX_BODY
    )
    body = b"\xff" * (MAX_BODY - 100_000)
    worker = worker_pid(server.proc.pid)

    def send(_: int) -> int | str:
        with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
            try:
                sock.sendall(head + body)
                answer = sock.recv(4096)  # an early refusal, or the 408 at the deadline
            except OSError as error:
                return type(error).__name__
            return int(answer.split()[1]) if answer else "closed"

    with concurrent.futures.ThreadPoolExecutor(STALLERS) as pool:
        codes = collections.Counter(pool.map(send, range(STALLERS)))
    return codes, memory_mb(worker, "VmHWM")


def grpc_partial_call(port: int, size: int) -> socket.socket:
    """One Score call over raw HTTP/2 whose message stops 100 KB short; its socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream = connection.get_next_available_stream_id()
    connection.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/scoring.v1.Scoring/Score"),
            (":authority", "scorer"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    message = scoring_pb2.ScoreRequest(image=b"\xff" * size).SerializeToString()
    framed = struct.pack(">BI", 0, len(message)) + message
    unsent = memoryview(framed)[: len(framed) - 100_000]
    sock.sendall(connection.data_to_send())
    while unsent:
        window = min(
            connection.local_flow_control_window(stream), connection.max_outbound_frame_size
        )
        if window <= 0:  # wait for the server to open its window
            try:
                connection.receive_data(sock.recv(65536))
            except TimeoutError:
                break
            sock.sendall(connection.data_to_send())
            continue
        connection.send_data(stream, bytes(unsent[:window]))
        unsent = unsent[window:]
        sock.sendall(connection.data_to_send())
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--read-budget", type=int, default=128 * 1024 * 1024, help="SCORER_READ_BUDGET_BYTES"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_demo_models.main(["make_demo_models.py", str(work / "demo")])
        image = (work / "demo" / "images" / "red.jpg").read_bytes()
        env = scorer_env(
            work / "demo" / "models" / "colors",
            work / "cache",
            PROVIDERS="cpu",
            CLIENT_TIMEOUT_S="600",
            MAX_INFLIGHT=str(BUDGET),
        )
        server = ScorerProcess(env)
        server.wait_ready()
        try:
            session = requests.Session()
            headers = {"Content-Type": "image/jpeg"}

            def score() -> None:
                assert session.post(server.url + "/score", data=image, headers=headers).ok

            grpc_client = GrpcClient(server.grpc_target)
            quiet = timed_ms(score, args.requests)
            held = hostile(server)
            time.sleep(1)
            busy = timed_ms(score, args.requests)
            health = timed_ms(lambda: session.get(server.url + "/healthz"), 50)
            grpc = timed_ms(lambda: grpc_client.score(image), 50)
            for sock in held:
                sock.close()
            grpc_client.close()
            single = statistics.median(quiet)
            print("\n1. 200 slowloris + 200 stalled bodies held open (2 vCPU, demo colour model)")
            print(f"   sequential /score p50 quiet     {single:7.2f} ms")
            print(f"   sequential /score p50 hostile   {statistics.median(busy):7.2f} ms"
                  f"  ({statistics.median(busy) / single:.2f}x quiet)")  # fmt: skip
            print(f"   /healthz p50 hostile            {statistics.median(health):7.2f} ms")
            print(f"   gRPC Score p50 hostile          {statistics.median(grpc):7.2f} ms")

            clients = BUDGET * 4
            stop_at = time.monotonic() + args.seconds

            def client(_: int) -> tuple[collections.Counter, list[float]]:
                own = requests.Session()
                codes: collections.Counter = collections.Counter()
                ok_ms = []
                while time.monotonic() < stop_at:
                    started = time.perf_counter()
                    try:
                        response = own.post(
                            server.url + "/score", data=image, headers=headers, timeout=30
                        )
                        codes[response.status_code] += 1
                        if response.status_code == 200:
                            ok_ms.append((time.perf_counter() - started) * 1000)
                    except requests.RequestException:
                        codes["failed"] += 1
                return codes, ok_ms

            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                outcomes = list(pool.map(client, range(clients)))
            codes = sum((c for c, _ in outcomes), collections.Counter())
            ok = [ms for _, samples in outcomes for ms in samples]
            print(f"\n2. {clients} clients, {BUDGET} in-flight slots, {args.seconds:g} s")
            print(f"   answers: {dict(codes)}")
            print(f"   200s p50 {percentile(ok, 0.5):.1f} ms, p99 {percentile(ok, 0.99):.1f} ms;"
                  f" budget x one request = {BUDGET * single:.1f} ms"
                  f" (p99 / that = {percentile(ok, 0.99) / (BUDGET * single):.2f})")  # fmt: skip
        finally:
            server.stop()
        # the stalled bodies end with 408
        env.update(SCORER_CLIENT_TIMEOUT_S="20", SCORER_READ_BUDGET_BYTES=str(args.read_budget))
        server = ScorerProcess(env)
        server.wait_ready()
        try:
            codes, peak = stall_with_bodies(server)
            sent = STALLERS * (MAX_BODY - 100_000) / 1e6
            print(f"\n3. {STALLERS} clients each stalling with 7.9 MB of an 8 MB body"
                  f" ({sent:.0f} MB), read budget {args.read_budget / 1e6:.0f} MB")  # fmt: skip
            print(f"   answers: {dict(codes)}; worker peak RSS {peak:.0f} MB")
            worker = worker_pid(server.proc.pid)
            before = memory_mb(worker, "VmRSS")
            port = int(server.grpc_target.rsplit(":", 1)[1])
            calls = [grpc_partial_call(port, MAX_BODY - 100) for _ in range(GRPC_STALLERS)]
            time.sleep(1)
            after = memory_mb(worker, "VmRSS")
            for sock in calls:
                sock.close()
            print(f"\n4. {GRPC_STALLERS} gRPC calls each stalling with 7.9 MB of an 8 MB message")
            print(f"   worker RSS {before:.0f} MB before, {after:.0f} MB while they stall"
                  f" (+{(after - before) / GRPC_STALLERS:.1f} MB per call)")  # fmt: skip
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
