"""Room on disk for what a command will write, checked before any work.

A build writes more than its shards: while it runs, the prepared object store (synthgen.prepared: every
object decoded, up to 1.4 GB for THUS10000 at 161 px, removed when the set is complete) and the parts of a
partial last round (synthgen.parts); with --scene-store, the decoded scenes (about 11 GB for SUN397 at 161
px), kept for later builds. What lands on one disk is summed, wherever its folders are, so that a set and a
store on one disk are not each found to fit alone and then run out of room together, after minutes of work.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from synthgen.errors import OutputError
from synthgen.parts import plan_parts


@dataclass(frozen=True)
class Planned:
    """`nbytes` of `what` that a command will write into `folder`, the folder of option `flag`. `at_most`: an
    upper bound rather than an estimate; `remedy`: a way to need less, besides freeing space."""

    flag: str
    folder: Path
    what: str
    nbytes: int
    at_most: bool = False
    remedy: str = ""

    def describe(self) -> str:
        return f"{'up to' if self.at_most else 'about'} {size_text(self.nbytes)} of {self.what}"


def size_text(nbytes: float) -> str:
    """Bytes for people: "12 GB", "1.4 GB", "310 MB", "48 KB" (decimal units, as disk tools show them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{nbytes:.0f} bytes"


def planned_shards(out: Path, todo: list[int], sizes: dict[int, int], workers: int | None, size: int,
                   compression: str | None = None) -> list[Planned]:
    """The shards `todo` (`sizes`: images each, of size x size RGB) that a command writes into --out, raw, with the
    parts a partial last round on `workers` holds besides for a moment (synthgen.parts; None: a dask cluster
    that has not said yet, taken as one worker). Nothing where they are compressed: their size is not known before.
    `compression`: the command's --compression, None for a command without it."""
    if compression not in (None, "none"):
        return []
    in_parts = sum(sizes[s] for s in plan_parts(todo, sizes, workers or 1)[1])
    nbytes = (sum(sizes[s] for s in todo) + in_parts) * size * size * 3
    return [Planned("--out", out, "shards", nbytes, remedy="" if compression is None else "use --compression lzf")]


def _existing(folder: Path) -> Path:
    return next(p for p in [folder, *folder.parents] if p.exists())


def _disk(folder: Path) -> int:
    return os.stat(_existing(folder)).st_dev


def check_room(planned: list[Planned], freed: dict[Path, int] | None = None) -> None:
    """Raise OutputError, before anything is written, when what `planned` puts on one disk is more than is free
    there (with what `freed` says the command deletes first: bytes by folder, a set it replaces); the message
    names the options whose folders share that disk, what each writes, and what to do."""
    by_disk: dict[int, list[Planned]] = {}
    for item in planned:
        if item.nbytes > 0:
            by_disk.setdefault(_disk(item.folder), []).append(item)
    for disk, items in by_disk.items():
        need = sum(item.nbytes for item in items)
        free = shutil.disk_usage(_existing(items[0].folder)).free
        free += sum(nbytes for folder, nbytes in (freed or {}).items() if _disk(folder) == disk)
        if need <= free:
            continue
        folders = list(dict.fromkeys(f"{item.flag} {item.folder}" for item in items))
        where = folders[0] if len(folders) == 1 else f"{' and '.join(folders)} (one disk)"
        writes = [item.describe() for item in items]
        listed = writes[0] if len(writes) == 1 else f"{', '.join(writes[:-1])} and {writes[-1]}"
        total = f", {size_text(need)} in all," if len(items) > 1 else ""
        remedies = ["free space", "write elsewhere"] + list(dict.fromkeys(item.remedy for item in items if item.remedy))
        raise OutputError(f"{where}: this writes {listed} there{total} but only {size_text(free)} is free on that "
                          f"disk; {', '.join(remedies[:-1])} or {remedies[-1]}")
