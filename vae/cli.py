"""The `vae-train` command line: settings from vae.config, checked before torch is imported.

A new run needs --data and an --out that holds no run yet. `--resume` continues the run in --out,
wherever it is now (a copied or moved run resumes in place, and nothing is written elsewhere): its
saved settings are read from its last.pt, and only --out, the runtime options and --epochs may be
given, and --data and --natural to say where the run's sets are now if they moved (the trainer checks
that they are the same sets); any other option that differs from the saved value is refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from common.cli import add_version, out_folder_problem, run
from common.errors import UsageError
from common.settings import (Parser, add_options, all_fields, field_problem, flag_of, from_args, from_dict, given_names,
                             show_value, value_of)
from vae.config import (EPOCHS_FOLDER, RANDOM_VGG, RELOCATABLE, RESUMABLE, TrainConfig, compile_problem, holds_run,
                        in_current_terms)


def make_parser() -> Parser:
    parser = Parser(prog="vae-train", description="Train the paper's convolutional VAE with a VGG-19 feature "
                    "perceptual loss on synthgen shards. Defaults are the paper's recipe.")
    add_version(parser, "vae-train")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, "
                        "with its saved settings (only --out, the runtime options and --epochs may be given, and "
                        "--data and --natural where the run's sets have moved)")
    add_options(parser, TrainConfig)
    return parser


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else path


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """Data and weight paths made absolute, so the saved settings work from any folder (and in a copy)."""
    data = dataclasses.replace(config.data, data=[_absolute(p) for p in config.data.data],
                               natural=[_absolute(p) for p in config.data.natural])
    weights = config.loss.vgg_weights
    absolute = weights if weights in (None, RANDOM_VGG) else _absolute(weights)
    loss = dataclasses.replace(config.loss, vgg_weights=absolute)
    return dataclasses.replace(config, data=data, loss=loss)


def unread_options(config: TrainConfig, given: dict) -> str | None:
    """Options given on the command line that the run would not read: the mixing options without --natural (a
    forgotten --natural?), and --vgg-weights with a loss that uses no VGG."""
    names = given_names(TrainConfig, given)
    fields = all_fields(TrainConfig)
    unread = [flag_of(fields[name]) for name in names if name in ("natural_start", "natural_ramp", "natural_drop")]
    if unread and not config.data.natural:
        return (f"{', '.join(unread)}: the mixing of natural images, and no --natural set is given; add --natural "
                "SETS, or drop them")
    if "vgg_weights" in names and config.loss.recon != "perceptual":
        return (f"--vgg-weights: only the perceptual loss reads it, and --recon is {config.loss.recon}; drop it, or "
                "give --recon perceptual")
    return None


def new_run(given: dict) -> TrainConfig:
    from synthgen.manifest import inside_set_problem

    config = with_absolute_paths(from_args(TrainConfig, given))
    out = Path(config.out)
    problem = (compile_problem(config.runtime) or unread_options(config, given) or out_folder_problem(out)
               or inside_set_problem(out))
    if problem:
        raise UsageError(problem)
    if holds_run(out):
        raise UsageError(f"--out {out}: already holds a run; add --resume to continue it, or choose another --out")
    return config


def resumed_run(given: dict) -> tuple[TrainConfig, dict]:
    """The saved settings of the run in --out, with --out, the runtime options and --epochs replaced, and the
    run's last checkpoint (read once: the trainer continues from it)."""
    from vae.checkpoint import load_checkpoint  # torch: only now that the arguments are known to be sound

    problem = field_problem(all_fields(TrainConfig)["out"], given["out"])  # read before the settings are made
    if problem:
        raise UsageError(problem)
    out = Path(given["out"])
    if not (out / "last.pt").is_file():
        raise UsageError(f"--resume: {out} holds no run with a checkpoint to continue (no last.pt there)")
    if out_folder_problem(out):  # the run is there, and this user cannot write it (someone else's run)
        raise UsageError(f"--resume: no permission to write in {out}, where the run continues; copy the run folder "
                         "somewhere you can write and resume it there")
    state = load_checkpoint(out / "last.pt")
    stored = in_current_terms(json.loads(state.get("train_config", "{}"))) | {"out": str(out)}
    try:
        saved = from_dict(TrainConfig, relocated(stored, given))
    except UsageError as exc:  # a saved setting no longer holds: the VGG-19 weights file it names is gone
        hint = ("; it continues with the settings it was started with, so put the file back there"
                if str(exc).startswith("--vgg-weights ") else "")
        raise UsageError(f"--resume: the run was started with {exc}{hint}") from None
    for option, paths in (("--data", saved.data.data), ("--natural", saved.data.natural)):
        gone = [path for path in paths if not Path(path).exists()]
        if gone and given.get(option[2:]) is None:
            raise UsageError(f"--resume: the run's set {option} {gone[0]} is not there any more; if its sets have "
                             "moved, give where they are now with --data (and --natural), all of them in the order "
                             "the run was started with: the run checks that they are the same sets")
    fields = all_fields(TrainConfig)
    asked = with_absolute_paths(from_args(TrainConfig, given, base=saved))
    refused = [f"{flag_of(fields[name])} {show_value(fields[name], value_of(asked, name))} (the run has "
               f"{show_value(fields[name], value_of(saved, name))})"
               for name in given_names(TrainConfig, given)
               if name not in RESUMABLE | RELOCATABLE and value_of(asked, name) != value_of(saved, name)]
    if refused:
        raise UsageError(f"--resume continues the run with its saved settings; drop {'; '.join(refused)}, or start "
                         "a new run in another --out")
    problem = compile_problem(asked.runtime) if {"compile", "compile_mode"} & set(given_names(TrainConfig, given)) \
        else None
    if problem:
        raise UsageError(problem)
    return asked, state


