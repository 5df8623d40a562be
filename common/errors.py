"""Errors a user can fix. Every command turns them into one line on stderr and a non-zero exit code."""


class UserError(Exception):
    """A problem with the input or the request; the message names the file or option and says what to do."""


class UsageError(UserError):
    """An invalid command-line value or combination of values (exit code 2)."""
