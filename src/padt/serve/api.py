"""The HTTP API of ``padt serve`` (FastAPI), on one :class:`~padt.inference.PaDT` pipeline.

Endpoints:

- ``POST /v1/predict``: an image (multipart upload, or base64 / ``data:`` URL in JSON), ``task``, ``prompt`` and
  decoding options -> ``padt predict``'s JSON (text, objects with boxes, masks, scores) plus image sizes and
  timing.
- ``POST /v1/chat/completions``: OpenAI-compatible (one user message with text and ``image_url`` data URLs);
  the answer in ``choices[0].message.content``, the objects in ``choices[0].message.objects``.
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text format).

Every request is decoded with the others that arrive with it in one batched ``generate``
(:mod:`padt.serve.batching`). Errors are JSON in OpenAI's shape, ``{"error": {"message", "type", "code"}}``,
with one-line messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from padt.errors import PaDTError
from padt.serve.batching import DynamicBatcher, QueueFull, ShuttingDown
from padt.serve.images import ImageLimits, ImageRejected, bytes_from_string, decode_image
from padt.tasks import TASK_NAMES, get_task

log = logging.getLogger("padt.serve")

#: Longest prompt text accepted, in characters.
MAX_PROMPT_CHARS = 8192


@dataclass
class ServeSettings:
    """What ``padt serve`` is configured with (see its ``--help``)."""

    model_name: str = "padt"
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    request_timeout_s: float = 120.0
    max_new_tokens: int = 512
    max_images: int = 4
    limits: ImageLimits = field(default_factory=ImageLimits)
    api_key: str | None = None

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: every image base64-encoded at its limit, plus 1 MiB for the rest."""
        return self.max_images * (self.limits.max_bytes * 4 // 3 + 4) + 2**20


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    body = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    return JSONResponse(body, status_code=status, headers=headers)


# ============================================================================ requests
@dataclass(frozen=True)
class DecodeOptions:
    """The options one ``generate`` call shares: requests are batched only when these are equal."""

    max_new_tokens: int
    vrt_repeat_penalty: float | None
    vrt_reuse_penalty: float | None
    mask_box_weight: float | None
    ovd_end_penalty: float | None
    ovd_duplicate_iou: float | None
    ovd_grammar: bool | None
    masks: bool


@dataclass
class PredictJob:
    """One request's sample: its images, its prompt text and its task (None: the prompt as written)."""

    images: list[Image.Image]
    prompt: str
    task: str | None


class PredictOptions(BaseModel):
    """The fields of ``/v1/predict`` besides the images."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = None
    prompt: str = ""
    max_new_tokens: int | None = Field(default=None, ge=1)
    vrt_repeat_penalty: float | None = Field(default=None, ge=0)
    vrt_reuse_penalty: float | None = Field(default=None, ge=0)
    mask_box_weight: float | None = Field(default=None, ge=0, le=1)
    ovd_end_penalty: float | None = Field(default=None, ge=0)
    ovd_duplicate_iou: float | None = Field(default=None, ge=0, le=1)
    ovd_grammar: bool | None = None
    masks: bool = True


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat completion request this server honours; any other field is refused rather
    than silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    seed: int | None = None  # decoding is greedy, so any seed gives the same answer
    user: str | None = None
    # padt's own fields (``extra_body`` in the openai client)
    task: str | None = None
    vrt_repeat_penalty: float | None = Field(default=None, ge=0)
    vrt_reuse_penalty: float | None = Field(default=None, ge=0)
    mask_box_weight: float | None = Field(default=None, ge=0, le=1)
    ovd_end_penalty: float | None = Field(default=None, ge=0)
    ovd_duplicate_iou: float | None = Field(default=None, ge=0, le=1)
    ovd_grammar: bool | None = None
    masks: bool = True


def _validation_message(error: ValidationError | RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "extra_forbidden":
        return f"unknown field {where!r}; this server does not support it"
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON"
    return f"{where or 'body'}: {first.get('msg', 'invalid value')}"


# ============================================================================ metrics
class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        disable_created_metrics()  # no *_created series: one line per counter, as scrapers expect
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("padt_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "padt_request_seconds",
            "Time from request to response",
            ["endpoint"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.batch_size = Histogram(
            "padt_batch_size",
            "Requests per batched generate call",
            registry=r,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
        )
        self.batch_seconds = Histogram(
            "padt_batch_seconds",
            "Time of one batched call (generate and decoding)",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.queue_seconds = Histogram(
            "padt_queue_seconds",
            "Time a request waited for its batch",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.objects = Counter("padt_objects", "Objects decoded", registry=r)
        Gauge("padt_queue_length", "Requests waiting for a batch", registry=r).set_function(
            lambda: batcher.queue_length
        )
        Gauge("padt_in_flight", "Requests in the running batch", registry=r).set_function(
            lambda: batcher.in_flight
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


# ============================================================================ middleware
class BodyLimit:
    """413 for request bodies over ``limit`` bytes, before the app reads them (pure ASGI)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "request_too_large",
            f"the request body is over this server's limit of {self.limit:,} bytes; send fewer or smaller images",
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


# ============================================================================ the app
def create_app(pipe: Any, settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving ``pipe`` (a :class:`~padt.inference.PaDT`) with ``settings``."""

    def run_batch(jobs: list[PredictJob], options: DecodeOptions) -> list[Any]:
        return pipe(
            [job.images for job in jobs],
            [job.prompt for job in jobs],
            task=[job.task for job in jobs],
            max_new_tokens=options.max_new_tokens,
            vrt_repeat_penalty=options.vrt_repeat_penalty,
            vrt_reuse_penalty=options.vrt_reuse_penalty,
            mask_box_weight=options.mask_box_weight,
            ovd_end_penalty=options.ovd_end_penalty,
            ovd_duplicate_iou=options.ovd_duplicate_iou,
            ovd_grammar=options.ovd_grammar,
            decode_masks=options.masks,
        )

    batcher = DynamicBatcher(
        lambda items: run_batch([job for job, _ in items], items[0][1]),
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
    )
    metrics = Metrics(batcher)

    def on_batch(size: int, seconds: float) -> None:
        metrics.batch_size.observe(size)
        metrics.batch_seconds.observe(seconds)

    batcher.on_batch = on_batch

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="padt",
        summary="PaDT grounding: text, boxes, masks and scores over HTTP",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,  # the doc pages load scripts from a CDN
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.settings = settings

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = {
            404: f"no endpoint {request.url.path}; see GET /v1/models, POST /v1/predict, "
            "POST /v1/chat/completions, GET /health, GET /metrics",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(error.status_code, str(error.detail))
        return error_response(error.status_code, codes.get(error.status_code, "http_error"), message)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(
            500, "internal_error", f"internal error ({type(error).__name__}); see the server log"
        )

    # ------------------------------------------------------------------ metrics and auth
    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            endpoint = getattr(request.scope.get("route"), "path", None) or "unmatched"
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        ):
            raise APIError(
                401,
                "invalid_api_key",
                "missing or wrong API key; send 'Authorization: Bearer KEY'",
                {"WWW-Authenticate": "Bearer"},
            )

    # ------------------------------------------------------------------ inference
    def options_for(
        max_new_tokens: int | None,
        vrt_repeat_penalty: float | None,
        vrt_reuse_penalty: float | None,
        mask_box_weight: float | None,
        ovd_end_penalty: float | None,
        ovd_duplicate_iou: float | None,
        ovd_grammar: bool | None,
        masks: bool,
    ) -> DecodeOptions:
        limit = settings.max_new_tokens
        if max_new_tokens is not None and max_new_tokens > limit:
            raise APIError(
                422,
                "invalid_parameter",
                f"max_new_tokens {max_new_tokens} is over this server's limit of {limit}",
            )
        return DecodeOptions(
            max_new_tokens or limit,
            vrt_repeat_penalty,
            vrt_reuse_penalty,
            mask_box_weight,
            ovd_end_penalty,
            ovd_duplicate_iou,
            ovd_grammar,
            masks,
        )

    def check_text(prompt: str, task: str | None) -> str | None:
        """The normalised task; 422 for an unknown task or a prompt the task cannot use."""
        if task is not None:
            task = task.strip().lower() or None
        if task is not None and task not in TASK_NAMES:
            raise APIError(
                422,
                "unknown_task",
                f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)} "
                "or leave it out to use the prompt as written",
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise APIError(
                422,
                "invalid_parameter",
                f"the prompt has {len(prompt)} characters, over the limit of {MAX_PROMPT_CHARS}",
            )
        if task is None and not prompt.strip():
            raise APIError(
                422, "empty_prompt", "the prompt is empty; send a prompt, or a task (ric needs no text)"
            )
        if task is not None:
            try:
                get_task(task).prompt(prompt)
            except PaDTError as error:
                raise APIError(422, "empty_prompt", str(error)) from None
        return task

    def check_image_count(sources: list[bytes | str]) -> None:
        if not sources:
            raise APIError(
                422,
                "missing_image",
                "no image in the request; send one (multipart field 'image', "
                "'image' as base64 / a data: URL in JSON, or an image_url part in chat)",
            )
        if len(sources) > settings.max_images:
            raise APIError(
                413,
                "too_many_images",
                f"{len(sources)} images, over this server's limit of {settings.max_images} per request",
            )

    async def infer(job: PredictJob, options: DecodeOptions) -> tuple[Any, dict[str, float]]:
        start = time.perf_counter()
        try:
            prediction, info = await batcher.submit(
                (job, options), key=options, timeout=settings.request_timeout_s
            )
        except QueueFull as full:
            raise APIError(
                503,
                "queue_full",
                f"the server is busy ({settings.max_queue} requests waiting); retry in {full.retry_after} s",
                {"Retry-After": str(full.retry_after)},
            ) from None
        except ShuttingDown:
            raise APIError(
                503,
                "shutting_down",
                "the server is shutting down; retry on another replica",
                {"Retry-After": "1"},
            ) from None
        except TimeoutError:
            raise APIError(
                504,
                "timeout",
                f"the request did not finish within this server's timeout of "
                f"{settings.request_timeout_s:g} s",
            ) from None
        except PaDTError as error:
            raise APIError(422, "invalid_request", str(error)) from None
        metrics.queue_seconds.observe(info.queued_s)
        metrics.objects.inc(len(prediction.objects))
        timing = {
            "queue_ms": round(1e3 * info.queued_s, 3),
            "inference_ms": round(1e3 * info.run_s, 3),
            "total_ms": round(1e3 * (time.perf_counter() - start), 3),
            "batch_size": info.batch_size,
        }
        return prediction, timing

    async def decode_all(sources: list[bytes | str]) -> list[Image.Image]:
        def decode() -> list[Image.Image]:
            images = []
            for i, source in enumerate(sources):
                what = "image" if len(sources) == 1 else f"image {i}"
                data = bytes_from_string(source, settings.limits, what) if isinstance(source, str) else source
                images.append(decode_image(data, settings.limits, what))
            return images

        try:
            return await asyncio.to_thread(decode)
        except ImageRejected as error:
            raise APIError(error.status, error.code, str(error)) from None

    # ------------------------------------------------------------------ endpoints
    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and load: for load balancers' health checks (no API key needed)."""
        return {
            "status": "ok",
            "model": settings.model_name,
            "queue_length": batcher.queue_length,
            "in_flight": batcher.in_flight,
            "max_batch_size": settings.max_batch_size,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format (no API key needed)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {
            "object": "list",
            "data": [{"id": settings.model_name, "object": "model", "created": 0, "owned_by": "padt"}],
        }

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        """One image (or several) and a prompt -> ``padt predict``'s JSON, plus ``images`` sizes and ``timing``.

        Send multipart/form-data (file field ``image``, repeatable; fields ``task``, ``prompt``,
        ``max_new_tokens``, ``vrt_repeat_penalty``, ``vrt_reuse_penalty``, ``mask_box_weight``,
        ``ovd_end_penalty``, ``ovd_duplicate_iou``, ``ovd_grammar``, ``masks``) or JSON (``image``: base64 or a
        data: URL, or ``images``: a list of them, and the same fields)."""
        check_key(request)
        fields, sources = await _predict_body(request)
        try:
            options = PredictOptions.model_validate(fields)
        except ValidationError as error:
            raise APIError(422, "invalid_parameter", _validation_message(error)) from None
        decode = options_for(
            options.max_new_tokens,
            options.vrt_repeat_penalty,
            options.vrt_reuse_penalty,
            options.mask_box_weight,
            options.ovd_end_penalty,
            options.ovd_duplicate_iou,
            options.ovd_grammar,
            options.masks,
        )
        task = check_text(options.prompt, options.task)
        check_image_count(sources)
        images = await decode_all(sources)
        prediction, timing = await infer(PredictJob(images, options.prompt, task), decode)
        return prediction.to_json() | {
            "images": [{"width": im.width, "height": im.height} for im in images],
            "model": settings.model_name,
            "timing": timing,
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        """OpenAI-compatible chat completion; the decoded objects are in ``choices[0].message.objects``."""
        check_key(request)
        try:
            chat = ChatRequest.model_validate(await _json_body(request))
        except ValidationError as error:
            raise APIError(422, "invalid_parameter", _validation_message(error)) from None
        if chat.model != settings.model_name:
            raise APIError(
                404,
                "model_not_found",
                f"model {chat.model!r} is not served here; this server serves "
                f"{settings.model_name!r} (GET /v1/models)",
            )
        _check_chat_decoding(chat)
        text, sources = _chat_inputs(chat)
        max_new = chat.max_completion_tokens or chat.max_tokens
        decode = options_for(
            max_new,
            chat.vrt_repeat_penalty,
            chat.vrt_reuse_penalty,
            chat.mask_box_weight,
            chat.ovd_end_penalty,
            chat.ovd_duplicate_iou,
            chat.ovd_grammar,
            chat.masks,
        )
        task = check_text(text, chat.task)
        check_image_count(sources)
        images = await decode_all(sources)
        prediction, timing = await infer(PredictJob(images, text, task), decode)
        body = prediction.to_json()
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": settings.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": prediction.text, "objects": body["objects"]},
                    "finish_reason": "stop" if prediction.finished else "length",
                    "logprobs": None,
                }
            ],
            "padt": {
                "images": [{"width": im.width, "height": im.height} for im in images],
                "warnings": body["warnings"],
                "finished": body["finished"],
                "timing": timing,
            },
        }

    return app


