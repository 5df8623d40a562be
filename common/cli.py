"""What every command does around its work: --version, one-line errors, exit codes, and the device.

Exit codes: 0 done; 1 a problem with the input or the environment (the message says which file and
what to do); 2 an invalid command-line value; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM, which stops
a command as Ctrl-C does, with the same clean-up); 70 a bug in this toolkit (no user input
should ever lead there: the line asks for a report, SUBITIZING_TRACEBACK=1 shows the traceback).
"""
from __future__ import annotations

import contextlib
import errno
import gc
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common import __version__
from common.errors import UsageError, UserError, flat_text

EXIT_INTERNAL = 70


def add_version(parser, prog: str) -> None:
    parser.add_argument("--version", action="version", version=f"{prog} {__version__} (subitizing-vae)")


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception says the machine (or the GPU) ran out of memory: numpy's MemoryError, torch's
    OutOfMemoryError (CUDA), or the RuntimeError of torch's CPU allocator."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


@dataclass
class CommandSignals:
    """What the signal handlers of a running command share: whether it still runs, and the kind of an
    interruption that was dropped while it ran (Interruption)."""
    running: bool = True
    dropped: type[Interruption] | None = None


class Interruption(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised by the signal's handler while a command runs. Python runs that handler in
    whatever Python code the main thread is executing, and the exception can be dropped there: in a finalizer (a
    __del__, a weakref callback, a generator the garbage collector closes) Python only prints it, and C code that
    called back into Python may clear it without a word, or put an error of its own in its place (pybind11's
    conversion to an array in matplotlib's Agg renderer raises "Invalid affine transformation matrix"). The
    command would then work on as if no signal had come, until a batch scheduler's SIGKILL, or stop on that other
    error. So an interruption freed while its command still runs, before it reached the command's end, was
    dropped: it sends its signal again, from another thread a moment later, once the main thread has left the
    code that dropped it, and the command records it (sigterm_stops_cleanly). Not once the command has ended:
    the process may be one that called it (a notebook, a test)."""
    signum = signal.SIGINT

    def __init__(self, *args, command: CommandSignals | None = None):
        super().__init__(*args)
        self.command = command  # the command whose handler raised it

    def __del__(self):
        command, signum = self.command, self.signum
        if command is not None and command.running:
            command.dropped = type(self)
            timer = threading.Timer(0.01, lambda: command.running and os.kill(os.getpid(), signum))
            timer.daemon = True
            timer.start()


class Interrupted(Interruption):
    """Ctrl-C (SIGINT) while a command runs."""


class Terminated(Interruption):
    """SIGTERM (a batch scheduler's time limit, `kill`, a container stopping): the command stops as it does on
    Ctrl-C, through the same clean-up (temporary files removed, an earlier analysis put back), not at once."""
    signum = signal.SIGTERM


def _raising(kind: type[Interruption], command: CommandSignals):
    def handler(signum, frame) -> None:
        # raised unnamed: a local of this frame, which the exception's traceback holds, would make a reference
        # cycle, and a dropped interruption would then be freed (and sent again) only at the next collection
        raise kind(command=command)
    return handler


@contextlib.contextmanager
def progress_bars_closed_on_error():
    """An error clears the progress bars still open before its line is printed. A bar left to be closed when
    its frame is freed, after that line, was written over it: the line ended up glued to the bar's last state,
    and a cleared bar's blanks came after it."""
    try:
        yield
    except BaseException:
        std = sys.modules.get("tqdm.std")  # no bar can be open where tqdm was never imported
        if std is not None:
            for bar in list(std.tqdm._instances):
                bar.close()
        raise


def _quiet_about_interruptions(hook):
    """sys.unraisablehook that prints nothing of an interruption raised in a finalizer, which is sent again
    (Interruption) and then stops the command with its one line."""
    def unraisable(event):
        if not (isinstance(event.exc_value, Interruption) and event.exc_value.command is not None):
            hook(event)
    return unraisable


@contextlib.contextmanager
def sigterm_stops_cleanly():
    """While the block runs, SIGTERM raises Terminated in the main thread (where it can: not in other threads) and
    Ctrl-C raises Interrupted, where Python's own handler is in place; either is sent again if it is dropped
    before it reaches the block's end (Interruption). An error that ends the block after one was dropped is taken
    for what the interruption left (code that called the data damaged, say): the block ends interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    command = CommandSignals()
    handlers = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raising(Terminated, command))}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not a notebook's, say
        handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _raising(Interrupted, command))
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet_about_interruptions(hook)
    try:
        yield
    except Exception as error:
        if command.dropped is None:
            raise
        raise command.dropped() from error
    finally:
        command.running = False
        for signum, previous in handlers.items():
            signal.signal(signum, previous)
        sys.unraisablehook = hook


def _release_quietly(interruption: BaseException) -> None:
    """Free what an interruption's traceback holds (the frames it unwound, and theirs), with nothing printed of
    the finalizers that fail there: an object whose __init__ it cut short fails in its __del__ (pyparsing's
    Forward, built by matplotlib's mathtext as it draws a figure's first log-scale labels), and its message came
    after the command's one line, freed as the command returned."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda event: None
    try:
        errors, seen = [interruption], set()
        while errors:  # it, and the errors it was raised from or during
            error = errors.pop()
            if error is not None and id(error) not in seen:
                seen.add(id(error))
                error.__traceback__ = None
                errors += [error.__cause__, error.__context__]
        gc.collect()  # what sat in reference cycles with those frames
    finally:
        sys.unraisablehook = hook


def run(prog: str, body: Callable[[], int | None], interrupted: str = "interrupted",
        memory_hint: str = "free memory, or ask for less at once") -> int:
    """Run a command's body and turn every error a user can cause into one line on stderr. `memory_hint`: what
    to do when the memory runs out, which is the machine's limit, not a bug. SIGTERM stops it as Ctrl-C does."""
    try:
        with sigterm_stops_cleanly(), progress_bars_closed_on_error():
            return body() or 0
    except UsageError as exc:  # one line, even where the message quotes a library's several
        print(f"{prog}: error: {flat_text(exc, None)}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"{prog}: error: {flat_text(exc, None)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a read or write the code did not expect to fail (disk, permissions...)
        where = f"{exc.filename}: " if exc.filename else ""
        remedy = ("; free space on that disk (or write elsewhere) and run the command again"
                  if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "")
        print(f"{prog}: error: {where}{exc.strerror or exc}{remedy}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        _release_quietly(exc)
        terminated = isinstance(exc, Terminated)
        said = interrupted.replace("interrupted", "terminated (SIGTERM)", 1) if terminated else interrupted
        print(f"{prog}: {said}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    except Exception as exc:  # noqa: BLE001  (a bug: say so in one line, and how to see more)
        if os.environ.get("SUBITIZING_TRACEBACK"):
            raise
        if out_of_memory(exc):
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"{prog}: error: out of memory ({detail[:200]}); {memory_hint}", file=sys.stderr)
            return 1
        print(f"{prog}: internal error: {type(exc).__name__}: {exc}. This is a bug in the toolkit, not in your "
              "input: please report it with the command line (SUBITIZING_TRACEBACK=1 shows where it happened)",
              file=sys.stderr)
        return EXIT_INTERNAL


def out_folder_problem(out, option: str = "--out") -> str | None:
    """Why `out` cannot be (or become) an output folder, as one line naming the option; None when it can.
    Checked before any work, so that a long job does not fail at its first write."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            return f"{option} {out}: exists and is not a folder; choose another {option}"
        if not os.access(out, os.W_OK | os.X_OK):
            return f"{option} {out}: no permission to write in this folder; choose another {option}"
        return None
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {out}: {existing} is not a folder; choose another {option}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {out}: no permission to create folders in {existing}; choose another {option}"
    return None


def resolve_device(name: str, option: str = "--device"):
    """The torch device that --device names (auto: a CUDA GPU when there is one, else the CPU)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {name}: no CUDA device is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    return device
