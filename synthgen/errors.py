"""Exceptions that the command line turns into clear one-line messages."""
from common.errors import UsageError, UserError

__all__ = ["SynthgenError", "UsageError", "BadInputError", "PlacementError", "OutputError", "write_failure"]


class SynthgenError(UserError):
    """An error the user can fix; its message says what went wrong and what to do."""


class BadInputError(SynthgenError):
    """A source file that cannot be used (corrupt, unpaired, wrong size, empty mask...)."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        # Worker processes send exceptions back pickled; rebuild from both fields.
        return (BadInputError, (self.path, self.reason))


class PlacementError(SynthgenError):
    """A scene whose objects cannot be placed under the requested constraints."""

    def __init__(self, message, index: int = -1):
        super().__init__(message)
        self.index = index

    def __reduce__(self):
        return (PlacementError, (str(self), self.index))


class OutputError(SynthgenError):
    """A problem with the output folder (not ours, different build, disk full...)."""


def write_failure(what: str, folder, exc: OSError) -> OutputError:
    """A clear error for a failed write (full disk, quota, permissions): what, where, and why."""
    import os

    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OutputError(f"could not write {what} in {folder}: {reason}. Shards already finished are intact; "
                       "free space (or fix the folder) and re-run the same command to resume")
