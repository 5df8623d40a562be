"""Exceptions that the command line turns into clear one-line messages."""


class SynthgenError(Exception):
    """An error the user can fix; its message says what went wrong and what to do."""


class UsageError(SynthgenError):
    """An invalid command-line argument or combination of arguments."""


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


class OutputError(SynthgenError):
    """A problem with the output folder (not ours, different build, disk full...)."""


def write_failure(what: str, folder, exc: OSError) -> OutputError:
    """A clear error for a failed write (full disk, quota, permissions): what, where, and why."""
    import os

    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OutputError(f"could not write {what} in {folder}: {reason}. Shards already finished are intact; "
                       "free space (or fix the folder) and re-run the same command to resume")
