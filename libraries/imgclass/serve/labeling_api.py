"""The labeling page (``/label``) and the results page (``/results``) of the service, and their JSON API.

Mounted by :func:`imgclass.serve.app.create_app` when it is given a
:class:`LabelingService` (``scripts/6_deploy.py`` builds one from the
parameters). The pages are static files (``static/label.html``,
``static/results.html``); everything they show comes from the API below,
which needs the same API key as ``/predict`` (``Authorization: Bearer
<key>``; the pages ask for it and keep it in the browser tab, and fetch the
thumbnails with it too).

``GET /api/label/queue``
    The queue, least sure first (:meth:`LabelingSession.queue`).
``POST /api/label/decide``
    ``{"item": "<path relative to images/>", "decision": "label"|"exclude"|"skip", "label": "<class>"}``.
``POST /api/label/undo``
    Reverse the latest decision (409 if it cannot be, 404 if there is none).
``GET /api/label/log``
    The latest decisions, newest first.
``GET|POST /api/label/retrain``
    Where the retraining stands / start one (steps 1-5 in a child process).
``GET /api/label/image?item=...``
    A JPEG thumbnail of a queue image (decoded and re-encoded: the file itself is never sent).
``GET /api/results``, ``GET /api/results/options``, ``GET /api/results/image?path=...``
    Batch scoring's rows filtered by label, score range, model version and
    folder, sorted (least sure first by default); the filters' choices; a
    thumbnail of an image the database lists (only those).
``POST /api/results/request``
    ``{"path": "<absolute path from the results>"}``: send an image of the
    dataset or of its unlabeled folder to the front of the labeling queue.

Errors are JSON ``{"detail": ...}``: 400 bad input (unknown class, a path
outside the dataset, a bad filter), 401 missing or wrong key, 404 no such
image, 409 a move or undo that cannot be made now (nothing was moved).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from imgclass.io.images import UnreadableImageError, is_image_file, load_rgb
from imgclass.parameters import Parameters
from imgclass.serve.database import SORTS, DatabaseError, ResultsFilter
from imgclass.serve.labeling import LabelingConfig, LabelingError, LabelingSession, Retrainer

#: Folder of the pages (shared with the service's own page).
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Longest side of a thumbnail, and of an image opened from the results page.
THUMBNAIL_SIDE, LARGE_SIDE = 480, 1024


@dataclass
class LabelingService:
    """What the service needs to serve the labeling and results pages: the session and its retrainer."""

    session: LabelingSession
    retrainer: Retrainer | None = None

    @classmethod
    def from_parameters(cls, params: Parameters, predictor: Any) -> "LabelingService":
        """The queue of ``datasetName`` ranked by ``predictor``; retraining reloads ``proc/<ds>/``."""
        from imgclass.serve.predictor import load_predictor

        config = LabelingConfig.from_parameters(params)
        session = LabelingSession(config, predictor)
        retrainer = Retrainer(session, lambda: load_predictor(config.layout, config.run_device, config.run_precision))
        return cls(session, retrainer)

    def mount(self, app: FastAPI, require_api_key: Callable[..., None]) -> None:
        """Add the pages and the API to ``app``, guarded by ``require_api_key``.

        Nothing is scored until the labeling page asks for its queue: a
        service nobody labels with spends no CPU on it.
        """
        app.include_router(pages_router())
        app.include_router(api_router(self, require_api_key))


# --------------------------------------------------------------------------- request bodies
class DecideRequest(BaseModel):
    item: str = Field(max_length=4096, description="the image: its path relative to images/, as the queue "
                                                   "names it")
    decision: Literal["label", "exclude", "skip"]
    label: str | None = Field(None, max_length=255, description="the class, for decision 'label'")


class ReviewRequest(BaseModel):
    path: str = Field(max_length=4096, description="absolute path of the image, as the results list it")


# --------------------------------------------------------------------------- helpers
def _http(exc: LabelingError | DatabaseError) -> HTTPException:
    status = exc.status if isinstance(exc, LabelingError) else 503
    return HTTPException(status, str(exc))


def thumbnail(path: Path, side: int) -> bytes:
    """The image decoded (with the project's decoding limits), shrunk to ``side`` pixels, as JPEG bytes."""
    try:
        image = load_rgb(path, draft_size=(side, side))
    except UnreadableImageError as exc:
        raise HTTPException(422, f"cannot show this image: {exc}") from None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _jpeg(data: bytes) -> Response:
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store",
                                                            "X-Content-Type-Options": "nosniff"})


