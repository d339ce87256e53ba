"""Baton's error hierarchy: shallow on purpose, one line each."""

from __future__ import annotations

import botocore.exceptions
import redis.exceptions


class BatonError(Exception):
    """Base class of every error Baton raises on purpose."""


class ConfigError(BatonError):
    """A workflow file or setting is invalid."""


class KeyValidationError(BatonError, ValueError):
    """An object key is malformed or outside the prefixes the caller may use."""


class RetryableError(BatonError):
    """A failure that may succeed on another attempt."""


class PermanentError(BatonError):
    """A failure that will fail again: do not retry."""


class ObjectMissingError(PermanentError):
    """A referenced object (or the referenced version of it) does not exist."""


class ObjectTooLargeError(PermanentError):
    """A referenced object is larger than the reader accepts."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class PreconditionFailedError(BatonError):
    """A conditional write lost: the object changed since it was read (or already exists)."""


class AccessDeniedError(PermanentError):
    """The store refused a request these credentials may not make (it would refuse it again)."""


class StoreUnavailableError(BatonError, ConnectionError):
    """The store could not be reached or failed, past the client's own retries (transient)."""


class CancelledError(PermanentError):
    """The run was cancelled: stop at the next checkpoint."""


class NotWaitingError(BatonError):
    """A person's response to a run that is not waiting for one."""


class InputRequired(BatonError):
    """An agent needs a person's answer: the run asks, and the task comes back with it (`ctx.answer`)."""

    def __init__(self, question: str, resume: dict[str, str] | None = None) -> None:
        super().__init__(question)
        self.question, self.resume = question, dict(resume or {})


class HandlerTimeout(BatonError):
    """A handler ran past its time limit and was cancelled."""


class NotReplicated(redis.exceptions.ResponseError):
    """WAIT returned fewer replicas than asked: the writes may not survive a failover (not acknowledged;
    retried as a transient fault: a replica catching up, or one gone that its master stops counting)."""


# Faults that a second try a moment later usually does not meet: a dropped or refused connection, a pool
# momentarily exhausted, a timed-out round trip (to Redis, or to S3 through botocore).
TRANSIENT = (
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,  # MaxConnectionsError is one
    redis.exceptions.TimeoutError,
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ...
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ...
    NotReplicated,
)


def is_transient(exc: BaseException) -> bool:
    """A fault worth retrying at once: the kinds above, or a bare OSError (a socket's; not a file's)."""
    return isinstance(exc, TRANSIENT) or type(exc) is OSError
