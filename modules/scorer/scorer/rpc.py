"""gRPC front end: `create_server(scorer, address)` translates `scoring.v1` calls to the core."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .core import Code, Result, ScoreOptions, Scorer, ScoringError
from .generated import scoring_pb2, scoring_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = scoring_pb2.DESCRIPTOR.services_by_name["Scoring"].full_name
ERROR_CODE_KEY = "error-code"
# Room for the other fields of a request beyond the image itself.
MESSAGE_OVERHEAD_BYTES = 64 * 1024

GRPC_STATUS: dict[Code, grpc.StatusCode] = {
    Code.EMPTY_BODY: grpc.StatusCode.INVALID_ARGUMENT,
    Code.UNSUPPORTED_MEDIA_TYPE: grpc.StatusCode.INVALID_ARGUMENT,
    Code.INVALID_IMAGE: grpc.StatusCode.INVALID_ARGUMENT,
    Code.IMAGE_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.BODY_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.METHOD_NOT_ALLOWED: grpc.StatusCode.UNIMPLEMENTED,
    Code.URL_NOT_ALLOWED: grpc.StatusCode.PERMISSION_DENIED,
    Code.URL_FETCH_FAILED: grpc.StatusCode.UNAVAILABLE,
    Code.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    Code.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.MALFORMED_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Code.HEADERS_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.URI_TOO_LONG: grpc.StatusCode.INVALID_ARGUMENT,
    Code.REQUEST_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}


def result_message(result: Result, request_id: str) -> scoring_pb2.ScoreResponse:
    """The `ScoreResponse` carrying everything the HTTP result carries."""
    response = scoring_pb2.ScoreResponse(
        request_id=request_id,
        id=result.id,
        model=scoring_pb2.ModelRef(
            name=result.model_name, version=result.model_version, kind=result.kind
        ),
        timing=scoring_pb2.Timing(
            decode_ms=result.timing.decode_ms,
            inference_ms=result.timing.inference_ms,
            total_ms=result.timing.total_ms,
        ),
        provider=result.provider,
    )
    response.created.FromJsonString(result.created)
    for p in result.predictions:
        prediction = response.predictions.add(
            probability=p.probability, tag_id=p.tag_id, tag_name=p.tag_name
        )
        if p.box is not None:
            prediction.bounding_box.CopyFrom(
                scoring_pb2.BoundingBox(
                    left=p.box.left, top=p.box.top, width=p.box.width, height=p.box.height
                )
            )
    return response


def model_message(info: dict[str, Any]) -> scoring_pb2.ModelInfo:
    """`ModelInfo` from the dict `GET /model` returns."""
    return scoring_pb2.ModelInfo(
        name=info["name"],
        version=info["version"],
        kind=info["kind"],
        format=info["format"],
        labels=info["labels"],
        input_name=info["inputName"],
        input_shape=info["inputShape"],
        input_type=info["inputType"],
        providers=info["providers"],
        sha256=info["sha256"],
        ready=info["ready"],
        provider_fallbacks=[scoring_pb2.ProviderFallback(**f) for f in info["providerFallbacks"]],
    )


class ScoringServicer(scoring_pb2_grpc.ScoringServicer):
    """Translates `scoring.v1.Scoring` calls into `Scorer.score`; no scoring logic here."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def _score(self, request: scoring_pb2.ScoreRequest) -> scoring_pb2.ScoreResponse:
        with self.scorer.admit():
            limit = self.scorer.config.max_body_bytes
            if len(request.image) > limit:
                raise ScoringError(
                    Code.BODY_TOO_LARGE, f"image is larger than the {limit}-byte limit"
                )
            options = ScoreOptions(
                request.threshold if request.HasField("threshold") else None,
                request.max_predictions if request.HasField("max_predictions") else None,
            )
            return result_message(self.scorer.score(request.image, options), request.request_id)

    def _outcome(self, request: scoring_pb2.ScoreRequest) -> scoring_pb2.ScoreResponse:
        """A response, or one carrying the error; unexpected failures become INTERNAL."""
        try:
            return self._score(request)
        except ScoringError as error:
            return _error_response(request.request_id, error.code, error.message)
        except Exception as error:
            log.exception("unexpected error scoring request %r", request.request_id)
            message = f"internal error ({type(error).__name__}); logged"
            return _error_response(request.request_id, Code.INTERNAL, message)

    def Score(
        self, request: scoring_pb2.ScoreRequest, context: grpc.ServicerContext
    ) -> scoring_pb2.ScoreResponse:
        response = self._outcome(request)
        if response.HasField("error"):
            code = Code(response.error.code)
            context.set_trailing_metadata(((ERROR_CODE_KEY, code.value),))
            context.abort(GRPC_STATUS[code], response.error.message)
        return response

    def ScoreStream(
        self, request_iterator: Iterator[scoring_pb2.ScoreRequest], context: grpc.ServicerContext
    ) -> Iterator[scoring_pb2.ScoreResponse]:
        for request in request_iterator:
            yield self._outcome(request)

    def GetModel(
        self, request: scoring_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> scoring_pb2.ModelInfo:
        return model_message(self.scorer.model_info())


def _error_response(request_id: str, code: Code, message: str) -> scoring_pb2.ScoreResponse:
    return scoring_pb2.ScoreResponse(
        request_id=request_id, error=scoring_pb2.Error(code=code.value, message=message)
    )


def create_server(scorer: Scorer, address: str, max_workers: int = 16) -> tuple[grpc.Server, int]:
    """A gRPC server (not started) for the scorer, with health and reflection; and its port.

    `max_workers` bounds concurrent calls (a stream holds one for its life); beyond it gRPC
    answers RESOURCE_EXHAUSTED at once instead of queueing.
    """
    message_limit = scorer.config.max_body_bytes + MESSAGE_OVERHEAD_BYTES
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=max_workers,
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
        ],
    )
    scoring_pb2_grpc.add_ScoringServicer_to_server(ScoringServicer(scorer), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    def serving() -> None:
        for service in ("", SERVICE_NAME):
            health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    scorer.when_ready(serving)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    return server, port