# ============================================================================ request bodies
async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise APIError(422, "invalid_json", "the body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise APIError(422, "invalid_json", f"the body is not valid JSON ({error})") from None


async def _predict_body(request: Request) -> tuple[dict[str, Any], list[bytes | str]]:
    """``(fields, image sources)`` of a multipart or JSON ``/v1/predict`` request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except Exception as error:  # malformed multipart
            raise APIError(422, "invalid_request", f"the form could not be read ({error})") from None
        sources: list[bytes | str] = []
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name in ("image", "images"):
                sources.append(await value.read() if hasattr(value, "read") else str(value))
            elif name in fields:
                raise APIError(422, "invalid_parameter", f"field {name!r} is given twice")
            elif hasattr(value, "read"):
                raise APIError(
                    422, "invalid_parameter", f"field {name!r} is a file; only 'image' takes files"
                )
            else:
                fields[name] = value
        return fields, sources
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise APIError(422, "invalid_json", "the body must be a JSON object")
    body = dict(body)
    sources = []
    if "image" in body:
        sources.append(body.pop("image"))
    if "images" in body:
        listed = body.pop("images")
        if not isinstance(listed, list):
            raise APIError(
                422, "invalid_parameter", "'images' must be a list of base64 strings or data: URLs"
            )
        sources.extend(listed)
    for i, source in enumerate(sources):
        if not isinstance(source, str):
            raise APIError(
                422,
                "invalid_image",
                f"image {i} must be a base64 string or a data: URL, got {type(source).__name__}",
            )
    return body, sources


def _check_chat_decoding(chat: ChatRequest) -> None:
    """Refuse what greedy single-answer decoding cannot honour, instead of ignoring it."""
    if chat.stream:
        raise APIError(422, "invalid_parameter", "stream=true is not supported; send stream=false")
    if chat.n not in (None, 1):
        raise APIError(
            422, "invalid_parameter", "n must be 1 (decoding is greedy: every answer would be the same)"
        )
    if chat.temperature not in (None, 0, 0.0):
        raise APIError(422, "invalid_parameter", "decoding is greedy; leave temperature out or set it to 0")
    if chat.top_p not in (None, 1, 1.0):
        raise APIError(422, "invalid_parameter", "decoding is greedy; leave top_p out or set it to 1")


def _chat_inputs(chat: ChatRequest) -> tuple[str, list[str]]:
    """The prompt text and the image sources of a chat request (one user message)."""
    roles = [m.role for m in chat.messages]
    if roles != ["user"]:
        raise APIError(
            422,
            "invalid_parameter",
            f"messages must be exactly one user message (got roles {roles}); "
            "the model answers one turn with its own system prompt",
        )
    content = chat.messages[0].content
    if content is None:
        raise APIError(422, "invalid_parameter", "the user message has no content")
    if isinstance(content, str):
        return content, []
    texts, sources = [], []
    for i, part in enumerate(content):
        kind = part.type
        if kind == "text":
            texts.append(part.text or "")
        elif kind == "image_url":
            url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
            if not url:
                raise APIError(422, "missing_image", f"content part {i} has no image_url.url")
            sources.append(url)
        else:
            raise APIError(
                422,
                "invalid_parameter",
                f"content part {i} has type {kind!r}; send 'text' and 'image_url' parts",
            )
    return "\n".join(t for t in texts if t), sources
