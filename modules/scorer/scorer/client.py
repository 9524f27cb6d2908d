"""Score images with a running scorer over HTTP or gRPC, and print the predictions.

    python -m scorer.client photo.jpg more/*.jpg                    # HTTP, localhost:8080
    python -m scorer.client --grpc localhost:50051 --stream *.jpg   # one gRPC stream
    python -m scorer.client --json --threshold 0.5 photo.jpg

Both clients return results as the HTTP JSON (dicts), so callers and tests treat the two
front ends alike.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

CONTENT_TYPES = {".png": "image/png", ".bmp": "image/bmp"}


class ScoringFailed(Exception):
    """The scorer answered with an error; `code` is its error code (e.g. INVALID_IMAGE)."""

    def __init__(self, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class HttpClient:
    """`POST /score` on one keep-alive connection (standard library only)."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        api_key: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url if "//" in base_url else f"http://{base_url}")
        host = parts.hostname or "localhost"
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=ca_file)
            self.connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, parts.port or 443, timeout=timeout, context=context
            )
        else:
            self.connection = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def score(
        self,
        image: bytes,
        threshold: float | None = None,
        max_predictions: int | None = None,
        content_type: str = "image/jpeg",
    ) -> dict[str, Any]:
        query = {
            k: v
            for k, v in (("threshold", threshold), ("maxPredictions", max_predictions))
            if v is not None
        }
        path = "/score" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Content-Type": content_type, **self.headers}
        self.connection.request("POST", path, body=image, headers=headers)
        response = self.connection.getresponse()
        body: dict[str, Any] = json.loads(response.read() or b"{}")
        if response.status != 200:
            error = body.get("error", {})
            raise ScoringFailed(error.get("code", str(response.status)), error.get("message", ""))
        return body

    def model(self) -> dict[str, Any]:
        self.connection.request("GET", "/model", headers=self.headers)
        info: dict[str, Any] = json.loads(self.connection.getresponse().read())
        return info

    def close(self) -> None:
        self.connection.close()


def response_dict(response: Any) -> dict[str, Any]:
    """A `scoring.v1.ScoreResponse` as the HTTP result JSON (plus its `requestId`)."""
    predictions = []
    for p in response.predictions:
        item: dict[str, Any] = {
            "probability": p.probability,
            "tagId": p.tag_id,
            "tagName": p.tag_name,
        }
        if p.HasField("bounding_box"):
            box = p.bounding_box
            item["boundingBox"] = {
                "left": box.left,
                "top": box.top,
                "width": box.width,
                "height": box.height,
            }
        predictions.append(item)
    created = response.created.ToJsonString() if response.HasField("created") else ""
    return {
        "id": response.id,
        "project": "",
        "iteration": "",
        "created": created,
        "predictions": predictions,
        "model": {
            "name": response.model.name,
            "version": response.model.version,
            "kind": response.model.kind,
        },
        "timing": {
            "decodeMs": response.timing.decode_ms,
            "inferenceMs": response.timing.inference_ms,
            "totalMs": response.timing.total_ms,
        },
        "provider": response.provider,
        "requestId": response.request_id,
    }


