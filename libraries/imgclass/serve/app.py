"""The REST service and web page of a trained model (step 6): :func:`create_app`.

One :class:`~imgclass.model.predictor.Predictor` is loaded once by the caller and
shared by every request; its forward pass runs under a lock, decoding runs in
worker threads, so concurrent requests are safe. The app needs no network to
be built or tested (``scripts/6_deploy.py`` runs it under uvicorn with the
connection limits of :mod:`imgclass.serve.server`).

Hostile requests (issue 12; the threat model is SECURITY.md):

- no CPU work on the event loop: parsing JSON, validating it, base64 and
  image decoding and the network run in worker threads, at most
  ``max_concurrent_decodes`` requests at a time (the others wait without a
  thread), so ``/health`` and the page answer while big requests are worked on;
- a JSON body is refused with 413 before it is parsed if it holds far more
  values than ``max_images`` images need (counted as commas: a million-item
  list cost seconds to parse and validate), and a list longer than
  ``max_images`` before it is validated; nesting too deep for the parser is
  a 400, and at most three validation errors are formatted;
- every image is checked against the pixel budget from its header before it
  is decoded (:mod:`imgclass.io.images`), then decoded and transformed to
  the network's input one at a time, so a request holds at most one
  full-size decoded image;
- bodies: larger than ``max_request_bytes`` -> 413, not in within
  ``body_timeout_seconds`` -> 408 (:class:`BodyLimits`); multipart requests
  are parsed with at most ``max_images`` files.

Endpoints (the OpenAPI document is at ``/openapi.json``, browsable at ``/docs``):

``POST /score``
    The original tutorial's request, ``{"input_df": [{"image base64 string": "<b64>"}, ...]}``.
    The response is JSON (not a JSON string inside JSON): ``label``, ``score``,
    ``allScores`` (one probability per class id), ``Id2Labels`` and
    ``executionTimeMs`` describe the first row, so the original client works
    unchanged; ``results`` lists every row in order.
``POST /predict``
    Images as multipart file fields, or JSON ``{"images": ["<b64>", ...]}``;
    per image the ``top_k`` labels with calibrated probabilities.
``GET /health``, ``GET /labels``; ``GET /`` is the web page.

Errors are JSON ``{"detail": "<what is wrong>"}``: 400 bad payload (not JSON,
not base64, not a decodable image or one over the pixel budget, no image),
401 missing or wrong API key, 408 body not received in time, 413 request
larger than ``max_request_bytes`` or more than ``max_images`` images, 415
wrong content type.

The API key (``IMGCLASS_API_KEY``) guards ``/score``, ``/predict`` and
``/labels``; ``/health``, the page and the OpenAPI document stay open so that
probes and browsers can reach them. The key is compared in constant time and
never logged or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Protocol, Sequence, TypeVar

import anyio
import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclass.io.images import InvalidBase64Error, UnreadableImageError, decode_image_bytes
from imgclass.io.images import decode_base64_image as decode_base64
from imgclass.model.scores import top_k as ranked_labels
from imgclass.serve.client import API_KEY_ENV, SCORE_IMAGE_FIELD
from imgclass.parameters import Parameters

#: Folder of the web page (plain HTML/JS/CSS, shipped as package data).
STATIC_DIR = Path(__file__).resolve().parent / "static"


class ImagePredictor(Protocol):
    """What the service needs of a model (:class:`imgclass.model.predictor.Predictor` has it)."""

    model_name: str
    model_version: str

    @property
    def labels(self) -> list[str]: ...

    def predict(self, images: Sequence[Image.Image | np.ndarray]) -> Any: ...


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and access control of the service.

    Parameters
    ----------
    max_request_bytes:
        Larger request bodies are refused with 413 (checked on Content-Length
        and while the body streams in).
    max_images:
        More images in one request are refused with 413.
    top_k:
        Default number of labels per image returned by ``/predict``.
    max_pixels:
        Larger images (as decoded) get 400 before they are decoded (``images_maxPixels``).
    max_concurrent_decodes:
        Requests decoded and classified at the same time; the others wait.
    body_timeout_seconds:
        A body must arrive in full this long after its headers, else 408.
    max_connections, keep_alive_seconds, header_timeout_seconds:
        The HTTP server's limits (:func:`imgclass.serve.server.uvicorn_options`).
    api_key:
        If set, ``Authorization: Bearer <api_key>`` is required (401 otherwise).
        Kept out of ``repr`` so that it cannot end up in a log.
    """

    max_request_bytes: int = 20_000_000
    max_images: int = 16
    top_k: int = 5
    max_pixels: int = 40_000_000
    max_concurrent_decodes: int = 2
    body_timeout_seconds: float = 60.0
    max_connections: int = 64
    keep_alive_seconds: int = 5
    header_timeout_seconds: float = 10.0
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_parameters(cls, params: Parameters, environ: Mapping[str, str] | None = None) -> "ServiceSettings":
        """Settings from the ``deploy_*`` and ``images_maxPixels`` parameters; the key from ``$IMGCLASS_API_KEY``."""
        environ = os.environ if environ is None else environ
        return cls(max_request_bytes=params.deploy_maxRequestBytes, max_images=params.deploy_maxImages,
                   top_k=params.deploy_topK, max_pixels=params.images_maxPixels,
                   max_concurrent_decodes=params.deploy_maxConcurrentDecodes,
                   body_timeout_seconds=params.deploy_bodyTimeoutSeconds,
                   max_connections=params.deploy_maxConnections, keep_alive_seconds=params.deploy_keepAliveSeconds,
                   header_timeout_seconds=params.deploy_headerTimeoutSeconds,
                   api_key=environ.get(API_KEY_ENV) or None)

    def uvicorn_options(self, host: str, port: int, log_level: str = "info",
                        lifespan: str = "auto") -> dict[str, Any]:
        """``uvicorn.run``'s keyword arguments for serving with these connection limits
        (:func:`imgclass.serve.server.uvicorn_options`)."""
        from imgclass.serve.server import uvicorn_options

        return uvicorn_options(host, port, max_connections=self.max_connections,
                               keep_alive_seconds=self.keep_alive_seconds,
                               header_timeout_seconds=self.header_timeout_seconds, log_level=log_level,
                               lifespan=lifespan)


