"""Service errors as plain exceptions: each carries a status and a stable code, and knows nothing of
any protocol (``service.http.errors`` renders them as HTTP answers).
"""

from __future__ import annotations

class ServiceError(Exception):
    """Base of every error the service answers deliberately. ``code`` is also the metric reason."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidArgument(ServiceError):
    status, code = 422, "invalid_argument"


class InvalidTensor(ServiceError):
    """A malformed Open Inference Protocol request (the protocol answers 400)."""

    status, code = 400, "invalid_tensor"


class EmptyBody(ServiceError):
    status, code = 422, "empty_body"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class UndecodableImage(ServiceError):
    """The bytes are not an image format we read."""

    status, code = 415, "undecodable_image"


class CorruptImage(ServiceError):
    """A known format whose data is truncated or broken."""

    status, code = 422, "corrupt_image"


class BodyTooLarge(ServiceError):
    status, code = 413, "body_too_large"


class TooManyPixels(ServiceError):
    status, code = 413, "too_many_pixels"


class TooManyFiles(ServiceError):
    status, code = 413, "too_many_files"


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class NoBaseline(ServiceError):
    status, code = 409, "no_baseline"


class QueueFull(ServiceError):
    status, code = 503, "queue_full"


class ShuttingDown(ServiceError):
    status, code = 503, "shutting_down"


class NotReady(ServiceError):
    """Models are still loading and warming up."""

    status, code = 503, "not_ready"


class ClientGone(ServiceError):
    """The client disconnected while its images waited: nothing is sent (counted as 499)."""

    status, code = 499, "client_disconnected"


class QueueTimeout(ServiceError):
    """A request waited longer than ``max_queue_wait_s`` in the batch queue."""

    status, code = 503, "queue_timeout"


class DeadlineExceeded(ServiceError):
    """The request's own deadline (``RequestContext.deadline``, e.g. a gRPC client's) passed before its answer."""

    status, code = 504, "deadline_exceeded"


class DecodeBusy(ServiceError):
    """Every decode thread is busy and the decode queue is full."""

    status, code = 503, "decode_busy"


class Unavailable(ServiceError):
    """The model cannot run requests now (its dispatcher stopped, or inference keeps failing)."""

    status, code = 503, "unavailable"


class InferenceFailed(ServiceError):
    """Inference failed for this request; the message is generic, the details are in the log."""

    status, code = 500, "inference_failed"


CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the metrics count it as 4xx
