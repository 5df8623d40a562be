"""Continuing a run (--resume): what must hold for the run that goes on to be the run that was saved. The same
sets, wherever they lie now; the split it started with; and a note when it goes on in another number of
processes. vae.train.Run.restore loads the saved states once these hold."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.errors import flat_text
from vae.build import TrainingError
from vae.checkpoint import CheckpointError, saved_sets
from vae.data import Split


def sets_problem(saved: list[dict], now: list[dict]) -> str | None:
    """Why the sets `now` cannot continue a run that read `saved`, as one line; None when they are the same sets
    (wherever they lie now)."""
    fix = "resume with the run's own sets, or start a new run in another --out"
    if len(now) != len(saved):
        started = ", ".join(f"{s.get('option', '')} {s['path']}".strip() for s in saved)
        return (f"--resume: the run was started with {len(saved)} set(s) ({started}), and {len(now)} are given now; "
                f"give all of them, in that order, or start a new run in another --out")
    for old, new in zip(saved, now):
        named = f"{new['option']} {new['path']}"
        where = "" if old["path"] == new["path"] else f" (the run started with {old['path']})"
        if old.get("option", new["option"]) != new["option"]:
            return f"--resume: {named}: the run read its set there with {old['option']}{where}; {fix}"
        if old["identity"] != new["identity"]:
            what = ("changed since the run started (a different set is there now)" if not where else
                    f"is not the run's set {old['path']} (another build)")
            return f"--resume: {named} {what}; {fix}"
        if old.get("n_images", new["n_images"]) != new["n_images"]:
            return (f"--resume: {named} holds {new['n_images']} images, the run started with {old['n_images']} "
                    f"(the same build, made larger or smaller since){where}; {fix}")
    return None


def check_sets(state: dict, now: list[dict], log) -> None:
    """Refuse sets `now` (vae.build.Data.sets) that are not those the checkpoint `state` read; log the sets that
    moved since."""
    saved = saved_sets(state)
    problem = sets_problem(saved, now) if saved is not None else None
    if problem:
        raise TrainingError(problem)
    for old, new in zip(saved or [], now):
        if old["path"] != new["path"]:
            log(f"{new['option']} {new['path']}: the run's set, moved from {old['path']} (the same build, "
                f"{new['n_images']} images)")


def world_change_line(state: dict, world: int, batch: int) -> str | None:
    """The log's note when a run goes on in another number of processes than it trained in (allowed, on a machine
    with fewer GPUs, but its steps are then no longer those of an uninterrupted run); None when it does not."""
    saved = int(state.get("world_size", world))
    if saved == world:
        return None
    return (f"note: the run trained in {saved} process(es), a global batch of {saved * batch}; it continues "
            f"in {world}, a global batch of {world * batch}: from here its steps, and so its weights, differ from "
            "those of an uninterrupted run")


def continued_split(state: dict, out: Path, now: Split, n_images: int, log) -> Split:
    """The split the run goes on with: the one saved in last.pt, whatever this version would compute (`now`,
    over the sets' `n_images`). A last.pt from before the split was saved has `now` checked against what
    config.json records."""
    if "split" not in state:
        problem = split_problem(recorded_split(out / "config.json"), now.counts())
        if problem:
            raise TrainingError(f"--resume: {out}: this version of vae-train splits the run's images "
                                f"otherwise than the version that started it ({problem}); continued, the run would "
                                "train on other images, its validation images among them; continue it with the "
                                "version that started it, or start a new run in another --out")
        return now
    try:
        saved = Split.from_state(state["split"])
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{out / 'last.pt'}: its saved split cannot be read ({flat_text(exc)})") from None
    indices = np.concatenate([saved.train_synthetic, saved.train_natural_order, saved.validation])
    if indices.size and not 0 <= indices.min() <= indices.max() < n_images:
        raise CheckpointError(f"{out / 'last.pt'}: its saved split names images up to {indices.max()}, and "
                              f"the run's sets hold {n_images}; not the last.pt of these sets")
    if not saved.same_as(now):
        log("note: this version of vae-train would split the run's images otherwise; the run goes on with "
            "the split it started with, saved in its last.pt")
    return saved


SPLIT_RECORD = {"synthetic_train": "synthetic training images", "natural_train": "natural training images",
                "validation": "validation images", "natural_dropped_per_class": "natural examples removed per class"}


def recorded_split(config_json: Path) -> dict | None:
    """The counts of the split that a run's config.json records (Split.counts); None where it holds none."""
    try:
        data = json.loads(config_json.read_text())["data"]
        record = {key: data[key] for key in SPLIT_RECORD}
        record["natural_dropped_per_class"] = {int(k): v for k, v in record["natural_dropped_per_class"].items()}
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def split_problem(recorded: dict | None, now: dict) -> str | None:
    """Where the split computed now departs from the one recorded, in words; None where they agree or nothing
    was recorded."""
    if recorded is None:
        return None
    return "; ".join(f"{label}: {recorded[key]} recorded in config.json, {now[key]} now"
                     for key, label in SPLIT_RECORD.items() if recorded[key] != now[key]) or None