def relocated(stored: dict, given: dict) -> dict:
    """The saved settings `stored` with the sets' paths that --resume gives instead (made absolute), so that
    sets no longer at their saved paths are not looked for there."""
    moved = {name: [_absolute(path) for path in given[name]] for name in RELOCATABLE if given.get(name) is not None}
    if not moved:
        return stored
    if isinstance(stored.get("data"), dict):  # settings saved in groups; earlier versions kept them flat
        return stored | {"data": stored["data"] | moved}
    return stored | moved


def finished(out: Path, state: dict, epochs: int, save_every: int = 0) -> bool:
    """Whether the run in `out`, whose last checkpoint is `state`, has trained its `epochs` and left nothing to
    do: a run cut off between its last checkpoint and its metrics.jsonl goes to the trainer, which rewrites
    the metrics from the checkpoint's history, and so does one given --save-every without its untrained start
    kept, which the trainer rebuilds (vae.train.Run.untrained_start)."""
    if state["epoch"] < epochs or (save_every and not (out / EPOCHS_FOLDER / "epoch-0000.pt").exists()):
        return False
    try:
        logged = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return False
    return len(logged) == len(json.loads(state.get("history", "[]")))


def main(argv=None) -> int:
    given = vars(make_parser().parse_args(argv))
    command = ["vae-train", *(sys.argv[1:] if argv is None else argv)]

    def body() -> int:
        config, state = resumed_run(given) if given.pop("resume") else (new_run(given), None)
        if state is not None and finished(Path(config.out), state, config.training.epochs, config.training.save_every):
            # Said before the trainer is imported and the data loaded; the run folder is left as it is.
            if os.environ.get("RANK", "0") == "0":  # under torchrun, once
                print(f"vae-train: the run in {config.out} has trained {state['epoch']} epochs (--epochs "
                      f"{config.training.epochs}); nothing to do. Give a larger --epochs to train it further")
            return 0
        from vae.train import train

        return train(config, state, command)

    return run("vae-train", body, interrupted="interrupted; continue with --resume (from the last finished epoch)",
               memory_hint="lower --batch-size (or --image-size, or the model's --latent and channels), or give "
                           "--data-on-device no; a run stopped part way continues with --resume")


if __name__ == "__main__":
    sys.exit(main())
