"""`synthgen verify`: check every shard's schema and checksum against itself and the manifest."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from synthgen.reader import incomplete_reason, set_manifest
from synthgen.shards import SHARD_RE, VERIFY_THREADS, content_checksum, schema_problems, shard_contents


def verify_shard(path: Path, entry: dict, identity: str) -> list[str]:
    """Problems with one shard (empty when it is intact)."""
    if not path.exists():
        return ["missing"]
    try:
        attrs, arrays = shard_contents(path)
    except (OSError, KeyError, ValueError) as exc:
        return [f"cannot be read ({exc})"]
    problems = schema_problems(arrays, attrs)
    if problems:
        return problems
    try:
        actual = content_checksum(arrays, attrs)  # streamed images are read here
    except OSError as exc:
        return [f"cannot be read ({exc})"]
    if actual != attrs["content_sha256"]:
        problems.append(f"checksum mismatch: contents hash to {actual[:12]}..., the shard records "
                        f"{attrs['content_sha256'][:12]}...")
    if attrs["content_sha256"] != entry.get("content_sha256"):
        problems.append("checksum differs from the one in manifest.json")
    if attrs["build_identity"] != identity:
        problems.append("belongs to a different build than manifest.json")
    if attrs["n_images"] != entry.get("n_images") or attrs["first_index"] != entry.get("first_index"):
        problems.append("image range differs from manifest.json")
    return problems


def verify_set(root, progress: bool = True) -> dict[str, list[str]]:
    """Problems per file name across a set; an empty dict means every shard is intact."""
    root = Path(root)
    manifest = set_manifest(root, str(root))  # an error, not a problem of a set: there is no set to report on
    if not manifest.get("complete"):
        return {"manifest.json": [incomplete_reason(manifest, root)]}
    problems: dict[str, list[str]] = {}
    entries = manifest["shards"]
    listed = {entry["file"] for entry in entries}
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:  # reading and hashing run outside the GIL: shards at once
        found = pool.map(lambda entry: verify_shard(root / entry["file"], entry, manifest["build_identity"]), entries)
        for entry, shard_problems in zip(entries, tqdm(found, total=len(entries), desc="synthgen verify", unit="shard",
                                                       disable=not progress)):
            if shard_problems:
                problems[entry["file"]] = shard_problems
    for path in sorted(root.iterdir()):
        if SHARD_RE.fullmatch(path.name) and path.name not in listed:
            problems[path.name] = ["not listed in manifest.json (left from another build?)"]
    return problems
