"""The HTTP contract a generated client sees: one error shape for every error, and an OpenAPI document
(``GET /docs.json``) that declares it.

What BentoML 1.4 (seen with 1.4.40) answers on its own, and why this module exists:

- its input validation answers ``{"error": "1 validation error for Input", "detail": [...]}`` (400),
  some of its exceptions a JSON *list*
  ``[{"error": ...}]``, and the router plain text (``Not Found``, ``Method Not Allowed``). The
  service's own errors are ``{"error", "status"}``. :class:`ErrorEnvelope` rewrites every error
  response (status >= 400) that is not already in that shape into it, keeping a validation error's
  ``detail`` list, so a client parses one shape whatever answered;
- its generated document declares only 400/404/500, each with a schema that lacks ``status``, no
  415/413/411/401/503, no ``GET /model`` (the request guard answers it), and nothing of mounted
  apps, so not the ``/submission/*`` task routes (:mod:`serving.task_routes`); its request bodies
  allow what the routes refuse (no body at all, extra multipart fields, an empty file list, any bytes
  as a photo or a CSV). :func:`patch_openapi` fixes each (and one schema BentoML gets wrong:
  ``POST /infer``'s null rows), and
  :class:`ErrorEnvelope` serves the patched document at ``/docs.json``, which the Swagger UI at
  ``/`` reads too;
- ``/schema.json``, from which ``bentoml.SyncHTTPClient`` / ``AsyncHTTPClient`` learn the routes, calls
  ``submission`` a plain API, because the task routes are a mounted app rather than
  ``@bentoml.task`` (serving/tasks.py says why): :func:`patch_client_schema` marks it a task, so
  ``AsyncHTTPClient``'s ``client.submission.submit(info=..., archive=...)`` → ``.get_status()`` /
  ``.get()`` reach the ``/submission/*`` routes, which keep BentoML's task URLs and answers
  (tests/test_api_contract.py; the sync client's ``submit`` is broken for every task in 1.4.40).

Plain ASGI, the standard library and the task routes' own description: nothing here imports
BentoML, so the rules are testable alone.
"""
from __future__ import annotations

import copy
import json
from http import HTTPStatus

from maskdata import __version__
from serving import task_routes

DOCS_PATH = "/docs.json"
CLIENT_SCHEMA_PATH = "/schema.json"
TASK_APIS = ("submission",)   # APIs whose /NAME/submit, /status, /get ... routes the service mounts
ERROR_SCHEMA_NAME = "Error"
ERROR_SCHEMA = {
    "type": "object", "title": ERROR_SCHEMA_NAME, "required": ["error", "status"],
    "description": "Every error the service returns: a one-line reason and the HTTP status.",
    "properties": {
        "error": {"type": "string", "description": "what was wrong, in words a client can show"},
        "status": {"type": "integer", "description": "the HTTP status, repeated"},
        "detail": {"type": "array", "items": {"type": "object"},
                   "description": "input validation only: one entry per invalid field (pydantic's errors)"},
    },
}
# Statuses every API route can answer: a malformed or unauthorised request, an unknown task, a body over
# its limit, a server fault. Routes that take a body add 411/413/415; model routes add 503 (queue full).
COMMON_ERRORS = (400, 401, 404, 500)
BODY_ERRORS = (411, 413, 415)
PROBES = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
# the document's own title and description; BentoML's are the service name, a generated README and
# version "None" outside a built bento
INFO = {
    "title": "mask-classifier",
    "version": __version__,
    "description": (
        "Mask / gender / age classification of photos of people (18 classes: mask state wear, incorrect or "
        "not_wear x gender x age group <30, 30-59, >=60). `POST /predict` classifies one photo (multipart "
        "field `image`), `POST /predict_batch` several (`images`), `POST /explain` draws the class-activation "
        "heatmap, `GET /model` says which model is served and the limits in force, and `/submission/*` turns "
        "an info.csv plus an archive of photos into a submission CSV. Every error is `{\"error\", \"status\"}` "
        "JSON. A page to try it is at `/ui/`."),
}


def error_body(status: int, message: str, detail: list | None = None) -> bytes:
    body = {"error": message, "status": status}
    if detail is not None:
        body["detail"] = detail
    return json.dumps(body).encode()