# --------------------------------------------------------------------------- request / response schemas
class ScoreRow(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    image_base64: str = Field(alias=SCORE_IMAGE_FIELD, description="base64 PNG or JPEG (a data: URL is accepted)")


class ScoreRequest(BaseModel):
    input_df: list[ScoreRow] = Field(description="one row per image, as in the original tutorial")


class PredictJsonRequest(BaseModel):
    images: list[str] = Field(description="base64 PNG or JPEG images (data: URLs accepted)")


class ScoreResult(BaseModel):
    label: str = Field(description="most probable class")
    score: float = Field(description="its calibrated probability")
    allScores: list[float] = Field(description="probability of every class, indexed by class id (sum 1)")


class ScoreResponse(ScoreResult):
    Id2Labels: dict[str, str] = Field(description="class id (as a string) -> label")
    executionTimeMs: float = Field(description="server time to decode and classify the request's images")
    results: list[ScoreResult] = Field(description="every input_df row in order; the top-level fields "
                                                   "repeat the first row's")
    model_name: str
    model_version: str


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    index: int = Field(description="position of the image in the request")
    filename: str | None = Field(description="the uploaded file's name (multipart only)")
    label: str = Field(description="most probable class")
    probability: float
    top_k: list[LabelProbability] = Field(description="the most probable labels, best first; the "
                                                      "probabilities of all classes sum to 1")


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    executionTimeMs: float
    predictions: list[ImagePrediction]


class HealthResponse(BaseModel):
    status: str
    model_name: str
    model_version: str
    num_labels: int
    api_key_required: bool


class LabelsResponse(BaseModel):
    labels: list[str]
    Id2Labels: dict[str, str]
    model_name: str
    model_version: str


class ErrorResponse(BaseModel):
    detail: str


def _json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema for the OpenAPI document, with its nested models written out in place.

    pydantic refers to them under ``$defs``, which in an OpenAPI document
    would have to be ``#/components/schemas/...``, where FastAPI lists only
    the models of responses: the references dangled (ScoreRow), and schema
    fuzzing could not build a /score request.
    """
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return inline(definitions[reference.rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


# --------------------------------------------------------------------------- request body limits
class RequestTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class RequestTimedOut(HTTPException):
    def __init__(self, seconds: float):
        super().__init__(408, f"request body not received within {seconds:g} s", headers={"Connection": "close"})


class BodyLimits:
    """ASGI middleware: 413 for bodies over ``max_bytes`` (by Content-Length or while streaming), 408 for a body
    that has not arrived in full ``timeout_seconds`` after the request's headers (a client dripping bytes)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await JSONResponse({"detail": "invalid Content-Length header"}, 400)(scope, receive, send)
                    return
                if declared > self.max_bytes:
                    response = JSONResponse({"detail": str(RequestTooLarge(self.max_bytes).detail)}, 413,
                                            headers={"Connection": "close"})
                    await response(scope, receive, send)
                    return
        received = 0
        complete = False
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_seconds is None else loop.time() + self.timeout_seconds

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete or deadline is None:
                message = await receive()  # after the body: only http.disconnect can come, whenever
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    raise RequestTimedOut(self.timeout_seconds or 0.0) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


# --------------------------------------------------------------------------- decoding and classifying
#: base64 text may be broken into lines; these bytes are dropped before decoding


def decode_base64_image(text: str, source: str) -> bytes:
    """The bytes of a base64 image string (plain, or a ``data:...;base64,`` URL); 400 if not base64."""
    try:
        return decode_base64(text, source)
    except InvalidBase64Error as exc:
        raise HTTPException(400, str(exc)) from None


#: most validation problems named in a 400's message
MAX_REPORTED_ERRORS = 3
#: a JSON body may hold this many values per image allowed (``max_images``), counted as commas before parsing
JSON_VALUES_PER_IMAGE = 16


def _validation_message(exc: ValidationError | RequestValidationError) -> str:
    errors = (exc.errors(include_url=False, include_input=False) if isinstance(exc, ValidationError)
              else exc.errors())
    problems = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"
        problems.append(f"{where}: {str(error.get('msg', 'invalid'))[:200]}")
    more = len(errors) - MAX_REPORTED_ERRORS
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def _require_content_type(request: Request, allowed: Sequence[str]) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in allowed:
        raise HTTPException(415, f"content type {content_type or '(none)'!r} is not accepted; "
                                 f"send {' or '.join(allowed)}")
    return content_type


ModelT = TypeVar("ModelT", bound=BaseModel)


def _read_upload(file: BinaryIO) -> bytes:
    file.seek(0)
    return file.read()


@contextlib.asynccontextmanager
async def _multipart_form(request: Request, max_files: int) -> Any:
    """``request.form()`` with at most ``max_files`` files and as many other fields: more files are a 413, like
    too many images in JSON, as soon as the parser meets the first one too many."""
    try:
        async with request.form(max_files=max_files, max_fields=max_files) as form:
            yield form
    except StarletteHTTPException as exc:
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            raise HTTPException(413, f"more than {max_files} images in one request; the limit is {max_files}") \
                from None
        raise


def parse_json_body(body: bytes, model: type[ModelT], list_field: str,
                    check_count: Callable[[int, str], None], max_values: int) -> ModelT:
    """A JSON request body validated as ``model``, cheapest checks first (run it in a worker thread).

    1. more than ``max_values`` commas: 413 before parsing (a bound on the
       number of values that costs one pass of ``bytes.count``);
    2. not JSON, or nested too deeply for the parser: 400;
    3. ``payload[list_field]`` is a list: ``check_count(len(list))`` before
       validation (413 for too many images, 400 for none);
    4. validation: 400 naming at most :data:`MAX_REPORTED_ERRORS` problems.
    """
    if body.count(b",") > max_values:
        raise HTTPException(413, f"the JSON body holds more than {max_values} values: far more than the images "
                                 f"a request may have")
    try:
        payload = json.loads(body)
    except RecursionError:
        raise HTTPException(400, "request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise HTTPException(400, f"request body is not valid JSON: {str(exc)[:200]}") from None
    if isinstance(payload, dict) and isinstance(payload.get(list_field), list):
        check_count(len(payload[list_field]), f"'{list_field}' is empty")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise HTTPException(400, f"unexpected JSON: {_validation_message(exc)}") from None


# --------------------------------------------------------------------------- the app
def create_app(predictor: ImagePredictor, settings: ServiceSettings | None = None, labeling: Any = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (see the module docstring for the endpoints).

    Parameters
    ----------
    predictor:
        A loaded model, e.g. ``load_predictor(layout)``; shared by all requests.
    settings:
        Limits and API key (default: :class:`ServiceSettings` defaults, no key).
    """
    settings = settings or ServiceSettings()
    labels = list(predictor.labels)
    id2labels = {str(i): label for i, label in enumerate(labels)}
    transform = getattr(predictor, "transform", None)
    draft_size = getattr(transform, "draft_size", None)

    app = FastAPI(
        title="imgclass",
        version=str(predictor.model_version),
        summary=f"Image classification with {predictor.model_name}",
        description="Classify images with a pretrained DNN + linear SVM. Send `Authorization: Bearer <key>` "
                    "to /score, /predict and /labels when the server has an API key.",
    )
    app.add_middleware(BodyLimits, max_bytes=settings.max_request_bytes,
                       timeout_seconds=settings.body_timeout_seconds)
    # Every request's CPU work runs in a worker thread holding one of these tokens: at most
    # max_concurrent_decodes at once, the rest wait on the event loop without a thread (anyio's limiter).
    work_limiter = anyio.CapacityLimiter(settings.max_concurrent_decodes)
    max_json_values = JSON_VALUES_PER_IMAGE * (settings.max_images + 4)

    async def in_worker(function: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(function, *args, limiter=work_limiter)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=400)

    bearer = HTTPBearer(auto_error=False, description="the server's IMGCLASS_API_KEY, when it has one")

    async def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.api_key is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, settings.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    def network_input(data: bytes, source: str) -> Image.Image | np.ndarray:
        """One image decoded and, when the predictor says how, transformed to the network's input at once,
        so that the full-size decoded image is freed before the next one is decoded."""
        try:
            image = decode_image_bytes(data, source, draft_size=draft_size, max_pixels=settings.max_pixels)
        except UnreadableImageError as exc:
            # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"): say what it is instead
            raise HTTPException(400, str(exc)) from None
        return image if transform is None else transform.to_array(image)

    def classify(sources: Sequence[tuple[str, Callable[[], bytes]]]) -> tuple[np.ndarray, float]:
        """Read, decode and classify (in a worker thread): probabilities ``(N, K)`` and milliseconds.

        ``sources`` are ``(name, read)`` pairs; each image's bytes are read
        (base64-decoded, or read from the upload's file) only when its turn comes.
        """
        start = time.perf_counter()
        inputs = [network_input(read(), source) for source, read in sources]
        probabilities = np.asarray(predictor.predict(inputs).probabilities, dtype=np.float64)
        return probabilities, (time.perf_counter() - start) * 1000.0

    def read_json(body: bytes, model: type[ModelT], list_field: str) -> ModelT:
        return parse_json_body(body, model, list_field, check_count, max_json_values)

    def check_count(count: int, what: str) -> None:
        if count == 0:
            raise HTTPException(400, f"no image in the request: {what}")
        if count > settings.max_images:
            raise HTTPException(413, f"{count} images in one request; the limit is {settings.max_images}")

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text}
        for code, text in [(400, "bad payload: not JSON, not base64, not a decodable image or one over the pixel "
                                 "budget, no image"),
                           (401, "missing or wrong API key"),
                           (408, "the body did not arrive in time"),
                           (413, "request too large or too many images"),
                           (415, "wrong content type")]}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", response_model=HealthResponse, tags=["service"])
    async def health() -> HealthResponse:
        """Liveness: the model is loaded. Needs no API key. Answered on the event loop, never behind image work."""
        return HealthResponse(status="ok", model_name=predictor.model_name, model_version=predictor.model_version,
                              num_labels=len(labels), api_key_required=settings.api_key is not None)

    @app.get("/labels", response_model=LabelsResponse, tags=["model"], dependencies=[Depends(require_api_key)],
             responses={401: errors[401]})
    async def get_labels() -> LabelsResponse:
        """The classes the model knows, in class-id order."""
        return LabelsResponse(labels=labels, Id2Labels=id2labels, model_name=predictor.model_name,
                              model_version=predictor.model_version)

    @app.post("/score", response_model=ScoreResponse, tags=["model"], dependencies=[Depends(require_api_key)],
              responses=errors,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": _json_body_schema(ScoreRequest)}}}})
    async def score(request: Request) -> ScoreResponse:
        """The original tutorial's scoring call: base64 images in ``input_df`` rows."""
        _require_content_type(request, ["application/json"])
        raw = await request.body()

        def work() -> tuple[np.ndarray, float]:
            body = read_json(raw, ScoreRequest, "input_df")
            check_count(len(body.input_df), "'input_df' is empty")
            return classify([(f"input_df[{i}]", functools.partial(
                decode_base64_image, row.image_base64, f"input_df[{i}]['{SCORE_IMAGE_FIELD}']"))
                for i, row in enumerate(body.input_df)])

        probabilities, milliseconds = await in_worker(work)
        results = [ScoreResult(label=labels[int(np.argmax(p))], score=float(np.max(p)), allScores=p.tolist())
                   for p in probabilities]
        first = results[0]
        return ScoreResponse(label=first.label, score=first.score, allScores=first.allScores, Id2Labels=id2labels,
                             executionTimeMs=milliseconds, results=results, model_name=predictor.model_name,
                             model_version=predictor.model_version)

    @app.post("/predict", response_model=PredictResponse, tags=["model"],
              dependencies=[Depends(require_api_key)], responses=errors,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": _json_body_schema(PredictJsonRequest)},
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["images"],
                      "properties": {"images": {"type": "array",
                                                "items": {"type": "string", "format": "binary"}}}}}}}})
    async def predict(request: Request,
                      top_k: int | None = Query(None, ge=1, description="labels per image (default: the "
                                                                         "server's deploy_topK)")) -> PredictResponse:
        """Top-k labels with calibrated probabilities for one or more images.

        Send the images as multipart file fields (any field name; ``images`` by
        convention) or as JSON ``{"images": ["<base64>", ...]}``.
        """
        content_type = _require_content_type(request, ["multipart/form-data", "application/json"])
        names: list[str | None]
        if content_type == "application/json":
            raw = await request.body()

            def work() -> tuple[list[str | None], tuple[np.ndarray, float]]:
                body = read_json(raw, PredictJsonRequest, "images")
                check_count(len(body.images), "'images' is empty")
                return [None] * len(body.images), classify(
                    [(f"images[{i}]", functools.partial(decode_base64_image, text, f"images[{i}]"))
                     for i, text in enumerate(body.images)])

            names, (probabilities, milliseconds) = await in_worker(work)
        else:
            async with _multipart_form(request, settings.max_images) as form:
                uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
                check_count(len(uploads), "send the images as multipart file fields named 'images'")
                names = [upload.filename for upload in uploads]
                probabilities, milliseconds = await in_worker(classify, [
                    (f"file {upload.filename or i!r}", functools.partial(_read_upload, upload.file))
                    for i, upload in enumerate(uploads)])
        predictions = []
        for index, (name, best) in enumerate(zip(names, ranked_labels(probabilities, labels,
                                                                       top_k or settings.top_k))):
            ranked = [LabelProbability(label=label, probability=probability) for label, probability in best]
            predictions.append(ImagePrediction(index=index, filename=name, label=ranked[0].label,
                                               probability=ranked[0].probability, top_k=ranked))
        return PredictResponse(model_name=predictor.model_name, model_version=predictor.model_version,
                               executionTimeMs=milliseconds, predictions=predictions)

    if labeling is not None:  # /label, /results and their API (imgclass.serve.labeling_api.LabelingService)
        labeling.mount(app, require_api_key)
    return app


