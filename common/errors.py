"""The small exception hierarchy of Consortium.

Every message says what was found, where, and what to do about it.
"""


class ConsortiumError(Exception):
    """Base class of every error Consortium raises on purpose."""


class ConfigError(ConsortiumError, ValueError):
    """A run-config or CLI value is unknown, of the wrong type, or out of range."""


class DataError(ConsortiumError, ValueError):
    """A partner's data file is missing, unreadable or does not match the run's declaration."""


class ModelError(ConsortiumError):
    """The base model cannot be loaded or does not match what the coordinator sent."""


class PrivacyError(ConsortiumError):
    """A privacy precondition failed: the guarantee would not hold, so nothing is trained."""


class BudgetExceededError(PrivacyError):
    """Training the next round would take a partner past its own privacy budget."""


class ResourceError(ConsortiumError):
    """A round would not fit in the partner's memory; refused before training starts."""


class UpdateError(ConsortiumError, ValueError):
    """A partner's update does not match the shared model (keys, shapes, dtypes, values)."""


class CheckpointError(ConsortiumError):
    """A checkpoint or ledger file is missing, truncated or fails its content hash."""


class RunStopped(ConsortiumError):
    """An expected stop of a run (every partner refused, too few usable updates, a budget
    spent, a bad config): one line of what happened and what fixes it, no traceback."""


class StoppedBySignal(ConsortiumError):
    """A stop that was asked for (SIGINT, SIGTERM): not an error; the command line ends with
    a "stopped" line and the shell's exit code for the signal (128 + its number)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class SimulatedDropout(ConsortiumError):
    """A simulated partner left the round on purpose (run config ``dropout-rate``)."""


class ReportError(ConsortiumError, ValueError):
    """A run directory's files (metrics.jsonl, privacy report) cannot be read into a report."""


class UnlearnablePlanError(PrivacyError):
    """A DP plan's predicted noise drowns its signal: refused before any ε is spent."""
