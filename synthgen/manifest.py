"""The output folder's manifest, and which files in the folder are synthgen's own.

Files synthgen owns in an output folder: `manifest.json`, `sources.json`, `shard-NNNNN.h5`, hidden
`.shard-NNNNN.h5.tmp-PID` files of an interrupted build, the `prepared/` object store of an
unfinished build, and the `inspect/` folder. Anything else
there is the user's, and synthgen never deletes it.
"""
from __future__ import annotations

import json
from pathlib import Path

from common.atomic import write_atomic
from common.jsontext import json_text
from common.locks import lock_file_name
from synthgen.errors import OutputError
from synthgen.prepared import PREPARED_DIR
from synthgen.shards import SHARD_RE, TEMP_RE

MANIFEST = "manifest.json"
SOURCES = "sources.json"
INSPECT_DIR = "inspect"
MANIFEST_FORMAT = "synthgen-manifest"
LOCK_FILE = lock_file_name("synthgen")  # held while a command writes the folder (synthgen.writer.holding)


def is_own_entry(name: str) -> bool:
    return (name in (MANIFEST, SOURCES, INSPECT_DIR, PREPARED_DIR, LOCK_FILE) or bool(SHARD_RE.fullmatch(name))
            or bool(TEMP_RE.fullmatch(name)) or name.startswith((f".{MANIFEST}.tmp", f".{SOURCES}.tmp")))


def write_json_atomic(path, data) -> None:
    write_atomic(path, json_text(data).encode())


def read_manifest(out_dir) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: unreadable manifest ({exc}); remove the folder's synthgen files or use "
                          "--overwrite") from None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def holds_set(folder) -> bool:
    """Whether `folder` holds a synthgen manifest.json (a damaged or unreadable one counts as none)."""
    try:
        return read_manifest(folder) is not None
    except (OutputError, OSError):
        return False


def enclosing_set(path) -> Path | None:
    """The synthgen set folder that `path` is or lies in (the nearest folder at or above it holding a synthgen
    manifest.json), or None."""
    path = Path(path).resolve()
    return next((folder for folder in (path, *path.parents) if holds_set(folder)), None)


def inside_set_problem(out, option: str = "--out", own_set: bool = False) -> str | None:
    """Why `out` cannot take a command's files: it is, or lies in, a synthgen set folder, where files that are
    not the set's own stop synthgen from resuming or extending it. `own_set`: `out` is the set being written
    (only the folders above it are looked at)."""
    out = Path(out)
    found = enclosing_set(out.resolve().parent if own_set else out)
    if found is None:
        return None
    where = "is the folder of the synthgen set there" if found == out.resolve() else f"lies in the synthgen set {found}"
    return (f"{option} {out}: {where}; files that are not the set's own would stop synthgen from resuming or "
            f"extending it: choose a folder outside it")


def looks_finished(out_dir, n_images: int | None = None) -> bool:
    """Whether `out_dir` already holds a complete set (of `n_images`, when given): the command that made it,
    run again, most likely has nothing to do, so it need not start workers ahead of its checks."""
    try:
        manifest = read_manifest(out_dir)
    except (OutputError, OSError):
        return False
    return bool(manifest and manifest.get("complete") and n_images in (None, manifest.get("n_images")))
