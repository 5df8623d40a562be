"""Errors a user can fix. Every command turns them into one line on stderr and a non-zero exit code."""
import re


class UserError(Exception):
    """A problem with the input or the request; the message names the file or option and says what to do."""


class UsageError(UserError):
    """An invalid command-line value or combination of values (exit code 2)."""


def exception_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line, for a message of our own: its type and its first line (torch's
    loading errors run to a dozen lines of advice that does not apply)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__


def flat_text(exc: BaseException, limit: int | None = 200) -> str:
    """An exception's message on one line (each line break and the blanks around it become one space), cut at
    `limit`: for messages whose detail lies past the first line (load_state_dict's: "Error(s) in loading
    state_dict for VAE:", then one line per mismatched tensor)."""
    return re.sub(r"\s*\n\s*", " ", str(exc).strip())[:limit]
