"""The output folder: its manifest, resuming, and refusing to mix different builds.

Files synthgen owns in an output folder: `manifest.json`, `sources.json`, `shard-NNNNN.h5`, hidden
`.shard-NNNNN.h5.tmp-PID` files of an interrupted build, the `prepared/` object store of an
unfinished build, and the `inspect/` folder. Anything else
there is the user's, and synthgen never deletes it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py

from synthgen.atomic import write_atomic
from synthgen.errors import OutputError
from synthgen.prepared import PREPARED_DIR
from synthgen.shards import SHARD_RE, TEMP_RE, shard_path

MANIFEST = "manifest.json"
SOURCES = "sources.json"
INSPECT_DIR = "inspect"
MANIFEST_FORMAT = "synthgen-manifest"


def is_own_entry(name: str) -> bool:
    return (name in (MANIFEST, SOURCES, INSPECT_DIR, PREPARED_DIR) or bool(SHARD_RE.fullmatch(name))
            or bool(TEMP_RE.fullmatch(name)) or name.startswith((f".{MANIFEST}.tmp", f".{SOURCES}.tmp")))


def write_json_atomic(path, data) -> None:
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())


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


def describe_differences(old: dict, new_config: dict) -> str:
    """Which build arguments differ between the folder's build and the requested one."""
    old_config = old.get("config", {})
    changed = [f"--{k.replace('_', '-')} {old_config.get(k)!r} -> {v!r}" for k, v in new_config.items()
               if old_config.get(k) != v]
    if not changed:
        changed = ["the source files or the synthgen version changed"]
    return "; ".join(changed)


def completed_shards(out_dir, identity: str, n_shards: int) -> set[int]:
    """Shards of this build that are already on disk (a shard file only exists once complete)."""
    done = set()
    for index in range(n_shards):
        path = shard_path(out_dir, index)
        if not path.exists():
            continue
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("build_identity") == identity:
                    done.add(index)
        except OSError:
            pass  # unreadable: it will be rebuilt (and replaced atomically)
    return done


def prepare_output(out_dir, identity: str, config_json: dict, n_shards: int, overwrite: bool) -> set[int]:
    """Check the output folder before any work; return the shards that a resumed build can skip.

    Raises OutputError (and changes nothing) for a folder holding someone else's files, or a
    different build without --overwrite.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if not entries:
        return set()
    foreign = [name for name in entries if not is_own_entry(name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise OutputError(f"--out {out}: the folder holds files synthgen did not write ({shown}); "
                          "choose an empty or new folder")
    manifest = read_manifest(out)
    if not overwrite:
        if manifest is not None and manifest.get("build_identity") == identity:
            for name in entries:
                if TEMP_RE.fullmatch(name):  # left by an interrupted build
                    (out / name).unlink(missing_ok=True)
            return completed_shards(out, identity, n_shards)
        what = describe_differences(manifest, config_json) if manifest else "an unknown build"
        raise OutputError(f"--out {out}: the folder holds a different build ({what}); re-run with --overwrite "
                          "to replace it, or choose another --out")
    for name in entries:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return set()
