"""The REST service (docs/serving.md): the routes, a thin BentoML layer over :class:`serving.predictor.Predictor`.

Run it from the repository root (``bentofile.yaml`` points here)::

    bentoml serve                                  # model: mask-classifier:latest from the store
    MASK_MODEL=path/to/model.onnx bentoml serve    # or any .onnx file / model folder
    curl -F image=@photo.jpg http://localhost:3000/predict

Routes: ``POST /predict`` (multipart ``image``), ``POST /predict_batch`` (``images``, repeated),
``GET /model``, the ``/submission`` task (``info`` CSV + ``archive`` zip/tar → submission CSV), ``POST /infer``
(base64 uint8 pixels), ``POST /explain`` (class-activation heatmap), the ``/ui/`` page and BentoML's ``/readyz``, ``/livez``, ``/metrics``,
the Swagger UI at ``/`` and the OpenAPI schema at ``/docs.json``.
Limits, batching and the API key come from ``MASK_*`` environment variables (:mod:`serving.settings`).
Importing this module does nothing: ``MaskClassifier`` (what ``bentoml serve`` and ``bentoml build``
load) is declared on first access by :func:`declare` from :func:`serving.settings.get_settings`,
read once in each process, and that one :class:`Settings` is handed to the worker count, the guard,
the predictor and the task queue. ``declare(settings)`` builds the same service from any settings.

Each handler parses, calls the Predictor and answers; a refusal is raised as a typed error of
:mod:`serving.errors` and answered in one place, :func:`serving.refusals.answers_refusals`. What
this service does differently from a plain BentoML one lives each in its own module, with the reason
and a test that pins the BentoML behaviour it works around: :mod:`serving.uploads` (photos arrive as
files and are decoded there, with a 4xx reason for each bad one), :mod:`serving.refusals`,
:mod:`serving.disconnect` (a gone client's images leave the queue), :mod:`serving.request_timeout`,
:mod:`serving.guard` (API key, body limits, multipart checks, ``GET /model``), :mod:`serving.contract`
(one error shape, the exact OpenAPI document) and the ``/submission`` task routes
(:mod:`serving.task_routes`). Handlers get the request through BentoML's documented
``ctx: bentoml.Context`` parameter;
``/predict``, ``/predict_batch`` and ``/infer`` decode in worker threads, then queue their images on
:class:`serving.batching.Batcher` (``MASK_MAX_BATCH_SIZE``, ``MASK_BATCH_WAIT_MS``, ``MASK_MAX_QUEUE``);
batch sizes, queue times, model calls and rejections are on ``/metrics``, beside the prediction
counters of :mod:`serving.monitoring`.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import typing as t
from pathlib import Path

import anyio
import bentoml
import numpy as np
from starlette.responses import JSONResponse, Response

from maskdata.artifact import MODEL_FILE, STORE_NAME
from serving import monitoring, request_timeout, task_routes, ui
from serving.batching import Batcher, QueueFull
from serving.contract import ErrorEnvelope
from serving.disconnect import unless_disconnected
from serving.explain import Explainer, ExplainUnavailable, availability
from serving.errors import NotAvailable, ServiceBusy
from serving.guard import MULTIPART_FIELDS, RequestGuard, body_limits
from serving.predictor import Predictor
from serving.refusals import answers_refusals
from serving.schemas import ModelInfo, Prediction
from serving.settings import Settings, get_settings
from serving.task_queue import TaskQueue
from serving.tasks import TaskStore
from serving.uploads import decode_uploads

log = logging.getLogger(__name__)


def _store_model(settings: Settings) -> bentoml.models.BentoModel | None:
    """A store tag is declared on the class so ``bentoml build`` packages the model; paths are not."""
    source = settings.model_source
    if settings.backend != "onnx" or source.endswith(".onnx") or os.sep in source or Path(source).exists():
        return None
    return bentoml.models.BentoModel(source)


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode("ascii")


def _unpack(text: str, shape: tuple[int, int, int]) -> np.ndarray | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return None
    if len(raw) != shape[0] * shape[1] * shape[2]:
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


class ClassifierService:
    """The service's routes; :func:`declare` makes it a BentoML service for one :class:`Settings`
    (the ``settings`` and ``model_ref`` class attributes)."""

    settings: Settings
    model_ref: bentoml.models.BentoModel | None = None

    def __init__(self) -> None:
        self.settings = type(self).settings
        declared = _store_model(self.settings)
        packaged = type(self).model_ref   # on the class: the declaration, not the resolved model
        if declared is not None and packaged is not None and declared.tag == packaged.tag:
            declared = packaged           # the model `bentoml build` packaged with this class
        if declared is not None:
            if declared.stored is None:
                raise FileNotFoundError(
                    f"model {str(declared.tag)!r} is not in the BentoML model store (see `bentoml models list`); "
                    "build the demo model with `make demo-model`, import one with "
                    f"`mask-export ... --bento-tag {STORE_NAME}`, "
                    "or set MASK_MODEL=path/to/model.onnx")
            stored = declared.resolve()
            source, name = stored.path_of(MODEL_FILE), str(stored.tag)
        else:
            source = name = self.settings.model_source
        self._batched, self._batched_loop = None, None
        self._explainer_obj: Explainer | None = None
        # Predictor warms up before __init__ returns, so /readyz only turns 200 after a real inference.
        self.predictor = Predictor(source, settings=self.settings, name=name)
        self.tasks = TaskQueue(TaskStore(self.settings.tasks_dir or None, self.settings.task_retention_s),
                               source, self.settings)
        log.info("serving %s on %s", self.predictor.source, self.predictor.provider)

    @bentoml.on_startup
    def _look_after_tasks(self) -> None:
        """Runs in this worker's event loop once it has started: /submission tasks a dead worker left
        unfinished resume now, not when somebody next asks after them (serving.task_queue)."""
        self.tasks.start()

    @bentoml.on_shutdown
    def _stop_looking_after_tasks(self) -> None:
        self.tasks.stop()

    # --- model calls ------------------------------------------------------------------------
    @bentoml.api(route="/infer")
    @answers_refusals
    async def infer(self, images: list[str], ctx: bentoml.Context = None) -> list[list[float] | None]:
        """Model call on raw pixels, batched with concurrent requests like ``/predict``. Each image is
        base64 of its raw uint8 pixels, (H, W, 3) in C order at the model's input size (``GET /model``:
        ``input.shape``); the answer is its class probabilities (``labels.NUM_CLASSES``), or ``null`` for an image of the
        wrong size (so it cannot fail its batch-mates). Base64, not nested JSON arrays: pydantic needs
        ~300 ms to validate one 128x96x3 array given as lists, base64 takes well under a millisecond."""
        shape = self.predictor.input_shape
        arrays: list[np.ndarray | None] = [_unpack(x, shape) for x in images]
        ok = [i for i, a in enumerate(arrays) if a is not None]
        rows = await self._infer([arrays[i] for i in ok], ctx) if ok else []
        out: list[list[float] | None] = [None] * len(images)
        for i, row in zip(ok, rows):
            out[i] = row.tolist()
        return out

    async def _infer(self, arrays: list[np.ndarray], ctx: bentoml.Context | None) -> list[np.ndarray]:
        """One request's decoded images → their probabilities, batched with concurrent requests
        (:mod:`serving.batching`); a client that disconnects while queued costs no inference.
        ``ctx`` is None when the class is called directly, outside an HTTP request."""
        if not self.settings.batching:  # MASK_BATCHING=0: one model call per request
            return list(await anyio.to_thread.run_sync(self.predictor.infer, np.stack(arrays)))
        loop = asyncio.get_running_loop()
        if self._batched is None or self._batched_loop is not loop:  # asyncio futures bind one loop
            self._batched, self._batched_loop = Batcher(self.predictor.infer, self.settings), loop
        try:
            return await unless_disconnected(self._batched.submit(arrays), ctx.request if ctx is not None else None)
        except QueueFull as e:
            raise ServiceBusy(str(e)) from None

    async def _decode_all(self, field: str, paths: list[Path]) -> list[np.ndarray]:
        """A request's uploads → model inputs (serving.uploads: the limits and each file's 4xx reason)."""
        return await decode_uploads(self.predictor.load, field, paths, max_bytes=self.settings.max_upload_bytes,
                                    max_files=self.settings.max_files)

    # --- public routes ----------------------------------------------------------------------
    @bentoml.api(route="/predict")
    @answers_refusals
    async def predict(self, image: Path, ctx: bentoml.Context = None) -> Prediction:
        """Classify one photo (multipart field ``image``: JPEG, PNG, WebP, BMP, ...)."""
        (probs,) = await self._infer(await self._decode_all("image", [image]), ctx)
        answer = self.predictor.decode(probs)
        monitoring.record("/predict", [answer])
        return Prediction.model_validate(answer)

    @bentoml.api(route="/predict_batch")
    @answers_refusals
    async def predict_batch(self, images: list[Path], ctx: bentoml.Context = None) -> list[Prediction]:
        """Classify several photos (multipart field ``images``, repeated); answers keep the order."""
        rows = await self._infer(await self._decode_all("images", images), ctx)
        answers = [self.predictor.decode(p) for p in rows]
        monitoring.record("/predict_batch", answers)
        return [Prediction.model_validate(a) for a in answers]

    @bentoml.api(route="/explain")
    @answers_refusals
    async def explain(self, image: Path, ctx: bentoml.Context = None) -> t.Annotated[Path, bentoml.validators.ContentType("image/png")]:
        """Why that label: the photo with the class-activation heatmap of the predicted class (PNG), or
        ``{"prediction", "maps"}`` with ``Accept: application/json``. 501 when the model has no maps."""
        explainer = self._explainer()
        # the same size/format checks and 4xx reasons as /predict; their model input is reused
        (array,) = await self._decode_all("image", [image])
        result = await anyio.to_thread.run_sync(lambda: explainer.explain(image.read_bytes(), array=array))
        monitoring.record("/explain", [result.prediction])
        if "application/json" in (ctx.request.headers.get("accept", "") if ctx is not None else ""):
            return JSONResponse(result.to_json())
        return Response(await anyio.to_thread.run_sync(result.png), media_type="image/png")

    def _explainer(self) -> Explainer:
        if self._explainer_obj is None:
            try:
                self._explainer_obj = Explainer(self.predictor)
            except ExplainUnavailable as e:   # nothing cached: every request gets the reason
                raise NotAvailable(f"explanations are not available: {e}") from None
        return self._explainer_obj

    @bentoml.api(route="/model")
    def model(self) -> ModelInfo:
        """What is served: artifact metadata, the active execution provider, the limits in force.
        ``GET /model`` answers the same (BentoML's own routes are POST)."""
        return self.model_info()

    def model_info(self) -> ModelInfo:
        s = self.settings
        limits = {"max_upload_bytes": s.max_upload_bytes, "max_pixels": s.max_pixels, "max_files": s.max_files,
                  "batching": s.batching, "max_batch_size": s.max_batch_size, "batch_wait_ms": s.batch_wait_ms,
                  "max_queue": s.max_queue,
                  "max_archive_bytes": s.max_archive_bytes, "max_archive_members": s.max_archive_members,
                  "max_archive_total_bytes": s.max_archive_total_bytes, "max_body_bytes": s.max_body_bytes,
                  "max_infer_bytes": s.max_infer_bytes, "api_key_required": bool(s.api_key)}
        return ModelInfo.model_validate({**self.predictor.info(), "limits": limits,
                                         "explain": availability(self.predictor.metadata)})

    @bentoml.api(route="/submission")
    @answers_refusals
    async def submission(self, info: Path, archive: Path) -> str:
        """Competition submission in one request: ``info`` (info.csv with ImageID,ans) and ``archive``
        (zip/tar of the eval images) → the filled-in CSV. The same job as ``POST /submission/submit``
        (serving/task_routes.py), waited for; long jobs should use that and poll instead."""
        task_id = await self.tasks.submit_paths(info, archive)   # sizes, the CSV, the archive: refused here
        await self.tasks.wait(task_id)
        return await anyio.to_thread.run_sync(task_routes.result_response, self.tasks.store, task_id)


def _served() -> ClassifierService | None:
    """This worker's service instance; None while it is still loading."""
    try:
        return bentoml.get_current_service()   # BentoML's public accessor of this worker's instance
    except bentoml.exceptions.BentoMLException:
        return None


def served_model_info() -> dict | None:
    """``GET /model``'s body from the running service; None while it is still loading."""
    service = _served()
    return None if service is None else service.model_info().model_dump(mode="json")


def served_tasks() -> TaskQueue | None:
    service = _served()
    return None if service is None else service.tasks


def declare(settings: Settings) -> bentoml.Service:
    """The BentoML service serving ``settings``: the worker count and concurrency hint BentoML takes
    from the declaration, the store model ``bentoml build`` packages, the guard's limits and key."""
    # BentoML's own request timeout keeps every request's timer, span and context for the whole
    # timeout; ours drops them when the request ends (serving/request_timeout.py says why and how)
    request_timeout.install()
    inner = type("MaskClassifier", (ClassifierService,), {
        "settings": settings, "model_ref": _store_model(settings), "__module__": __name__,
        "__qualname__": "MaskClassifier"})
    service = bentoml.service(
        name=STORE_NAME,
        workers=settings.workers,
        # `concurrency` is a BentoCloud scaling hint. No `max_concurrency`: BentoML would answer 429
        # before our queue; MASK_MAX_QUEUE's 503 is the one overload answer, and the hint says how many
        # requests a worker can hold.
        traffic={"timeout": 600, "concurrency": settings.max_queue * settings.workers},
        http={"cors": {"enabled": False}},
    )(inner)
    # outermost first: every error leaves in one shape, /docs.json declares it (serving.contract)
    service.add_asgi_middleware(ErrorEnvelope, max_files=settings.max_files)
    service.add_asgi_middleware(RequestGuard, limits=body_limits(settings), fields=MULTIPART_FIELDS,
                                default_limit=settings.max_body_bytes, api_key=settings.api_key,
                                model_info=served_model_info)
    # the browser page (serving/ui/index.html) at GET /ui/, beside the API on the same port
    service.mount_asgi_app(ui.app(), path="/ui")
    # the /submission task routes: the uploads stream to disk, each job runs in a process of its own
    service.mount_asgi_app(task_routes.app(served_tasks), path="/submission")
    return service


def __getattr__(name: str):
    """``MaskClassifier``, declared from this process's settings on first access (BentoML's import
    of ``serving.service:MaskClassifier`` in the server and in every worker), then a module global."""
    if name == "MaskClassifier":
        service = globals()["MaskClassifier"] = declare(get_settings())   # this process's one read of MASK_*
        return service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
