"""The bad-input matrix, through the installed console scripts: every input a user can get wrong ends in
one line on stderr that names the flag or file, a non-zero exit code, and never a Python traceback."""
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.atomic import write_atomic
from common.cli import run
from common.errors import UsageError, UserError
from synthgen.cli import main as synthgen_main
from test_verify_inspect_reader import flip_image_bytes
from vae.checkpoint import load_model
from vae.cli import main as train_main

BIN = Path(sys.executable).parent
TINY = ["--encoder", "8@4x4-2,8@4x4-2", "--decoder", "8@3x3-2,8@3x3-2", "--latent", "4", "--batch-size", "16",
        "--workers", "0", "--recon", "pixel", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    fast = ["--size", "32", "--no-progress", "--workers", "1"]
    assert synthgen_main(["build", "--n", "40", "--shard-size", "20", "--out", str(root / "set"), *fast]) == 0
    assert synthgen_main(["build", "--n", "20", "--out", str(root / "set-16"), *fast, "--size", "16", "--area-range",
                          "0.1-0.36"]) == 0
    shutil.copytree(root / "set", root / "corrupt")
    flip_image_bytes(root / "corrupt" / "shard-00001.h5")
    (root / "photos" / "2").mkdir(parents=True)
    for k in range(4):
        cv2.imwrite(str(root / "photos" / "2" / f"p{k}.jpg"), np.full((40, 50, 3), 40 * k, np.uint8))
    assert synthgen_main(["pack", str(root / "photos"), "--out", str(root / "one-class"), *fast]) == 0
    assert synthgen_main(["pack", str(root / "photos"), "--out", str(root / "one-class-cropped"), "--fit", "crop",
                          *fast]) == 0
    assert train_main(["--data", str(root / "set"), "--out", str(root / "run"), "--epochs", "1", *TINY]) == 0
    good = (root / "run" / "last.pt").read_bytes()
    for name, data in (("truncated", good[:len(good) // 3]), ("text", b"not a checkpoint at all\n")):
        (root / name).mkdir()
        (root / name / "last.pt").write_bytes(data)
    (root / "foreign").mkdir()
    torch.save({"weight": torch.zeros(3)}, root / "foreign" / "last.pt")  # a plain state dict, not ours
    (root / "newer").mkdir()  # a checkpoint a later toolkit wrote in a format of its own
    torch.save({**torch.load(root / "run" / "last.pt", weights_only=True), "version": 2}, root / "newer" / "last.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, root / "pickled.pt")  # a pickled module: never loaded
    # checkpoints changed after vae-train wrote them: a part taken out, the model it describes made another
    state = torch.load(root / "run" / "best.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "epoch"}, root / "no-epoch.pt")
    assert '"latent": 4,' in state["model_config"]
    torch.save({**state, "model_config": state["model_config"].replace('"latent": 4,', '"latent": 5,')},
               root / "other-model.pt")
    (root / "file.txt").write_text("a file, not a folder\n")
    return root


def cases(r: Path):
    """(command, arguments, exit code, text the one line must hold)."""
    ckpt, a = str(r / "run" / "best.pt"), str(r / "out-a")
    analyse = ["--checkpoint", ckpt, "--data", str(r / "set"), "--out", a, "--no-progress"]
    subitize = ["--checkpoint", ckpt, "--train", str(r / "set"), "--test", str(r / "set"), "--out", a,
                "--no-progress"]
    train = ["--data", str(r / "set"), "--out", str(r / "new-run"), *TINY]
    file = str(r / "file.txt")
    under_file = str(r / "file.txt" / "out")
    return [
        ("synthgen", ["build", "--n", "0", "--out", a], 2, "--n 0: must be in [1, 1000000000]"),
        ("synthgen", ["build", "--n", "abc", "--out", a], 2, "argument --n: invalid int value: 'abc'"),
        ("synthgen", ["build", "--out", a], 2, "the following arguments are required: --n"),
        ("synthgen", ["build", "--n", "5", "--count", "4-1", "--out", a], 2, "--count '4-1'"),
        # numbers past any sane build: a subnormal area overflowed, a huge --n planned forever, a huge
        # --placement-tries met numpy's limit, each as an internal error or a hang
        ("synthgen", ["build", "--n", "5", "--area-range", "1e-320", "--out", a], 2,
         "of a 2x2 square: a speck, not an object one can count. Raise the bottom of --area-range to 0.00078 or more"),
        ("synthgen", ["build", "--n", "99999999999999999999999", "--out", a], 2, "must be in [1, 1000000000]"),
        ("synthgen", ["dots", "--n", "5", "--placement-tries", "99999999999999999999999", "--out", a], 2,
         "must be in [1, 100000]"),
        ("synthgen", ["build", "--n", "5", "--count", "1,1,2", "--out", a], 2,
         "--count '1,1,2': 1 is given twice; every count is drawn equally often, so give each once"),
        ("synthgen", ["dots", "--n", "5", "--count", "1-8,5-12", "--out", a], 2,
         "--count '1-8,5-12': 5 is given twice"),
        ("synthgen", ["build", "--n", "100000", "--size", "2048", "--shard-size", "100000", "--out", a], 2,
         "--shard-size 100000 at --size 2048: one worker needs about 3775.4 GB of memory (a shard of 1258.29 GB of "
         "images, held about 3 times as it is written, 256 MB of --cache-mb, and about 0.2 GB of its own)"),
        ("synthgen", ["dots", "--n", "100000", "--size", "2048", "--shard-size", "100000", "--out", a], 2,
         "give --shard-size"),
        ("synthgen", ["build", "--n", "5", "--mask-threshold", "1.5", "--out", a], 2,
         "--mask-threshold 1.5: must be in (0, 1]"),
        ("synthgen", ["build", "--n", "5", "--objects", str(r / "nowhere"), "--out", a], 2, "folder does not exist"),
        ("synthgen", ["build", "--n", "5", "--out", str(r / "file.txt")], 2, "exists and is not a folder"),
        ("synthgen", ["dots", "--n", "5", "--out", str(r / "file.txt")], 2, "exists and is not a folder"),
        ("synthgen", ["build", "--n", "5", "--workers", "0", "--out", a], 2, "--workers 0"),
        ("synthgen", ["dots", "--n", "5", "--control", "item-size", "--item-range", "0.1-0.2", "--out", a], 2,
         "--item-range 0.1-0.2: even the largest dots would cover 0.2 px on average, less than a pixel"),
        ("synthgen", ["build", "--n", "5", "--size", "16", "--area-range", "0.0001-0.0002", "--out", a], 2,
         "--area-range 0.0001-0.0002 at --size 16: the smallest object"),
        ("synthgen", ["pack", str(r / "nowhere"), "--out", a], 2, "folder does not exist"),
        # a set inside a folder that builds read whole: its inspect figures (PNG) would become sources
        ("synthgen", ["pack", str(r / "photos"), "--out", str(r / "photos" / "2" / "packed")], 2,
         f"--out {r / 'photos' / '2' / 'packed'}: lies inside pack ROOT {r / 'photos'}, which is read whole"),
        ("synthgen", ["build", "--n", "5", "--backgrounds", str(r / "photos"), "--out", str(r / "photos" / "set")],
         2, f"--out {r / 'photos' / 'set'}: lies inside --backgrounds {r / 'photos'}, which is read whole"),
        ("synthgen", ["build", "--n", "5", "--backgrounds", str(r / "photos"), "--scene-store",
                      str(r / "photos" / "store"), "--out", a], 2,
         f"--scene-store {r / 'photos' / 'store'}: lies inside --backgrounds {r / 'photos'}"),
        ("synthgen", ["pack", str(r / "photos"), "--out", file], 2, "exists and is not a folder"),
        ("synthgen", ["inspect", str(r / "corrupt"), "--no-progress"], 1, "shard-00001.h5: corrupted"),
        ("synthgen", ["inspect", str(r / "file.txt"), "--no-progress"], 1, "not a folder"),
        ("synthgen", ["inspect", str(r / "set"), "--samples", "0"], 2, "--samples 0: must be in [1, 1000]"),
        ("synthgen", ["verify", str(r / "nowhere"), "--no-progress"], 1, f"{r / 'nowhere'}: no such folder"),
        ("vae-train", [*train, "--val-fraction", "1.5"], 2, "--val-fraction 1.5: must be in (0, 1)"),
        ("vae-train", [*train, "--latent", "0"], 2, "--latent 0: must be in [1, 65536]"),
        ("vae-train", [*train, "--epochs", "0"], 2, "--epochs 0: must be >= 1"),
        ("vae-train", [*train, "--batch-size", "0"], 2, "--batch-size 0: must be >= 1"),
        # BatchNorm cannot take training statistics of one image on a 1x1 map (it was an internal error)
        ("vae-train", [*train, "--batch-size", "1", "--encoder", "4@4x4-2,4@4x4-2,4@4x4-2,4@4x4-2,4@4x4-2"], 1,
         "--batch-size 1: this model has a layer whose map is 1x1 (the grids after each convolution: 16, 8, 4, 2, 1,"),
        ("vae-train", [*train, "--lr", "-1"], 2, "--lr -1.0: must be > 0"),
        # an infinite learning rate or weight passed every range and ended in NaN losses at the first step
        ("vae-train", [*train, "--lr", "inf"], 2, "--lr inf: must be a finite number > 0"),
        ("vae-train", [*train, "--natural-drop", "0.2"], 2,
         "--natural-drop: the mixing of natural images, and no --natural set is given"),
        # "" (a quoted, unset shell variable) is the current folder to the file system: a set was built there
        ("synthgen", ["build", "--n", "5", "--out", ""], 2, "--out '': an empty value (an unset shell variable?)"),
        ("vae-train", ["--data", "", "--out", str(r / "new-run"), *TINY], 2, "--data '': an empty value"),
        ("vae-train", ["--out", "", "--resume"], 2, "--out '': an empty value"),
        ("vae-train", [*train, "--encoder", "8@4x4"], 2, "--encoder 8@4x4: '8@4x4' is not in the N@KxK-S notation"),
        ("vae-train", [*train, "--device", "gpu"], 2, "--device gpu: give auto, cpu, cuda or cuda:N"),
        # images in two of the sets: trained on twice, and validated on while trained on
        ("vae-train", [*train[:2], str(r / "set"), *train[2:]], 2,
         f"--data {r / 'set'} and --data {r / 'set'} hold the same images (the same build: its first 40 images are "
         "the same): the run would train on them twice and validate on images it trains on; give each set once"),
        ("vae-train", [*train, "--natural", str(r / "one-class"), str(r / "one-class-cropped")], 2,
         f"--natural {r / 'one-class'} and --natural {r / 'one-class-cropped'} hold the same images (packed from the "
         f"same photos: 4 of {r / 'photos'} are in both)"),
        ("vae-train", [*train, "--val-fraction", "0.99"], 1,
         "--val-fraction 0.99: all 40 images are held out for validation, none is left to train on"),
        ("vae-train", [*train, "--image-size", "48"], 2,
         f"--image-size 48: the sets' images are 32 px ({r / 'set'}); enlarging them adds no detail"),
        ("vae-train", ["--out", str(r / "new-run")], 2, "--data: give one or more synthgen build folders"),
        # an option the loss does not read went unread, whatever it named
        ("vae-train", [*train, "--vgg-weights", str(r / "nowhere.pth")], 2,
         "--vgg-weights: only the perceptual loss reads it, and --recon is pixel; drop it, or give --recon perceptual"),
        # numbers past any model of this kind reached torch as an internal error (an int64 overflow)
        ("vae-train", [*train, "--latent", "99999999999999999999999"], 2, "--latent 99999999999999999999999: must be "
                                                                          "in [1, 65536]"),
        ("vae-train", [*train, "--encoder", "99999999999999999999999@4x4-2"], 2,
         "is beyond any model this trainer is for: at most 65536 channels"),
        ("vae-train", ["--data", str(r / "corrupt"), "--out", str(r / "new-run"), *TINY], 1,
         "shard-00001.h5: corrupted"),
        ("vae-train", ["--data", str(r / "nowhere"), "--out", str(r / "new-run"), *TINY], 1,
         "--data " + str(r / "nowhere") + ": no such folder"),
        ("vae-train", [*train, "--recon", "perceptual", "--vgg-weights", str(r / "nowhere.pth")], 2,
         f"--vgg-weights {r / 'nowhere.pth'}: no such file"),
        # the loss network is loaded before the data: a damaged set would be found while loading it
        ("vae-train", ["--data", str(r / "corrupt"), *train[2:], "--recon", "perceptual", "--vgg-weights", file], 1,
         f"--vgg-weights {file}: cannot be read as a torch state dict"),
        ("vae-train", ["--out", str(r / "truncated"), "--resume"], 1, "not a readable vae-train checkpoint"),
        ("vae-train", [*train, "--compile", "no", "--compile-mode", "max-autotune"], 2,
         "--compile-mode max-autotune: a mode of compiling, with --compile no (the run would execute eagerly)"),
        ("vae-train", [*train, "--compile", "maybe"], 2, "argument --compile: invalid choice: 'maybe'"),
        ("vae-train", ["--data", str(r / "one-class"), "--out", str(r / "new-run"), *TINY], 2,
         f"--data {r / 'one-class'}: a natural set (synthgen pack); give it with --natural"),
        ("vae-train", ["--out", str(r / "text"), "--resume"], 1, "not a readable vae-train checkpoint"),
        ("vae-train", ["--out", str(r / "foreign"), "--resume"], 1, "not a vae-train checkpoint"),
        ("analyze-area-vs-number", [*analyse[2:], "--checkpoint", str(r / "newer" / "last.pt")], 1,
         "a vae-train checkpoint of format version 2, and this toolkit reads version 1 and earlier"),
        ("analyze-area-vs-number", [*analyse, "--bootstrap", "-5"], 2, "--bootstrap -5: must be in [0, 100000]"),
        ("analyze-area-vs-number", [*analyse, "--r2-min", "-1"], 2, "--r2-min -1.0: must be in [0, 1]"),
        ("analyze-area-vs-number", [*analyse[2:], "--checkpoint", str(r / "truncated" / "last.pt")], 1,
         "not a readable vae-train checkpoint"),
        ("analyze-area-vs-number", [*analyse[2:], "--checkpoint", str(r / "pickled.pt")], 1,
         "not a readable vae-train checkpoint"),
        ("analyze-area-vs-number", [*analyse[2:], "--checkpoint", str(r / "no-epoch.pt")], 1,
         f"{r / 'no-epoch.pt'}: an incomplete vae-train checkpoint (no epoch): changed since vae-train wrote it, which "
         "writes checkpoints whole; give another checkpoint of the run (best.pt, last.pt or one it kept in "
         "checkpoints/)"),
        ("analyze-area-vs-number", [*analyse[2:], "--checkpoint", str(r / "other-model.pt")], 1,
         f"{r / 'other-model.pt'}: its weights do not fit the model it describes (Error(s) in loading state_dict for "
         "VAE: size mismatch for fc_mu.weight"),
        ("analyze-area-vs-number", [*analyse[:2], "--data", str(r / "corrupt"), "--out", a, "--no-progress"], 1,
         "shard-00001.h5: corrupted"),
        ("analyze-area-vs-number", [*analyse[:2], "--data", str(r / "one-class"), "--out", a, "--no-progress"], 1,
         "a natural set has no areas"),
        ("vae-subitize", [*subitize, "--epochs", "0"], 2, "--epochs 0: must be >= 1"),
        ("vae-subitize", [*subitize, "--bootstrap", "5"], 2, "a 95% percentile interval needs at least 40 resamples"),
        ("analyze-area-vs-number", [*analyse, "--bootstrap", "99999999999999999999999"], 2,
         "--bootstrap 99999999999999999999999: must be in [0, 100000]"),
        ("vae-subitize", [*subitize, "--hidden", "99999999999999999999999"], 2, "must be in [1, 65536]"),
        ("vae-subitize", [*subitize[:4], "--test", str(r / "one-class"), "--out", a, "--no-progress", "--lr", "1e23",
                          "--epochs", "3"], 1,
         "--lr 1e+23: the readout diverged (its validation loss was never finite); lower --lr (the default is 0.001)"),
        ("analyze-area-vs-number", [*analyse, "--null-rotations", "9"], 2,
         "--null-rotations 9: with 9 rotations the smallest p-value the null can give is 1/10 = 0.10"),
        ("vae-subitize", [*subitize[:4], "--test", str(r / "one-class"), "--out", a, "--val-fraction", "0.99",
                          "--no-progress"], 1,
         "--val-fraction 0.99: all 40 --train images are held out for validation, none is left to train the readout "
         "on"),
        ("vae-subitize", [*subitize[:2], "--train", str(r / "one-class"), "--test", str(r / "set"), "--out", a,
                          "--no-progress"], 1,
         "a readout needs training images of at least two count classes"),
        ("vae-subitize", [*subitize[2:], "--checkpoint", str(r / "missing.pt")], 1, "no such checkpoint"),
        ("analyze-area-vs-number", [*analyse[2:], "--checkpoint", str(r / "truncated")], 1,
         f"--checkpoint {r / 'truncated'}: a folder; give a checkpoint file, such as {r / 'truncated' / 'last.pt'}"),
        # a readout tested on images it was trained on, or trained on an image twice: refused before any encoding
        ("vae-subitize", [*subitize[:2], "--train", str(r / "set"), "--test", str(r / "corrupt"), "--out", a,
                          "--no-progress"], 2, f"--train {r / 'set'} and --test {r / 'corrupt'} hold the same images "
                                               "(the same build: its first 40 images are the same): the test would "
                                               "score images the readout was trained on"),
        ("vae-subitize", [*subitize[:2], "--train", str(r / "set"), str(r / "one-class"), "--test",
                          str(r / "one-class-cropped"), "--out", a, "--no-progress"], 2,
         f"--train {r / 'one-class'} and --test {r / 'one-class-cropped'} hold the same images (packed from the same "
         f"photos: 4 of {r / 'photos'} are in both)"),
        ("vae-subitize", [*subitize[:2], "--train", str(r / "set"), str(r / "set"), "--test", str(r / "one-class"),
                          "--out", a, "--no-progress"], 2, "give each set once"),
        # a set of smaller images than the model's would reach the encoder enlarged, blurred
        ("analyze-area-vs-number", [*analyse[:2], "--data", str(r / "set-16"), "--out", a, "--no-progress"], 2,
         f"--data {r / 'set-16'}: its images are 16 px and the model of {ckpt} works at 32 px"),
        ("vae-subitize", [*subitize[:4], "--test", str(r / "set-16"), "--out", a, "--no-progress"], 2,
         f"--test {r / 'set-16'}: its images are 16 px and the model of {ckpt} works at 32 px; enlarged, they would "
         "show the encoder blurred images unlike those it learnt from: build or pack the set at --size 32"),
        # every input is checked before the work on the first: the damaged --train set would be found while
        # encoding it, the missing --test set only after that; the second checkpoint only after analysing the first
        ("vae-subitize", [*subitize[:2], "--train", str(r / "corrupt"), "--test", str(r / "nowhere"), "--out", a,
                          "--no-progress"], 1, f"--test {r / 'nowhere'}: no such folder"),
        ("analyze-area-vs-number", [*analyse[:2], str(r / "truncated" / "last.pt"), *analyse[2:]], 1,
         f"--checkpoint {r / 'truncated' / 'last.pt'}: not a readable vae-train checkpoint"),
        # an --out that cannot be a folder is refused before any work, naming the option
        ("synthgen", ["build", "--n", "5", "--out", under_file], 2, f"--out {under_file}: {file} is not a folder"),
        ("vae-train", [*train[:2], "--out", under_file, *TINY], 2, f"--out {under_file}: {file} is not a folder"),
        ("vae-train", [*train[:2], "--out", file, *TINY], 2, f"--out {file}: exists and is not a folder"),
        ("analyze-area-vs-number", [*analyse[:4], "--out", under_file], 2,
         f"--out {under_file}: {file} is not a folder"),
        ("vae-subitize", [*subitize[:6], "--out", under_file], 2, f"--out {under_file}: {file} is not a folder"),
        ("synthgen", ["inspect", str(r / "set"), "--out", file], 2, f"--out {file}: exists and is not a folder"),
        # no command writes into a synthgen set: files that are not its own stop it from being resumed or extended
        ("analyze-area-vs-number", [*analyse[:4], "--out", str(r / "set")], 2,
         f"--out {r / 'set'}: is the folder of the synthgen set there; files that are not the set's own would stop "
         "synthgen from resuming or extending it: choose a folder outside it"),
        ("vae-subitize", [*subitize[:6], "--out", str(r / "set" / "readout")], 2,
         f"--out {r / 'set' / 'readout'}: lies in the synthgen set {r / 'set'}"),
        ("vae-train", [*train[:2], "--out", str(r / "set" / "run"), *TINY], 2,
         f"--out {r / 'set' / 'run'}: lies in the synthgen set {r / 'set'}"),
        ("synthgen", ["build", "--n", "5", "--out", str(r / "set" / "inner")], 2,
         f"--out {r / 'set' / 'inner'}: lies in the synthgen set {r / 'set'}"),
        ("synthgen", ["inspect", str(r / "set"), "--out", str(r / "one-class" / "figures")], 2,
         f"--out {r / 'one-class' / 'figures'}: lies in the synthgen set {r / 'one-class'}"),
    ]


def run_script(case):
    command, args, _, _ = case
    return subprocess.run([str(BIN / command), *args], capture_output=True, text=True, timeout=300)


def test_every_bad_input_gets_one_clear_line_and_no_traceback(files):
    matrix = cases(files)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run_script, matrix))
    for (command, args, code, text), result in zip(matrix, results):
        where = f"{command} {' '.join(args)}"
        assert "Traceback" not in result.stderr, where
        assert result.returncode == code, (where, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{command}") and text in lines[0], (where, result.stderr)
    assert not (files / "out-a").exists() and not (files / "new-run").exists()  # nothing half-made is left
    assert sorted(p.name for p in (files / "set").iterdir()) == ["manifest.json", "shard-00000.h5", "shard-00001.h5",
                                                             "sources.json"]


@pytest.mark.parametrize("command", ["synthgen", "vae-train", "analyze-area-vs-number", "vae-subitize"])
def test_every_command_has_version_and_no_progress(command):
    version = subprocess.run([str(BIN / command), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith(f"{command} 0.")
    helped = subprocess.run([str(BIN / command), *(["inspect"] if command == "synthgen" else []), "--help"],
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "--no-progress" in helped.stdout


def test_load_model_returns_the_model_as_the_readme_says(files):
    import vae

    model = vae.load_model(files / "run" / "best.pt")
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model(torch.rand(2, 3, 32, 32))[0].shape == (2, 3, 32, 32)
    assert vae.load_model is load_model


def test_every_flag_the_readme_names_exists(capsys, monkeypatch):
    """README and --help agree: no documented option is missing from the commands, or from the benchmarks the
    README names (and none misspelt)."""
    import re

    from conftest import load_benchmark

    from analysis.cli import analyze_main, subitize_main
    from synthgen.cli import main as synthgen_cli
    from vae.cli import main as train_cli

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    helps = []
    for main, args in ((synthgen_cli, ["build"]), (synthgen_cli, ["dots"]), (synthgen_cli, ["pack"]),
                       (synthgen_cli, ["inspect"]),
                       (synthgen_cli, ["verify"]), (synthgen_cli, []), (train_cli, []), (analyze_main, []),
                       (subitize_main, [])):
        with pytest.raises(SystemExit):
            main([*args, "--help"])
        helps.append(capsys.readouterr().out)
    benchmarks = sorted(set(re.findall(r"\b(bench_[a-z_]+)\.py", readme)))
    assert "bench_imageconv" in benchmarks
    for name in benchmarks:  # scripts: their main() reads sys.argv
        monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
        with pytest.raises(SystemExit):
            load_benchmark(name).main()
        helps.append(capsys.readouterr().out)
    known = set(re.findall(r"--[a-z0-9][a-z0-9-]*", " ".join(helps)))
    others = {"--standalone", "--nproc", "--help"}  # torchrun's own (--nproc_per_node), and argparse's
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", readme)) - others
    assert named - known == set()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (a device that is always full) here")
def test_a_full_disk_names_the_file_and_says_what_to_do(tmp_path, capsys):
    def fill(handle):
        with open("/dev/full", "wb") as full:  # a real ENOSPC, which names no file, as a full disk's write does
            full.write(b"x")

    assert run("vae-train", lambda: write_atomic(tmp_path / "last.pt", fill)) == 1
    assert capsys.readouterr().err.strip() == (f"vae-train: error: {tmp_path / 'last.pt'}: No space left on device; "
                                               "free space on that disk (or write elsewhere) and run the command again")
    assert not list(tmp_path.iterdir())  # nothing half-written is left


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder, so a read-only one cannot be made here")
def test_folders_this_user_cannot_write_are_refused_naming_the_option(files, tmp_path):
    """A lab's shared, read-only sets and runs: each command said only '.../.synthgen.lock: Permission denied'."""
    shutil.copytree(files / "set", tmp_path / "set")
    shutil.copytree(files / "run", tmp_path / "run")
    (tmp_path / "shut").mkdir()
    folders = [tmp_path / "set", tmp_path / "run", tmp_path / "shut"]
    for folder in folders:
        folder.chmod(0o555)
    try:
        cases = [
            (["synthgen", "build", "--n", "5", "--out", tmp_path / "shut"], "--out {shut}: no permission to write in "
                                                                            "this folder; choose another --out"),
            (["synthgen", "inspect", tmp_path / "set"], "{set}: no permission to write its figures in {set}/inspect; "
                                                        "give --out another folder"),
            (["synthgen", "build", "--n", "5", "--backgrounds", files / "photos", "--scene-store",
              tmp_path / "shut" / "store", "--out", tmp_path / "new"],
             "--scene-store {shut}/store: no permission to create folders in {shut}; choose another --scene-store"),
            (["vae-train", "--out", tmp_path / "run", "--resume", "--epochs", "2"],
             "--resume: no permission to write in {run}, where the run continues"),
            (["analyze-area-vs-number", "--checkpoint", files / "run" / "best.pt", "--data", tmp_path / "set", "--out",
              tmp_path / "shut", "--no-progress"], "--out {shut}: no permission to write in this folder"),
        ]
        for command, expected in cases:
            result = subprocess.run([str(BIN / command[0]), *map(str, command[1:])], capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 2, (command, result.stderr)
            assert expected.format(shut=tmp_path / "shut", set=tmp_path / "set", run=tmp_path / "run") in result.stderr
        # reading them is another matter: a read-only set is inspected elsewhere, and verified
        inspected = subprocess.run([str(BIN / "synthgen"), "inspect", str(tmp_path / "set"), "--out",
                                    str(tmp_path / "figures"), "--no-progress"], capture_output=True, text=True)
        assert inspected.returncode == 0 and (tmp_path / "figures" / "contact_sheet.png").is_file()
    finally:
        for folder in folders:
            folder.chmod(0o755)


def test_a_message_that_quotes_a_library_stays_on_one_line(capsys):
    # what h5py, dask or torch say can run over several lines; our line quotes it, and stays one line
    def refuse(error):
        def body():
            raise error
        return body

    assert run("synthgen", refuse(UsageError("--scheduler tcp://nowhere:1: cannot connect (Timed out trying to "
                                             "connect to\n  tcp://nowhere:1 after 30 s)"))) == 2
    assert capsys.readouterr().err == ("synthgen: error: --scheduler tcp://nowhere:1: cannot connect (Timed out "
                                       "trying to connect to tcp://nowhere:1 after 30 s)\n")
    assert run("vae-train", refuse(UserError("a.pt: no fit:\n\tsize  mismatch\n"))) == 1
    assert capsys.readouterr().err == "vae-train: error: a.pt: no fit: size  mismatch\n"  # blanks within a line kept


# a signal, the exit code it ends a command with, and the command's line
SIGNALS = [(signal.SIGTERM, 143, "prog: terminated (SIGTERM)"), (signal.SIGINT, 130, "prog: interrupted")]


class Signalling:
    """An object that, when freed, sends the process `signum` from its finalizer and runs Python code there, where
    the signal's handler then runs."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        sum(range(100))


class SignallingWhenAsked:
    """An object that sends the process `signum` when asked for an attribute it lacks, and runs Python code there,
    where the signal's handler then runs (a loop: Python runs handlers at a jump back)."""

    def __init__(self, signum: int):
        self.signum = signum

    def __getattr__(self, name):
        os.kill(os.getpid(), self.signum)
        for _ in range(1000):
            pass
        raise AttributeError(name)


def in_a_finalizer(signum: int) -> None:
    Signalling(signum)  # freed at once: the signal comes inside __del__


def in_c_code_that_clears_errors(signum: int) -> None:
    # PyObject_HasAttr calls __getattr__ and clears whatever it raises, as C code calling back into Python may do
    # (pybind11's conversion to an array in matplotlib's Agg renderer dropped a SIGTERM this way)
    assert ctypes.pythonapi.PyObject_HasAttr(ctypes.py_object(SignallingWhenAsked(signum)),
                                             ctypes.py_object("missing")) == 0


@pytest.mark.parametrize("dropped", [in_a_finalizer, in_c_code_that_clears_errors])
@pytest.mark.parametrize("signum, code, said", SIGNALS)
def test_a_signal_whose_exception_is_dropped_still_stops_the_command(capsys, signum, code, said, dropped):
    """A signal's handler runs in whatever Python code the main thread is in. In a finalizer (a __del__, a weakref
    callback, a generator the garbage collector closes) Python only prints the exception it raises and goes on;
    C code that called back into Python may drop it without a word. Either way the command worked on as if no
    SIGTERM had come, until the batch scheduler's SIGKILL. Sent again, the signal stops it as anywhere else, and
    nothing is printed of the one that was dropped."""
    hooks = sys.unraisablehook, signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def body():
        dropped(signum)
        deadline = time.time() + 30
        while time.time() < deadline:
            time.sleep(0.001)
        return 0

    started = time.time()
    assert run("prog", body) == code
    assert time.time() - started < 10
    assert capsys.readouterr().err.splitlines() == [said]
    assert (sys.unraisablehook, signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == hooks


@pytest.mark.parametrize("signum, code, said", SIGNALS)
@pytest.mark.parametrize("error", [ValueError("Invalid affine transformation matrix"), UserError("a.jpg: damaged")])
def test_an_error_left_by_a_dropped_signal_stops_the_command_as_the_signal_would(capsys, signum, code, said, error):
    """C code that drops the interruption may raise an error of its own in its place (pybind11, in matplotlib's
    Agg renderer: "Invalid affine transformation matrix"), or its caller may take the failure for damaged data.
    The command was interrupted, and says that, not that it met a bug or a bad file."""
    def body():
        in_c_code_that_clears_errors(signum)
        raise error

    assert run("prog", body) == code
    assert capsys.readouterr().err.splitlines() == [said]
    time.sleep(0.1)  # past the moment the dropped one would be sent again: not, the command having ended


class HalfBuilt:
    """An object whose __init__ a signal cuts short, and whose __del__ then fails (as pyparsing's Forward does)."""

    def __init__(self, signum: int):
        os.kill(os.getpid(), signum)
        for _ in range(1000):
            pass
        self.part = "never set"

    def __del__(self):
        self.part.strip()


@pytest.mark.parametrize("signum, code, said", SIGNALS)
def test_what_an_interruption_cut_short_prints_nothing_after_the_commands_line(capsys, monkeypatch, signum, code,
                                                                              said):
    """The object is freed with the interruption's traceback, which held its __init__'s frame: its __del__'s
    AttributeError went to Python's hook for such errors, which printed it after the command's one line."""
    printed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda event: printed.append(repr(event.exc_value)))
    assert run("prog", lambda: HalfBuilt(signum)) == code
    assert capsys.readouterr().err.splitlines() == [said]
    assert printed == []


def test_a_signal_lost_in_a_finalizer_as_the_command_ends_is_not_sent_to_the_process_that_called_it(capsys):
    """A command run from Python (a notebook, a test) that ends just after a SIGTERM was lost in a finalizer: the
    signal is not sent again, which would reach the caller's own handler (here one that records it)."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))

    def body():
        Signalling(signal.SIGTERM)
        return 0

    try:
        assert run("prog", body) == 0
        time.sleep(0.2)  # past the moment it would be sent again
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [] and capsys.readouterr().err == ""


@pytest.mark.parametrize("allocate, detail", [
    (lambda: np.empty(10**16, np.uint8), "Unable to allocate 8.88 PiB"),  # numpy's MemoryError
    (lambda: torch.empty(10**16, dtype=torch.uint8), "DefaultCPUAllocator: can't allocate memory"),  # torch's
])
def test_memory_that_runs_out_is_the_machines_limit_not_a_bug(capsys, allocate, detail):
    # 10 PB: more than any machine's address space, so the allocation fails at once, wherever this runs
    assert run("vae-train", allocate, memory_hint="lower --batch-size") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vae-train: error: out of memory (") and detail in err
    assert err.endswith("; lower --batch-size")
    assert "bug" not in err


@pytest.mark.parametrize("error, said", [(UserError("the data went away"), "prog: error: the data went away"),
                                         (KeyboardInterrupt(), "prog: interrupted")])
def test_an_error_under_a_progress_bar_is_a_line_of_its_own(capsys, error, said):
    """A bar open when an error stopped a command was closed when its frame was freed, after the error's line:
    the line came out glued to the bar's last state ("epoch 4/50: 68%|...| 48/71 [...]vae-train: terminated"),
    with the cleared bar's blanks after it."""
    from tqdm import tqdm

    def body():
        bar = tqdm(total=10, desc="epoch 4/50", leave=False, file=sys.stderr)
        bar.update(3)
        raise error

    assert run("prog", body) in (1, 130)
    lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]
    assert lines[-1] == said
