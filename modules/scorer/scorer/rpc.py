"""gRPC front end: `create_server(scorer, address, limits)` serves `scoring.v1` from the core."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import NO_KEYS, ApiKeys, RepeatedKeyHeader, is_open_grpc, presented_key
from .core import Code, Result, ScoreOptions, Scorer, ScoringError
from .generated import scoring_pb2
from .tls import TlsSource

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
    Code.RANGE_NOT_SATISFIABLE: grpc.StatusCode.OUT_OF_RANGE,
    Code.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    Code.REQUEST_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
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
        warm_input_sizes=info["warmInputSizes"],
        io_binding=info["ioBinding"],
    )


class ScoringServicer:
    """Translates `scoring.v1.Scoring` calls into `Scorer.score`; no scoring logic here.

    Runs on the server's event loop: a call or a stream costs no thread while it waits for
    frames. Each frame takes an in-flight slot (answered OVERLOADED at once when none is
    free) and is scored on the scoring pool, which has one thread per slot.
    """

    def __init__(self, scorer: Scorer, pool: futures.ThreadPoolExecutor) -> None:
        self.scorer = scorer
        self.pool = pool
        self.stopping = asyncio.Event()

    def _score(self, request: scoring_pb2.ScoreRequest) -> scoring_pb2.ScoreResponse:
        limit = self.scorer.config.max_body_bytes
        if len(request.image) > limit:
            raise ScoringError(
                Code.BODY_TOO_LARGE,
                f"image is larger than the {limit}-byte limit (SCORER_MAX_BODY_BYTES)",
            )
        options = ScoreOptions(
            request.threshold if request.HasField("threshold") else None,
            request.max_predictions if request.HasField("max_predictions") else None,
        )
        return result_message(self.scorer.score(request.image, options), request.request_id)

    async def _outcome(self, data: bytes) -> scoring_pb2.ScoreResponse:
        """A response, or one carrying the error; unexpected failures become INTERNAL."""
        try:
            request = scoring_pb2.ScoreRequest.FromString(data)
        except DecodeError:
            return _error_response("", Code.INVALID_ARGUMENT, "not a scoring.v1.ScoreRequest")
        try:
            with self.scorer.admit():
                return await asyncio.get_running_loop().run_in_executor(
                    self.pool, self._score, request
                )
        except ScoringError as error:
            return _error_response(request.request_id, error.code, error.message)
        except Exception as error:
            log.exception("unexpected error scoring request %r", request.request_id)
            message = f"internal error ({type(error).__name__}); logged"
            return _error_response(request.request_id, Code.INTERNAL, message)

    async def Score(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.ScoreResponse:
        response = await self._outcome(data)
        if response.HasField("error"):
            code = Code(response.error.code)
            context.set_trailing_metadata(((ERROR_CODE_KEY, code.value),))
            await context.abort(GRPC_STATUS[code], response.error.message)
        return response

    async def ScoreStream(
        self, frames: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scoring_pb2.ScoreResponse]:
        """One answer per frame, in order; on SIGTERM the frame being scored is answered,
        then the stream ends with UNAVAILABLE instead of waiting out the grace period."""
        reader = frames.__aiter__()
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                next_frame = asyncio.ensure_future(reader.__anext__())
                await asyncio.wait({next_frame, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not next_frame.done():
                    next_frame.cancel()
                    context.set_trailing_metadata(((ERROR_CODE_KEY, Code.NOT_READY.value),))
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "the server is stopping; reconnect and retry"
                    )
                try:
                    data = next_frame.result()
                except StopAsyncIteration:
                    return
                yield await self._outcome(data)
        finally:
            stopping.cancel()

    async def GetModel(
        self, request: scoring_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.ModelInfo:
        return model_message(self.scorer.model_info())

    def handler(self) -> grpc.GenericRpcHandler:
        """The service, taking raw request bytes so that an undecodable one is
        INVALID_ARGUMENT (with gRPC's own deserialisation it would be INTERNAL)."""
        serialize = scoring_pb2.ScoreResponse.SerializeToString
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Score": grpc.unary_unary_rpc_method_handler(
                    self.Score, response_serializer=serialize
                ),
                "ScoreStream": grpc.stream_stream_rpc_method_handler(
                    self.ScoreStream, response_serializer=serialize
                ),
                "GetModel": grpc.unary_unary_rpc_method_handler(
                    self.GetModel,
                    request_deserializer=scoring_pb2.GetModelRequest.FromString,
                    response_serializer=scoring_pb2.ModelInfo.SerializeToString,
                ),
            },
        )


def _error_response(request_id: str, code: Code, message: str) -> scoring_pb2.ScoreResponse:
    return scoring_pb2.ScoreResponse(
        request_id=request_id, error=scoring_pb2.Error(code=code.value, message=message)
    )


