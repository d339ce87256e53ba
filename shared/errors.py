"""Baton's error hierarchy: shallow on purpose, one line each."""


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


class PreconditionFailedError(BatonError):
    """A conditional write lost: the object changed since it was read (or already exists)."""


class CancelledError(PermanentError):
    """The run was cancelled: stop at the next checkpoint."""


class NotWaitingError(BatonError):
    """A person's response to a run that is not waiting for one."""