# --------------------------------------------------------------------------- routers
def pages_router() -> APIRouter:
    """``/label`` and ``/results``: static pages (open, like ``/``; their data needs the key)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/label")
    def label_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "label.html", media_type="text/html")

    @router.get("/results")
    def results_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "results.html", media_type="text/html")

    return router


def api_router(service: LabelingService, require_api_key: Callable[..., None]) -> APIRouter:
    """The JSON API of both pages (see the module docstring)."""
    session = service.session
    router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)], tags=["labeling"],
                       responses={400: {"description": "bad input"}, 401: {"description": "missing or wrong API key"},
                                  404: {"description": "no such image"},
                                  409: {"description": "cannot be done now; nothing was moved"}})

    @router.get("/label/queue")
    def queue(limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        """The images to decide on, least sure first, with the model's top guesses and the progress."""
        try:
            answer = session.queue(limit)
        except (LabelingError, DatabaseError) as exc:
            raise _http(exc) from None
        answer["retrain"] = asdict(service.retrainer.status) if service.retrainer else None
        answer["can_retrain"] = bool(service.retrainer and service.retrainer.available)
        return answer

    @router.post("/label/decide")
    def decide(body: DecideRequest) -> dict[str, Any]:
        """A class, 'exclude' or 'skip' for one image; moves the file (never deletes it) and logs it."""
        try:
            return session.decide(body.item, body.decision, body.label).as_json()
        except (LabelingError, DatabaseError) as exc:
            raise _http(exc) from None

    @router.post("/label/undo")
    def undo() -> dict[str, Any]:
        """Reverse the latest decision: the file goes back where it was."""
        try:
            undone = session.undo()
        except (LabelingError, DatabaseError) as exc:
            raise _http(exc) from None
        if undone is None:
            raise HTTPException(404, "nothing to undo")
        return undone.as_json()

    @router.get("/label/log")
    def log(limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
        """The latest entries of the labeling log, newest first."""
        try:
            entries = session.log()
        except LabelingError as exc:
            raise _http(exc) from None
        return {"entries": [d.as_json() for d in reversed(entries[-limit:])], "total": len(entries)}

    @router.get("/label/retrain")
    def retrain_status() -> dict[str, Any]:
        """Where the latest retraining stands."""
        if service.retrainer is None:
            raise HTTPException(404, "this service cannot retrain")
        return asdict(service.retrainer.status)

    @router.post("/label/retrain", status_code=202)
    def retrain() -> dict[str, Any]:
        """Rerun steps 1-5 in the background; the new model ranks the queue when it is done."""
        if service.retrainer is None:
            raise HTTPException(404, "this service cannot retrain")
        try:
            return asdict(service.retrainer.start())
        except LabelingError as exc:
            raise _http(exc) from None

    @router.get("/label/image")
    def label_image(item: str = Query(max_length=4096), large: bool = False) -> Response:
        """A thumbnail of a queue image."""
        try:
            path, _ = session.resolve(item)
        except LabelingError as exc:
            raise _http(exc) from None
        return _jpeg(thumbnail(path, LARGE_SIDE if large else THUMBNAIL_SIDE))

    @router.get("/results")
    def results(label: str | None = Query(None, max_length=255),
                score_min: float | None = Query(None, ge=0, le=1), score_max: float | None = Query(None, ge=0, le=1),
                model_version: str | None = Query(None, max_length=255),
                folder: str | None = Query(None, max_length=4096),
                sort: str = Query("least_sure", description=f"one of {', '.join(SORTS)}"),
                limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """Batch scoring's rows, filtered and sorted, one page at a time."""
        if sort not in SORTS:
            raise HTTPException(400, f"unknown sort {sort[:50]!r}; use one of {', '.join(SORTS)}")
        where = ResultsFilter(label or None, score_min, score_max, model_version or None, folder or None)
        try:
            total, rows = session.database.query(where, sort, limit, offset)
        except DatabaseError as exc:
            raise _http(exc) from None
        for row in rows:
            path = Path(row["path"])
            row["exists"] = path.is_file()
            try:
                row["item"] = session.resolve_absolute(row["path"]) if row["exists"] else None
            except LabelingError:
                row["item"] = None  # outside the dataset: can be looked at, not labeled here
        return {"total": total, "offset": offset, "rows": rows}

    @router.get("/results/options")
    def options() -> dict[str, Any]:
        """What the filters can choose from: model versions (newest first), labels, folders."""
        try:
            versions = session.database.model_versions()
            return {"model_versions": [asdict(v) for v in versions],
                    "current_model_version": session.predictor.model_version,
                    "labels": session.database.distinct("label"), "folders": session.database.distinct("folder"),
                    "sorts": list(SORTS)}
        except DatabaseError as exc:
            raise _http(exc) from None

    @router.get("/results/image")
    def results_image(path: str = Query(max_length=4096), large: bool = False) -> Response:
        """A thumbnail of an image the results database lists (no other file is served)."""
        try:
            listed = session.database.has_path(path)
        except DatabaseError as exc:
            raise _http(exc) from None
        if not listed:
            raise HTTPException(404, "no such image in the results database")
        file = Path(path)
        if not is_image_file(file) or not file.is_file():
            raise HTTPException(404, "the image is no longer there (moved or deleted since it was scored)")
        return _jpeg(thumbnail(file, LARGE_SIDE if large else THUMBNAIL_SIDE))

    @router.post("/results/request")
    def request_review(body: ReviewRequest) -> dict[str, Any]:
        """Send an image of the dataset or of its unlabeled folder to the front of the labeling queue."""
        try:
            return {"item": session.request_review(body.path)}
        except (LabelingError, DatabaseError) as exc:
            raise _http(exc) from None

    return router


__all__ = ["LabelingService", "api_router", "pages_router", "thumbnail"]