class GrpcClient:
    """`scoring.v1.Scoring` over one channel: unary calls, a stream, the model."""

    def __init__(
        self,
        target: str,
        timeout: float = 30.0,
        api_key: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        import grpc

        from .generated import scoring_pb2, scoring_pb2_grpc

        self._grpc = grpc
        self._pb = scoring_pb2
        self.timeout = timeout
        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if ca_file:
            credentials = grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.stub = scoring_pb2_grpc.ScoringStub(self.channel)  # type: ignore[no-untyped-call]

    def request(
        self,
        image: bytes,
        request_id: str = "",
        threshold: float | None = None,
        max_predictions: int | None = None,
    ) -> Any:
        """A `ScoreRequest`, leaving unset what the caller did not give."""
        request = self._pb.ScoreRequest(image=image, request_id=request_id)
        if threshold is not None:
            request.threshold = threshold
        if max_predictions is not None:
            request.max_predictions = max_predictions
        return request

    def score(
        self,
        image: bytes,
        threshold: float | None = None,
        max_predictions: int | None = None,
        request_id: str = "",
    ) -> dict[str, Any]:
        try:
            response = self.stub.Score(
                self.request(image, request_id, threshold, max_predictions),
                timeout=self.timeout,
                metadata=self.metadata,
            )
        except self._grpc.RpcError as error:
            metadata = dict(error.trailing_metadata() or ())
            raise ScoringFailed(
                metadata.get("error-code", error.code().name), error.details() or ""
            ) from None
        return response_dict(response)

    def stream(self, requests: Iterable[Any]) -> Iterator[dict[str, Any] | ScoringFailed]:
        """One `ScoreStream`: a result dict, or a `ScoringFailed`, per request, in order."""
        for response in self.stub.ScoreStream(iter(requests), metadata=self.metadata):
            if response.HasField("error"):
                yield ScoringFailed(
                    response.error.code, response.error.message, response.request_id
                )
            else:
                yield response_dict(response)

    def model(self) -> dict[str, Any]:
        info = self.stub.GetModel(
            self._pb.GetModelRequest(), timeout=self.timeout, metadata=self.metadata
        )
        return {
            "name": info.name,
            "version": info.version,
            "kind": info.kind,
            "format": info.format,
            "labels": list(info.labels),
            "inputName": info.input_name,
            "inputShape": list(info.input_shape),
            "inputType": info.input_type,
            "providers": list(info.providers),
            "sha256": info.sha256,
            "ready": info.ready,
            "providerFallbacks": [
                {"provider": f.provider, "reason": f.reason, "detail": f.detail}
                for f in info.provider_fallbacks
            ],
            "warmInputSizes": info.warm_input_sizes,
            "ioBinding": info.io_binding,
        }

    def close(self) -> None:
        self.channel.close()


def _table(name: str, result: dict[str, Any]) -> str:
    lines = [f"{name}  ({result['provider']}, {result['timing']['totalMs']:.1f} ms)"]
    for p in result["predictions"]:
        box = p.get("boundingBox")
        where = (
            f"  left={box['left']:.3f} top={box['top']:.3f} width={box['width']:.3f}"
            f" height={box['height']:.3f}"
            if box
            else ""
        )
        lines.append(f"  {p['probability']:7.2%}  {p['tagName']}{where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 1 when any image failed."""
    parser = argparse.ArgumentParser(prog="python -m scorer.client", description=__doc__)
    parser.add_argument("images", nargs="+", type=Path)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--http", default="http://localhost:8080", help="HTTP base URL")
    where.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this address")
    parser.add_argument("--stream", action="store_true", help="gRPC: send all in one stream")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--max-predictions", type=int)
    parser.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    parser.add_argument("--api-key", help="an API key (default: $SCORER_API_KEY)")
    parser.add_argument("--ca", help="the CA file that signed the scorer's TLS certificate")
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get("SCORER_API_KEY")
    if args.stream and not args.grpc:
        parser.error("--stream needs --grpc")

    failures = 0

    def show(name: str, outcome: dict[str, Any] | ScoringFailed) -> None:
        nonlocal failures
        if isinstance(outcome, ScoringFailed):
            failures += 1
            print(f"{name}: {outcome}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"image": name, **outcome}))
        else:
            print(_table(name, outcome))

    client: HttpClient | GrpcClient = (
        GrpcClient(args.grpc, api_key=api_key, ca_file=args.ca)
        if args.grpc
        else HttpClient(args.http, api_key=api_key, ca_file=args.ca)
    )
    try:
        if isinstance(client, GrpcClient) and args.stream:
            requests = (
                client.request(p.read_bytes(), str(p), args.threshold, args.max_predictions)
                for p in args.images
            )
            for path, outcome in zip(args.images, client.stream(requests), strict=True):
                show(str(path), outcome)
            return 1 if failures else 0
        for path in args.images:
            try:
                if isinstance(client, HttpClient):
                    content_type = CONTENT_TYPES.get(path.suffix.lower(), "image/jpeg")
                    outcome = client.score(
                        path.read_bytes(), args.threshold, args.max_predictions, content_type
                    )
                else:
                    outcome = client.score(path.read_bytes(), args.threshold, args.max_predictions)
            except ScoringFailed as error:
                outcome = error
            show(str(path), outcome)
    finally:
        client.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
