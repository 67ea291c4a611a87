"""The exceptions Arceus raises; each message names the bad value."""

from __future__ import annotations

__all__ = [
    "ArceusError",
    "ConfigError",
    "PartitionError",
    "PayloadError",
    "StageTimeout",
    "RunAborted",
    "DatasetUnavailable",
    "ProtocolError",
    "RedisServerError",
    "RunFailed",
    "TrainingDiverged",
]


class ArceusError(Exception):
    """Base class of every error Arceus raises on purpose."""


class ConfigError(ArceusError, ValueError):
    """A job, model, dataset or training config is invalid; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class PartitionError(ArceusError, ValueError):
    """Layers cannot be split over the requested number of devices."""


class PayloadError(ArceusError, ValueError):
    """A wire payload is truncated, oversized, inconsistent or of an unknown codec."""


class ProtocolError(ArceusError):
    """A stream entry arrived that the stage did not expect at this point of the schedule."""


class StageTimeout(ArceusError, TimeoutError):
    """A stage waited longer than its timeout for a message from a neighbour."""


class RunAborted(ArceusError):
    """Another stage (or the user) aborted the run; carries the reason it gave."""


class DatasetUnavailable(ArceusError):
    """The dataset files are missing and could not be downloaded."""


class RedisServerError(ArceusError):
    """The embedded Redis server could not be started."""


class RunFailed(ArceusError):
    """A training run ended with an error in one of its stages; the message is that stage's reason."""


class TrainingDiverged(ArceusError):
    """The loss became NaN or infinite: the learning rate is too high for this model and data."""
