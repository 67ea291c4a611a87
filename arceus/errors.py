"""Every exception Arceus raises on purpose, in one hierarchy; each message names the bad value.

The API maps them to HTTP statuses (``api/errors.py``): ``ConfigError`` 400, ``NotFound`` 404,
``Conflict`` and ``PartitionError`` 409, ``UpstreamError`` its own 502/504.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "ArceusError",
    "ConfigError",
    "Conflict",
    "DatasetUnavailable",
    "NotFound",
    "PartitionError",
    "PayloadError",
    "ProtocolError",
    "RedisServerError",
    "RunAborted",
    "RunFailed",
    "StageTimeout",
    "TrainingDiverged",
    "UpstreamError",
]


class ArceusError(Exception):
    """Base class of every error Arceus raises on purpose."""


# ------------------------------------------------------------------ what the user asked for
class ConfigError(ArceusError, ValueError):
    """A job, model, dataset, training config or setting is invalid; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class PartitionError(ArceusError, ValueError):
    """Layers cannot be split over the requested number of devices."""


class NotFound(ArceusError, KeyError):
    """No job or device with that id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class Conflict(ArceusError):
    """The request does not fit the job's current state; the message says what to do."""


class DatasetUnavailable(ArceusError):
    """The dataset files are missing and could not be downloaded."""


# ------------------------------------------------------------------ the data plane
class PayloadError(ArceusError, ValueError):
    """A wire payload is truncated, oversized, inconsistent or of an unknown codec."""


class ProtocolError(ArceusError):
    """A stream entry arrived that the stage did not expect at this point of the schedule."""


class StageTimeout(ArceusError, TimeoutError):
    """A stage waited longer than its timeout for a message from a neighbour."""


class LinkFailed(ArceusError):
    """A stream's Redis failed while every stage still beats: the run's own error, not a lost device."""


class RunAborted(ArceusError):
    """Another stage (or the user) aborted the run; carries the reason it gave."""


class TrainingDiverged(ArceusError):
    """The loss became NaN or infinite: the learning rate is too high for this model and data."""


class RunFailed(ArceusError):
    """A training run ended with an error in one of its stages; the message is that stage's reason."""


# ------------------------------------------------------------------ processes and services
class RedisServerError(ArceusError):
    """The embedded Redis server could not be started."""


class ApiError(ArceusError):
    """The API answered with an error status, or could not be reached (``status`` is None then)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamError(ArceusError):
    """A worker failed or did not answer the API; ``status`` is 502 or 504."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