def warm_up(predictor: ImagePredictor, rounds: int = 3) -> float:
    """Classify a blank image ``rounds`` times; return the seconds it took.

    The first forward passes on the CPU are many times slower than the rest
    (the math library prepares its kernels for the input shape: seconds each,
    measured in BENCHMARKS.md); doing them before the server listens keeps
    that off the first users' requests.
    """
    start = time.perf_counter()
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    for _ in range(rounds):
        predictor.predict([blank])
    return time.perf_counter() - start


@contextlib.contextmanager
def serve_in_background(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                        settings: ServiceSettings | None = None) -> Iterator[str]:
    """Run ``app`` under uvicorn in a daemon thread; yield its base URL, stop on exit.

    ``port=0`` picks a free port (the socket is bound before uvicorn starts, so
    there is no race). The connection limits are those of ``settings``
    (default: :class:`ServiceSettings`'s). For tests, benchmarks and
    notebooks; scripts/6_deploy.py runs uvicorn in the foreground instead.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    options = (settings or ServiceSettings()).uvicorn_options(host, port, log_level=log_level, lifespan="off")
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="imgclass-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        bound_port = sock.getsockname()[1]
        yield f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def describe_settings(settings: ServiceSettings) -> str:
    """A few lines for the server log; says whether a key is required, never the key."""
    key = f"required (from ${API_KEY_ENV})" if settings.api_key else f"not required (${API_KEY_ENV} unset)"
    return (f"max request {settings.max_request_bytes} bytes, max {settings.max_images} images per request "
            f"of at most {settings.max_pixels / 1e6:g} MP each, {settings.max_concurrent_decodes} decoded at a "
            f"time, top {settings.top_k} labels;\n"
            f"  {settings.max_connections} connections, headers within {settings.header_timeout_seconds:g} s, "
            f"bodies within {settings.body_timeout_seconds:g} s, idle connections closed after "
            f"{settings.keep_alive_seconds} s; API key {key} (query strings are not logged)")


__all__ = ["API_KEY_ENV", "ServiceSettings", "create_app", "describe_settings", "decode_base64_image",
           "BodyLimits", "STATIC_DIR", "SCORE_IMAGE_FIELD", "parse_json_body", "serve_in_background", "warm_up"]
