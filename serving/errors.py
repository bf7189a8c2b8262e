"""The errors a client can be answered with: one exception type per HTTP status.

Every client-facing failure of the service and its request guard is a :class:`RequestError`
subclass whose class says the HTTP status; :func:`status_of` maps the library errors too
(:mod:`maskdata.preprocess`'s image errors, :mod:`serving.archive`'s archive errors, PIL's
decompression-bomb error), so a status is decided from a type, never from words in a message.
Answers are JSON ``{"error": reason, "status": code}`` (:func:`error_response`).
"""
from __future__ import annotations

from PIL import Image
from starlette.responses import JSONResponse

from maskdata.preprocess import ImageError, ImageTooLarge
from serving.archive import ArchiveTooLarge


class RequestError(Exception):
    """A request that cannot be served; ``status`` is the HTTP status of the whole class."""

    status = 400

    def response(self) -> JSONResponse:
        return error_response(self.status, str(self))


class BadRequest(RequestError):
    status = 400


class Unauthorized(RequestError):
    status = 401


class LengthRequired(RequestError):
    status = 411


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedMediaType(RequestError):
    status = 415


class ServiceBusy(RequestError):
    """The batching queue is full (``MASK_MAX_QUEUE`` images wait): 503 with Retry-After."""

    status = 503


class NotAvailable(RequestError):
    """The served model cannot do what was asked (``/explain`` of a model without maps): 501."""

    status = 501


class ClientClosed(RequestError):
    """The client went away while its request was queued (nginx's 499; nobody reads the answer)."""

    status = 499


def status_of(error: Exception) -> int:
    """The HTTP status for an exception, from its type alone."""
    if isinstance(error, RequestError):
        return error.status
    if isinstance(error, (ImageTooLarge, ArchiveTooLarge, Image.DecompressionBombError)):
        return 413
    if isinstance(error, (ImageError, ValueError, FileNotFoundError)):
        return 400
    return 500


def as_request_error(error: Exception) -> RequestError:
    """A refusal from a library (an image, a CSV, an archive that cannot be used) as the typed error
    of its :func:`status_of`, message kept; a :class:`RequestError` is returned as it is."""
    if isinstance(error, RequestError):
        return error
    status = status_of(error)
    cls = next((c for c in _CLASSES if c.status == status), RequestError)
    typed = cls(str(error))
    typed.status = status   # a status no class names (500 for an unknown type) is kept as it is
    return typed


def error_response(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="mask-classifier"'}
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


_CLASSES = (BadRequest, Unauthorized, LengthRequired, PayloadTooLarge, UnsupportedMediaType, ServiceBusy,
            NotAvailable, ClientClosed)
