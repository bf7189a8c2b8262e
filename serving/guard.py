"""The request guard: what stands between the port and the routes of :mod:`serving.service`.

Why it exists — what BentoML 1.4 (seen with 1.4.40) does not do for us:

- it has **no request-size limit** on any route: a 40 MB JSON body to ``POST /infer`` was read and
  answered 200 while uploads were meant to be capped at 10 MB. :class:`RequestGuard` caps every
  route that takes a body (POST, PUT, PATCH) from its Content-Length before anything is read, with a
  default (``MASK_MAX_BODY_BYTES``) for routes not listed, so a new route is covered the day it is
  added;
- it answers HTTP 500 to a binary multipart part under an unknown name and *downloads a URL* sent as
  a text part where a file is expected: :class:`PartInspector` turns both into 400s;
- it routes every API as POST, so ``GET /model`` is answered here, from a plain callable the service
  hands over (this module knows nothing of BentoML), and any other method there gets 405 with
  ``Allow: GET, POST``;
- it has no authentication: with ``MASK_API_KEY`` set every route except the probes needs
  ``Authorization: Bearer <key>`` (compared in constant time), else 401.

Every refusal is one of :mod:`serving.errors`' typed errors, answered as ``{"error", "status"}`` JSON.
"""
from __future__ import annotations

import hmac
from typing import Callable

from starlette.responses import JSONResponse

from serving.errors import (LengthRequired, PayloadTooLarge, RequestError, Unauthorized, UnsupportedMediaType,
                            error_response)