class KeyInterceptor(grpc.aio.ServerInterceptor):
    """Every call but health needs an API key in the metadata `authorization: Bearer <key>`."""

    def __init__(self, keys: ApiKeys, scorer: Scorer) -> None:
        self.keys = keys
        self.scorer = scorer

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or is_open_grpc(details.method):
            return handler
        message = "an API key is required: metadata authorization: Bearer <key>"
        try:
            if self.keys.accepts(presented_key(details.invocation_metadata or ())):
                return handler
        except RepeatedKeyHeader as error:
            message = f"{error}; send one key"
        self.scorer.metrics.error(Code.UNAUTHENTICATED.value)

        async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
            context.set_trailing_metadata(((ERROR_CODE_KEY, Code.UNAUTHENTICATED.value),))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse(requests, context)
            yield  # never reached: abort ends the call

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                refuse_stream, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )


@dataclasses.dataclass(frozen=True)
class GrpcLimits:
    """What the gRPC server holds at most. Calls, streams included, cost memory, not a
    thread; beyond `max_calls` gRPC answers RESOURCE_EXHAUSTED at once. Connections cost a
    file descriptor each (shared with the HTTP side and the model files): beyond
    `max_connections` a new one is closed at once, and one with no call for
    `idle_connection_s` is closed (its client reconnects when it next calls). The values
    are the settings' (`SCORER_GRPC_MAX_CALLS`, `SCORER_MAX_CONNECTIONS`,
    `SCORER_IDLE_CONNECTION_S`)."""

    max_calls: int
    max_connections: int
    idle_connection_s: int


class GrpcServer:
    """The gRPC front end on an event loop of its own, in a thread beside gunicorn's."""

    def __init__(
        self,
        scorer: Scorer,
        address: str,
        limits: GrpcLimits,
        keys: ApiKeys,
        tls: TlsSource | None,
    ) -> None:
        self.scorer = scorer
        self.keys = keys
        self.tls = tls
        self.loop = asyncio.new_event_loop()
        self.pool = futures.ThreadPoolExecutor(
            scorer.config.max_inflight, thread_name_prefix="grpc-score"
        )
        threading.Thread(target=self.loop.run_forever, name="grpc", daemon=True).start()
        self.port = self._call(self._build(address, limits))

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _build(self, address: str, limits: GrpcLimits) -> int:
        message_limit = self.scorer.config.max_body_bytes + MESSAGE_OVERHEAD_BYTES
        self.servicer = ScoringServicer(self.scorer, self.pool)
        self.server = grpc.aio.server(
            interceptors=[KeyInterceptor(self.keys, self.scorer)] if self.keys.enabled else [],
            maximum_concurrent_rpcs=limits.max_calls,
            options=[
                ("grpc.max_receive_message_length", message_limit),
                ("grpc.max_send_message_length", message_limit),
                # beyond it gRPC's core closes a new connection before any code of ours runs
                ("grpc.max_allowed_incoming_connections", limits.max_connections),
                ("grpc.max_connection_idle_ms", limits.idle_connection_s * 1000),
                # a second scorer must not share this port (and split the clients)
                ("grpc.so_reuseport", 0),
            ],
        )
        self.server.add_generic_rpc_handlers((self.servicer.handler(),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        # never waited on: the listener may run on this loop (a model already warm)
        self.scorer.when_ready(self._announce_serving)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        try:
            if self.tls is not None:
                port = self.server.add_secure_port(address, self.tls.grpc_credentials())
            else:
                port = self.server.add_insecure_port(address)
        except RuntimeError as error:
            raise RuntimeError(f"gRPC cannot listen on {address} ({error})") from None
        if port == 0:
            raise RuntimeError(f"gRPC cannot listen on {address} (in use?)")
        return int(port)

    def _announce_serving(self) -> None:
        asyncio.run_coroutine_threadsafe(self._serving(), self.loop)

    async def _serving(self) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> None:
        self._call(self.server.start())

    def stop(self, grace: float) -> threading.Event:
        """Refuse new calls now; calls in flight get `grace`; streams end after their frame."""
        stopped = threading.Event()

        async def stop() -> None:
            self.servicer.stopping.set()
            await self.server.stop(grace)
            stopped.set()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)
        return stopped


def create_server(
    scorer: Scorer,
    address: str,
    limits: GrpcLimits,
    keys: ApiKeys = NO_KEYS,
    tls: TlsSource | None = None,
) -> tuple[GrpcServer, int]:
    """A gRPC server (not started) for the scorer, with health and reflection; and its port."""
    server = GrpcServer(scorer, address, limits, keys, tls)
    return server, server.port