def reshaped(status: int, body: bytes, content_type: bytes) -> bytes | None:
    """The ``{"error", "status"}`` body for an error response, or None when it already has that shape."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    value = None
    if b"json" in content_type:
        try:
            value = json.loads(body or b"null")
        except ValueError:
            value = None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]   # BentoML answers some of its exceptions as a one-item list
    if isinstance(value, dict):
        if isinstance(value.get("error"), str) and value.get("status") == status:
            return None
        message = value.get("error") if isinstance(value.get("error"), str) else phrase
        detail = value.get("detail") if isinstance(value.get("detail"), list) else None
        if detail and all(isinstance(d, dict) and "msg" in d for d in detail):
            # pydantic's errors say which field and why; "1 validation error for Input" says neither
            where = ["/".join(str(p) for p in d.get("loc", ())) or "body" for d in detail]
            message = "invalid request: " + "; ".join(f"{w}: {d['msg']}" for w, d in zip(where, detail))
        return error_body(status, message, detail)
    text = body.decode("utf-8", "replace").strip() if b"text/" in content_type else ""
    return error_body(status, text.splitlines()[0][:300] if text else phrase)


def _op_errors(path: str, method: str) -> tuple[int, ...]:
    codes = list(COMMON_ERRORS)
    if method in ("post", "put"):
        codes += BODY_ERRORS
    if path in ("/predict", "/predict_batch", "/infer", "/explain"):
        codes.append(503)
    if path == "/explain":
        codes.append(501)
    if path.startswith("/submission/"):   # canceled or inputs gone (409), a job's reason on /get, loading
        codes += [409, 413, 503]
    return tuple(sorted(set(codes)))


# What each single-file upload field holds (its part's ``encoding.contentType``) and an example
# filename: what the routes decode, so a client or a fuzzer knows a part is a photo, a CSV or an
# archive, not any bytes.
UPLOADS = {
    "image": ("image/*", "photo.jpg"),
    "info": ("text/csv", "info.csv"),
    "archive": ("application/zip, application/x-tar, application/gzip, application/x-bzip2, application/x-xz",
                "images.zip"),
}


def _exact_request_body(body: dict, max_files: int | None) -> None:
    """Say what the routes hold a body to: it is required when it has required fields; a multipart
    form takes exactly its fields (the guard refuses others), each part of its media type, and a
    list of files at least one and at most ``max_files`` (``MASK_MAX_FILES``)."""
    for media, content in body.get("content", {}).items():
        schema = content.get("schema", {})
        if schema.get("required"):
            body["required"] = True
        if media != "multipart/form-data":
            continue
        schema["additionalProperties"] = False
        for name, prop in schema.get("properties", {}).items():
            # A list of photos says its media type in words: an encoding on an array of files is
            # read as one file by schemathesis (seen with 4.32), which then sends it without a filename.
            if prop.get("type") == "array":
                prop["minItems"] = 1
                if max_files is not None:
                    prop["maxItems"] = max_files
                prop.setdefault("description", "photos (image/*), one file part each, with a filename")
            if name in UPLOADS:   # a file part: the guard refuses one without a filename (a text field)
                media_type, filename = UPLOADS[name]
                disposition = f'form-data; name="{name}"; filename="{filename}"'
                content.setdefault("encoding", {})[name] = {
                    "contentType": media_type,
                    "headers": {"Content-Disposition": {
                        "required": True, "description": "a file part: with a filename",
                        "schema": {"type": "string", "example": disposition}}}}


def patch_openapi(doc: dict, max_files: int | None = None) -> dict:
    """BentoML's generated document with the service's error shape on every route, ``GET /model``,
    the ``/submission`` task routes, and request bodies as the routes take them (``max_files``: the
    most photos one request may carry)."""
    doc = copy.deepcopy(doc)
    doc["info"] = dict(INFO)   # no BentoML contact or "None" version either
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}
    schemas[task_routes.STATUS_SCHEMA["title"]] = copy.deepcopy(task_routes.STATUS_SCHEMA)
    paths = doc.setdefault("paths", {})
    for path, item in task_routes.openapi_paths().items():
        paths.setdefault(path, {}).update(copy.deepcopy(item))
    infer = paths.get("/infer", {}).get("post", {}).get("responses", {}).get("200", {})
    rows = infer.get("content", {}).get("application/json", {}).get("schema", {}).get("items")
    if isinstance(rows, dict):
        rows["nullable"] = True   # an image of the wrong size answers null (BentoML drops the Optional)
    submission = paths.get("/submission", {}).get("post", {}).get("responses", {}).get("200")
    if submission is not None:   # the CSV (BentoML declares its `-> str` as text/plain)
        submission["content"] = {"text/csv": {"schema": {"type": "string"}}}
    model_post = paths.get("/model", {}).get("post")
    if model_post is not None and "get" not in paths["/model"]:
        get = {k: copy.deepcopy(v) for k, v in model_post.items() if k != "requestBody"}
        get["operationId"] = f"{model_post.get('operationId', 'model')}__get"
        paths["/model"]["get"] = get
    for path, ops in paths.items():
        if path in PROBES:
            continue
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if "requestBody" in op:
                _exact_request_body(op["requestBody"], max_files)
            for code in _op_errors(path, method):
                op["responses"][str(code)] = {"description": HTTPStatus(code).phrase,
                                              "content": {"application/json": {"schema": ref}}}
    return doc


def patch_client_schema(doc: dict) -> dict:
    """BentoML's client schema with :data:`TASK_APIS` marked as tasks."""
    doc = copy.deepcopy(doc)
    for route in doc.get("routes", []):
        if route.get("name") in TASK_APIS:
            route["is_task"] = True
    return doc


class ErrorEnvelope:
    """ASGI middleware: every error response in the ``{"error", "status"}`` shape, and the patched
    OpenAPI document at ``/docs.json`` and client schema at ``/schema.json``. Only error bodies and
    those two documents are buffered (small); every other response streams through untouched."""

    def __init__(self, app, max_files: int | None = None) -> None:
        self.app, self.max_files = app, max_files

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        docs = scope.get("path") if scope.get("path") in (DOCS_PATH, CLIENT_SCHEMA_PATH) and \
            scope.get("method") == "GET" else None
        held: dict = {}
        chunks: list[bytes] = []

        async def rewriting_send(message):
            if message["type"] == "http.response.start":
                if docs or message["status"] >= 400:
                    held["start"] = message
                    return
                return await send(message)
            if "start" not in held:
                return await send(message)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                await self._flush(held["start"], b"".join(chunks), docs, send, self.max_files)

        await self.app(scope, receive, rewriting_send)

    @staticmethod
    async def _flush(start: dict, body: bytes, docs: str | None, send, max_files: int | None) -> None:
        status = start["status"]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"").lower()
        new = None
        if docs and status == 200:
            try:
                value = json.loads(body)
                patched = patch_openapi(value, max_files) if docs == DOCS_PATH else patch_client_schema(value)
                new = json.dumps(patched).encode()
            except ValueError:
                new = None
        elif status >= 400:
            new = reshaped(status, body, content_type)
            if new is not None:
                headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
                headers.append((b"content-type", b"application/json"))
        body = body if new is None else new
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