# Headroom for multipart boundaries and headers when capping whole request bodies.
MULTIPART_SLACK = 64 * 1024
# Routes any caller may reach with MASK_API_KEY set: the orchestrator's probes and the scraper.
OPEN_PATHS = frozenset({"/readyz", "/livez", "/metrics"})
# The /ui page itself (one static HTML file, no data) loads without the key: a browser cannot add a
# header to a navigation. Every call the page makes sends the key the user types into it.
OPEN_PAGE_PREFIX = "/ui"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class PartInspector:
    """Streams a multipart body past python-multipart's parser to see each part's name and whether it
    is a file, without keeping the data."""

    def __init__(self, content_type: bytes, expected: tuple[str, ...]):
        from python_multipart.multipart import MultipartParser, parse_options_header

        self._parse_options = parse_options_header
        self.expected, self.error = expected, ""
        self._name, self._value, self._disposition = b"", b"", b""
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            self.error = "multipart body without a boundary"
            self.parser = None
            return
        self.parser = MultipartParser(boundary, {
            "on_header_field": lambda d, a, b: setattr(self, "_name", self._name + d[a:b]),
            "on_header_value": lambda d, a, b: setattr(self, "_value", self._value + d[a:b]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        })

    def _header_end(self):
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name, self._value = b"", b""

    def _headers_finished(self):
        _, options = self._parse_options(self._disposition)
        self._disposition = b""
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if self.error:
            return
        if name not in self.expected:
            self.error = f"unexpected form field {name!r}; expected {', '.join(map(repr, self.expected))}"
        elif b"filename" not in options:
            self.error = f"form field {name!r} must be a file upload (URLs and text are not accepted)"

    def feed(self, chunk: bytes) -> None:
        if self.parser is not None and not self.error and chunk:
            try:
                self.parser.write(chunk)
            except Exception as e:  # python-multipart's MultipartParseError and friends
                self.error = f"malformed multipart body: {e}"


def body_limits(settings) -> dict[str, int]:
    """Per-route body caps (bytes) from the settings; every other body route gets ``max_body_bytes``."""
    s = settings
    submission = s.max_archive_bytes + s.max_upload_bytes + MULTIPART_SLACK
    return {"/predict": s.max_upload_bytes + MULTIPART_SLACK, "/explain": s.max_upload_bytes + MULTIPART_SLACK,
            "/predict_batch": s.max_files * s.max_upload_bytes + MULTIPART_SLACK,
            "/submission/submit": submission, "/submission": submission,
            "/infer": s.max_infer_bytes}


# Routes that take a JSON body (BentoML's JSON-typed APIs): any other content type is 415 here, where
# BentoML would try to parse it as JSON anyway (200 for text/plain) or fail inside (500 for multipart).
JSON_ROUTES = frozenset({"/infer", "/model"})

MULTIPART_FIELDS = {"/predict": ("image",), "/predict_batch": ("images",), "/explain": ("image",),
                    "/submission/submit": ("info", "archive"), "/submission": ("info", "archive")}


class RequestGuard:
    """ASGI middleware in front of the routes: API key (401), body-size limits (411/413) decided from
    the Content-Length before anything is read, multipart field checks (400/415), ``GET /model``."""

    def __init__(self, app, limits: dict[str, int], fields: dict[str, tuple[str, ...]],
                 default_limit: int, api_key: str = "", model_info: Callable[[], dict | None] | None = None,
                 json_routes: frozenset[str] = JSON_ROUTES):
        """``model_info`` answers ``GET /model``: the JSON body, or None while the model is loading
        (503); without it ``GET /model`` goes on to the app like any other request. ``json_routes``
        take a JSON body only (an empty body passes: ``POST /model`` needs none)."""
        self.app, self.limits, self.fields, self.default_limit = app, limits, fields, default_limit
        self.json_routes = json_routes
        self._key = f"Bearer {api_key}".encode() if api_key else b""
        self.model_info = model_info

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        headers = dict(scope.get("headers") or [])
        try:
            self._check_key(path, method, headers)
            if method in BODY_METHODS:
                self._check_length(path, headers)
                if path in self.fields:
                    self._check_content_type(path, headers)
                elif path in self.json_routes:
                    self._check_json(path, headers)
        except RequestError as e:
            return await e.response()(scope, receive, send)
        if path == "/model" and self.model_info is not None:
            if method == "GET":
                return await self._model_info(scope, receive, send)
            if method != "POST":   # BentoML's router would answer `Allow: POST`, hiding GET
                refusal = error_response(405, f"{method} is not allowed on /model; use GET (or POST)")
                refusal.headers["Allow"] = "GET, POST"
                return await refusal(scope, receive, send)
        if method in BODY_METHODS and path in self.fields:
            return await self._inspected(path, headers, scope, receive, send)
        return await self.app(scope, receive, send)

    def _check_key(self, path: str, method: str, headers: dict) -> None:
        if not self._key or path in OPEN_PATHS:
            return
        if method == "GET" and (path == OPEN_PAGE_PREFIX or path.startswith(OPEN_PAGE_PREFIX + "/")):
            return
        given = headers.get(b"authorization")
        if given is None:
            raise Unauthorized("this server needs an API key: send 'Authorization: Bearer <MASK_API_KEY>'")
        if not hmac.compare_digest(given, self._key):
            raise Unauthorized("wrong API key in the Authorization header")

    def _check_length(self, path: str, headers: dict) -> None:
        limit = self.limits.get(path, self.default_limit)
        length = headers.get(b"content-length")
        if length is None:
            # no Content-Length and no Transfer-Encoding is an empty body (HTTP/1.1); only the upload
            # routes, which always carry one, insist on a length, and chunked bodies are refused everywhere
            if path in self.fields or b"transfer-encoding" in headers:
                raise LengthRequired("send a Content-Length header (chunked uploads are not accepted)")
            return
        if not length.isdigit() or int(length) > limit:
            raise PayloadTooLarge(f"request body of {length.decode(errors='replace')} bytes is over the limit "
                                  f"of {limit} bytes for {path}")

    def _check_content_type(self, path: str, headers: dict) -> None:
        content_type = headers.get(b"content-type", b"")
        if not content_type.lower().startswith(b"multipart/form-data"):
            got = content_type.decode(errors="replace") or "none"
            raise UnsupportedMediaType(f"send multipart/form-data with file field(s) "
                                       f"{', '.join(map(repr, self.fields[path]))}, got content type {got!r}")

    @staticmethod
    def _check_json(path: str, headers: dict) -> None:
        length = headers.get(b"content-length", b"")
        if length == b"0" or (not length and b"transfer-encoding" not in headers):
            return
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            got = media.decode(errors="replace") or "none"
            raise UnsupportedMediaType(f"{path} takes a JSON body: send Content-Type: application/json, "
                                       f"got content type {got!r}")

    async def _inspected(self, path, headers, scope, receive, send):
        inspector = PartInspector(headers.get(b"content-type", b""), self.fields[path])
        replaced = False

        async def inspected_receive():
            message = await receive()
            if message["type"] == "http.request":
                inspector.feed(message.get("body", b""))
            return message

        async def guarded_send(message):
            nonlocal replaced
            if message["type"] == "http.response.start" and inspector.error:
                replaced = True
                body = error_response(400, inspector.error)
                await send({"type": "http.response.start", "status": 400, "headers": body.raw_headers})
                await send({"type": "http.response.body", "body": body.body})
            elif not replaced:
                await send(message)

        await self.app(scope, inspected_receive, guarded_send)

    async def _model_info(self, scope, receive, send):
        body = self.model_info()
        if body is None:
            return await error_response(503, "model is still loading")(scope, receive, send)
        await JSONResponse(body)(scope, receive, send)
