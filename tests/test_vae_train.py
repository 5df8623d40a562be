"""vae-train end to end on CPU: run folder, checkpoints, overfitting, exact resume, NaN, DDP."""
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import lock_held_elsewhere, not_json, strict_json, trained_like_vgg19
from synthgen.cli import main as synthgen_main
from test_pack import make_sos_tree
from vae.build import build_scheduler
from vae.checkpoint import (kept_epochs, kept_epochs_line, load_checkpoint, load_model_and_metadata, run_identity,
                            save_checkpoint)
from common.errors import UserError
from vae.cli import main as train_main
from vae.cli import make_parser
from vae.config import DataSettings, TrainConfig, TrainingSettings, in_current_terms
from vae.runtime import compile_decision

TINY = ["--encoder", "8@4x4-1,16@4x4-2,16@4x4-2,32@4x4-2", "--decoder", "32@3x3-1,16@3x3-2,16@3x3-2,8@3x3-2",
        "--latent", "8", "--batch-size", "16", "--workers", "0", "--recon", "pixel"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# Inductor's vectorised CPU code in torch 2.14.1 gets the batch-norm statistics of TINY's first block wrong (8
# channels of a stride-1 convolution, then LeakyReLU; benchmarks/RESULTS.md), so --compile trains TINY eagerly.
# A model whose narrowest layer has 16 channels compiles correctly, and the compiled path gets tested.
COMPILES = [*TINY, "--encoder", "16@4x4-2,32@4x4-2", "--decoder", "32@3x3-2,16@3x3-2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-train")
    args = ["--size", "32", "--no-progress", "--workers", "1"]
    assert synthgen_main(["build", "--n", "64", "--out", str(root / "synth"), *args]) == 0
    # A handful of simple images (flat colour and one square), each 15 times: an epoch has many steps.
    rng = np.random.default_rng(0)
    (root / "handful" / "1").mkdir(parents=True)
    for k in range(8):
        image = np.empty((32, 32, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        x, y = rng.integers(0, 20, 2)
        image[y:y + 12, x:x + 12] = rng.integers(0, 256, 3)
        for copy in range(15):
            Image.fromarray(image).save(root / "handful" / "1" / f"img{k}-{copy}.png")
    assert synthgen_main(["pack", str(root / "handful"), "--out", str(root / "few"), *args]) == 0
    make_sos_tree(root / "sos", per_label=4)
    assert synthgen_main(["pack", str(root / "sos"), "--out", str(root / "natural"), *args]) == 0
    return root


def metrics(run):
    return [json.loads(line, parse_constant=not_json) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_process(*args):
    return [sys.executable, "-m", "vae.train", *map(str, args)]


def test_run_folder_checkpoints_and_natural_mixing(data, tmp_path, capsys):
    run = tmp_path / "run"
    rc = train_main(["--data", str(data / "synth"), "--natural", str(data / "natural"), "--out", str(run),
                     "--epochs", "3", "--natural-start", "1", "--natural-ramp", "2", *TINY])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "parameters: " in out and "done:" in out
    records = metrics(run)
    joining = f"the {records[2]['natural_images']} natural training images join over epochs 2-3"
    assert f"mixing: synthetic images only in epoch 1, then {joining}\n" in out
    assert [r["natural_fraction"] for r in records] == [0.0, 0.5, 1.0]
    assert records[0]["natural_images"] == 0 and records[2]["natural_images"] > records[1]["natural_images"] > 0
    assert all(len(r["kl_per_dim"]) == 8 and 0 <= r["active_dims"] <= 8 for r in records)
    assert all(np.isfinite(r["train"]["loss"]) for r in records)
    for name in ("config.json", "last.pt", "best.pt", "reconstruction.png", "loss_curves.png",
                 "reconstructions/epoch-0001.png", "reconstructions/epoch-0003.png"):
        assert (run / name).exists(), name
    for png in ("reconstruction.png", "loss_curves.png"):
        with Image.open(run / png) as image:
            assert image.width > 500 and np.asarray(image.convert("L")).std() > 5
    config = strict_json(run / "config.json")
    assert config["train"]["loss"]["beta"] == 0.03 and config["parameters"]["total"] > 0 and config["world_size"] == 1
    assert config["data"]["natural_train"] > 0
    assert f"torch {torch.__version__}" in config["machine"] and "CUDA" not in config["machine"]  # trained on CPU
    assert config["optimizer"] == {"name": "Adam", "fused": True}  # torch 2.4+ has the fused kernel on CPU
    state = torch.load(run / "last.pt", weights_only=True)  # plain tensors and values only
    assert state["epoch"] == 3 and json.loads(state["model_config"])["latent"] == 8
    model, meta = load_model_and_metadata(run / "best.pt")
    assert model(torch.rand(2, 3, 32, 32))[0].shape == (2, 3, 32, 32)
    best_epoch = min(records, key=lambda r: r["validation"]["loss"])["epoch"]
    assert meta["epoch"] == best_epoch


def test_natural_sets_go_in_natural_and_can_be_trained_on_alone(data, tmp_path, capsys):
    # a natural set as --data would skip the mixing schedule and the class balance without a word
    assert train_main(["--data", str(data / "natural"), "--out", str(tmp_path / "a"), "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"--data {data / 'natural'}: a natural set (synthgen pack); give it with --natural" in err
    # --natural alone: the paper's 20 synthetic-only epochs would train on nothing
    alone = ["--natural", str(data / "natural"), "--out", str(tmp_path / "b"), "--epochs", "2", *TINY, "--no-progress"]
    assert train_main(alone) == 2 and "give --natural-start 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert train_main([*alone, "--natural-start", "0", "--natural-ramp", "1"]) == 0
    out = capsys.readouterr().out
    records = metrics(tmp_path / "b")
    assert "data: 0 synthetic and" in out and f"the {records[0]['natural_images']} natural training images join in " \
        "epoch 1\n" in out
    assert [r["natural_fraction"] for r in records] == [1.0, 1.0] and records[0]["natural_images"] > 0


def test_the_fused_optimizer_takes_the_steps_of_torchs_default_adam():
    """The trainer's fused Adam (one kernel over the parameters) against torch's multi-tensor Adam: the same
    updates to rounding over steps where the moments build up, and a state that resumes in either."""
    from vae.model import VAE, ModelConfig
    from vae.build import build_optimizer

    config = ModelConfig(image_size=32, encoder="8@4x4-2,16@4x4-2", decoder="16@3x3-2,8@3x3-2", latent=8)
    torch.manual_seed(0)
    fused_model = VAE(config)
    reference_model = VAE(config)
    reference_model.load_state_dict(fused_model.state_dict())
    initial = [p.detach().clone() for p in fused_model.parameters()]
    fused = build_optimizer(fused_model, 0.01)
    reference = torch.optim.Adam(reference_model.parameters(), lr=0.01)
    assert fused.defaults["fused"] and not reference.defaults.get("fused")
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, noise = torch.rand(4, 3, 32, 32, generator=generator), torch.randn(4, 8, generator=generator)
        for model, optimizer in ((fused_model, fused), (reference_model, reference)):
            x_hat, mu, sigma = model(x, noise)
            optimizer.zero_grad()
            ((x_hat - x).square().sum() + mu.square().sum() + sigma.sum()).backward()
            optimizer.step()
    moved = [(a - b).abs().max().item() for a, b in zip(fused_model.parameters(), reference_model.parameters())]
    assert max(moved) < 1e-5, max(moved)
    assert max((a - b).abs().max().item() for a, b in zip(fused_model.parameters(), initial)) > 0.03  # 5 steps of 0.01
    build_optimizer(reference_model, 0.01).load_state_dict(reference.state_dict())  # a multi-tensor run resumes


@pytest.mark.parametrize("flag, layout", [([], torch.channels_last), (["--no-channels-last"], torch.contiguous_format)])
def test_the_network_runs_in_the_memory_layout_asked_for(data, tmp_path, monkeypatch, flag, layout):
    """--no-channels-last keeps the model NCHW, and its inputs too: a convolution runs channels_last whenever its
    input is, whatever its weights, so NCHW weights alone left the network as channels_last as the default's.
    Every convolution of training, validation and the figures, its input and its output."""
    seen = []
    forward = torch.nn.Conv2d.forward

    def observed(self, x):
        y = forward(self, x)
        seen.append(x.is_contiguous(memory_format=layout) and y.is_contiguous(memory_format=layout))
        return y

    monkeypatch.setattr(torch.nn.Conv2d, "forward", observed)
    assert train_main(["--data", str(data / "synth"), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY,
                       "--no-progress", *flag]) == 0
    assert len(seen) > 20 and all(seen), seen


def test_a_short_run_overfits_a_handful_of_images(data, tmp_path, capsys):
    run = tmp_path / "overfit"
    still = ["--flip-prob", "0", "--crop-max", "0", "--brightness", "0", "--contrast", "0", "--saturation", "0",
             "--hue", "0"]
    # beta 1: reconstruction-driven, so that memorising the images pays off against the KL
    rc = train_main(["--natural", str(data / "few"), "--natural-start", "0", "--natural-ramp", "1", "--out", str(run),
                     "--epochs", "24", "--lr", "0.003", "--val-fraction", "0.1", *TINY, "--batch-size", "12", "--beta",
                     "1", *still])
    assert rc == 0, capsys.readouterr().err
    losses = [r["train"]["loss"] for r in metrics(run)]
    assert min(losses[-3:]) < 0.3 * losses[0], losses


def test_the_learning_rate_stops_at_its_floor_and_the_floor_is_refused_above_the_rate(tmp_path, capsys):
    def rates(**settings):
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.0015)
        scheduler = build_scheduler(optimizer, TrainingSettings(lr_patience=0, **settings))
        seen = []
        for _ in range(8):  # a plateau: the validation loss never improves on the first epoch's
            scheduler.step(1.0)
            seen.append(optimizer.param_groups[0]["lr"])
        return seen

    assert rates()[-1] == pytest.approx(0.0015 * 0.2 ** 7)  # the paper's schedule has no floor
    assert rates(lr_min=1e-5) == pytest.approx([0.0015, 0.0003, 6e-5, 1.2e-5, 1e-5, 1e-5, 1e-5, 1e-5])
    out = tmp_path / "run"
    assert train_main(["--data", str(tmp_path), "--out", str(out), "--lr-min", "0.0015", *TINY]) == 2
    assert "--lr-min 0.0015: not below --lr 0.0015, so the learning rate could never be lowered" in \
        capsys.readouterr().err
    assert not out.exists()


def test_a_setting_added_later_at_its_earlier_behaviour_keeps_a_runs_identity(data, tmp_path):
    """A run saved before --lr-min existed, and its continuation by this version (which saves lr_min 0), are one
    run to the analyses; a floor makes another run."""
    run = tmp_path / "run"
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY, "--no-progress"]) == 0
    state = load_checkpoint(run / "last.pt", mmap=True)
    settings = json.loads(state["train_config"])
    assert settings["training"]["lr_min"] == 0.0
    earlier = {**state, "train_config": json.dumps({**settings, "training": {
        k: v for k, v in settings["training"].items() if k != "lr_min"}})}
    floored = {**state, "train_config": json.dumps({**settings, "training": {**settings["training"], "lr_min": 1e-5}})}
    assert run_identity(earlier) == run_identity(state) != run_identity(floored)


def test_a_run_saved_when_compile_was_a_switch_resumes_under_the_default(data, tmp_path, capsys):
    """--compile was a switch (true or false); a run saved then resumes, its false (then the default) read as
    today's default, auto, and its true as yes. Runtime settings are not part of a run's identity."""
    run = tmp_path / "run"
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY, "--no-progress"]) == 0
    state = load_checkpoint(run / "last.pt")
    settings = json.loads(state["train_config"])
    assert settings["runtime"]["compile"] == "auto"
    earlier = {**state, "train_config": json.dumps({**settings, "runtime": {**settings["runtime"], "compile": False}})}
    assert run_identity(earlier) == run_identity(state)
    save_checkpoint(run / "last.pt", earlier)
    assert train_main(["--out", str(run), "--resume", "--epochs", "2"]) == 0, capsys.readouterr().err
    assert strict_json(run / "config.json")["compile"]["setting"] == "auto"
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    # a saved true is yes; settings saved flat by still earlier versions are read the same way
    assert in_current_terms({"runtime": {"compile": True, "workers": 2}}) == \
        {"runtime": {"compile": "yes", "workers": 2}}
    assert in_current_terms({"compile": False, "lr": 0.1}) == {"compile": "auto", "lr": 0.1}
    assert in_current_terms({"runtime": {"compile": "no"}}) == {"runtime": {"compile": "no"}}


@pytest.mark.parametrize("setting, mode, device, compiles", [
    ("auto", "default", "cuda", True), ("auto", "default", "cpu", False), ("auto", "max-autotune", "cpu", True),
    ("yes", "default", "cpu", True), ("no", "default", "cuda", False), ("no", "default", "cpu", False)])
def test_when_a_run_compiles(setting, mode, device, compiles):
    """--compile auto compiles on CUDA (where the compiled step is faster) and not on the CPU; a --compile-mode
    other than default asks for compiling; yes and no decide on every device. The command line parses
    --compile alone as yes, and no value at all as auto."""
    wanted, why = compile_decision(setting, mode, torch.device(device))
    assert wanted is compiles and why.startswith(f"--compile {setting}")
    parser = make_parser()
    parsed = {flags: vars(parser.parse_args(["--out", "x", *flags])).get("compile") for flags in
              [(), ("--compile",), ("--compile", "no"), ("--compile", "auto")]}
    assert parsed == {(): None, ("--compile",): "yes", ("--compile", "no"): "no", ("--compile", "auto"): "auto"}
    assert TrainConfig(out="x", data=DataSettings(data=["d"])).runtime.compile == "auto"


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    common = ["--data", data / "synth", "--epochs", "4", *TINY]
    whole = subprocess.run(train_process(*common, "--out", tmp_path / "whole"), env=ENV, capture_output=True,
                           text=True)
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    process = subprocess.Popen(train_process(*common, "--out", cut), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (cut / "metrics.jsonl").exists() and len((cut / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = load_checkpoint(cut / "last.pt")["epoch"]
    assert 2 <= done < 4, "the run should have been cut off part way"
    resumed = subprocess.run(train_process("--out", cut, "--resume", "--workers", "0"), env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {done}" in resumed.stdout
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["train"]["loss"] for r in metrics(tmp_path / "whole")] == [r["train"]["loss"] for r in metrics(cut)]


@pytest.mark.parametrize("feed", [[], ["--data-on-device", "no", "--workers", "2"]], ids=["memory", "streamed"])
def test_sigterm_stops_a_run_as_ctrl_c_does_and_it_resumes(data, tmp_path, feed):
    """A batch scheduler's time limit sends SIGTERM, which killed the process where it stood. Streamed, the loader's
    workers are stopped at once: left to the garbage collector, each was waited on for 5 s, then killed."""
    run = tmp_path / "run"
    process = subprocess.Popen(train_process("--data", data / "synth", "--epochs", "500", *TINY, *feed, "--out", run),
                               env={**ENV, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (
            (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    sent = time.time()
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # where it is stuck: SIGABRT makes the fault handler print every thread's stack
        process.send_signal(signal.SIGABRT)
        _, err = process.communicate(timeout=60)
        pytest.fail(f"vae-train went on for 120 s after SIGTERM; where its threads were:\n{err[-8000:]}")
    assert time.time() - sent < 5, err  # 12 s streamed, with 2 workers, before they were stopped at once
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("vae-train: terminated (SIGTERM); continue with --resume (from the last "
                                            "finished epoch)")
    assert not list(run.glob(".*"))  # no temporary file, no lock
    done = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= done < 500
    assert train_main(["--out", str(run), "--resume", "--epochs", str(done + 1), "--workers", "0"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == done + 1


def test_checkpoints_written_while_the_next_epoch_trains_hold_their_own_epoch(data, tmp_path, monkeypatch):
    """An epoch's checkpoints go to a thread of their own while the next epoch trains: what they hold is copied
    at the epoch's end. Here epoch 1's writing waits until epoch 2 has taken steps, which change the weights in
    place, and its kept model is still epoch 1's: that of a run that trained 1 epoch."""
    import vae.checkpoint
    import vae.train

    one, two = tmp_path / "one", tmp_path / "two"
    assert train_main(["--data", str(data / "synth"), "--out", str(one), "--epochs", "1", *TINY]) == 0
    steps, seen = [], {}
    counted = vae.train.Run.augmented  # called once per training step

    def counting(self, *args):
        steps.append(self.epoch)
        return counted(self, *args)

    def late(path, state):
        if path.name == "last.pt" and state["epoch"] == 1:
            deadline = time.time() + 120
            while 2 not in steps and time.time() < deadline:
                time.sleep(0.01)
            seen["epoch 2 steps"] = steps.count(2)
        save_checkpoint(path, state)

    monkeypatch.setattr(vae.train.Run, "augmented", counting)
    monkeypatch.setattr(vae.checkpoint, "save_checkpoint", late)
    assert train_main(["--data", str(data / "synth"), "--out", str(two), "--epochs", "2", "--save-every", "1",
                       *TINY]) == 0
    assert seen["epoch 2 steps"] >= 1, "epoch 2 should have trained while epoch 1 was written"
    written, trained = load_checkpoint(two / "checkpoints" / "epoch-0001.pt"), load_checkpoint(one / "last.pt")
    assert all(torch.equal(written["model"][key], trained["model"][key]) for key in trained["model"])
    assert [r["validation"] for r in metrics(two)][:1] == [r["validation"] for r in metrics(one)]
    assert load_checkpoint(two / "last.pt")["epoch"] == 2 and len(metrics(two)) == 2


def test_the_checkpoint_thread_writes_metrics_after_the_checkpoint_and_reports_a_failed_write(tmp_path):
    """metrics.jsonl is written only once last.pt is: when last.pt cannot be written, the metrics of that epoch are
    not either (the two agree), and the failure comes out of the next wait, naming the file; close raises nothing."""
    from vae.checkpoint import CheckpointWriter, EpochFiles

    state = {"model_config": "{}", "model": {"w": torch.arange(4.0)}, "epoch": 1}
    writer = CheckpointWriter()
    writer.submit(EpochFiles(tmp_path, state, state, improved=True, kept=True, metrics=b'{"epoch": 1}\n'))
    writer.wait()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and (tmp_path / "best.pt").exists()
    assert (tmp_path / "checkpoints" / "epoch-0001.pt").exists()
    assert (tmp_path / "metrics.jsonl").read_bytes() == b'{"epoch": 1}\n'
    (tmp_path / "last.pt").unlink()
    (tmp_path / "last.pt").mkdir()  # a folder where last.pt goes: its write fails, as on a full disk
    writer.submit(EpochFiles(tmp_path, state | {"epoch": 2}, state, improved=False, kept=False, metrics=b"two\n"))
    with pytest.raises(OSError) as failed:
        writer.wait()
    assert str(tmp_path / "last.pt") in str(failed.value)
    assert (tmp_path / "metrics.jsonl").read_bytes() == b'{"epoch": 1}\n'
    assert not list(tmp_path.glob(".*tmp*"))
    writer.wait()  # the failure is reported once
    writer.close()
    writer.close()


def test_a_full_disk_names_the_file_it_could_not_write_and_keeps_the_last_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 0
    kept = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    # A file-size limit below a checkpoint's size makes the kernel refuse its write, as a full disk would.
    limit = len(kept["last.pt"]) // 2
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from vae.cli import main; sys.exit(main(sys.argv[1:]))")
    failed = subprocess.run([sys.executable, "-c", code, "--out", str(run), "--resume", "--epochs", "2",
                             "--workers", "0"], env=ENV, capture_output=True, text=True)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    # the message named no file before: "vae-train: error: File too large"
    assert failed.stderr.strip().splitlines()[-1] == f"vae-train: error: {run / 'last.pt'}: File too large"
    assert {name: (run / name).read_bytes() for name in kept} == kept and not list(run.glob(".*tmp*"))
    assert train_main(["--out", str(run), "--resume", "--epochs", "2", "--workers", "0"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 0
    state = load_checkpoint(run / "last.pt")
    state["model"]["fc_mu.weight"][0, 0] = float("nan")  # as a diverged update would leave it
    save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    capsys.readouterr()
    rc = train_main(["--out", str(run), "--resume", "--epochs", "3", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite loss" in err and "epoch 2" in err and "last.pt (epoch 1)" in err
    assert {name: (run / name).read_bytes() for name in before} == before
    assert len(metrics(run)) == 1


def train_in_two_processes(data, run, *args):
    """vae-train under torchrun with two CPU processes (gloo), as a user starts DDP; its stdout and stderr."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vae.train", "--data", str(data / "synth"), "--out", str(run), "--epochs", "2", *args]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, result.stderr


def test_a_reduced_tensor_is_let_go_by_gloo_before_all_reduce_returns(tmp_path):
    """gloo's worker thread dropped its reference to a reduced tensor after all_reduce returned, in about a quarter
    of the calls; a tensor whose Python object was freed first then needed the interpreter's lock from that thread,
    and at the end of a run, during Python's shutdown, that aborted the process in C++ ("terminate called without
    an active exception", after "done:", in about 1 CPU DDP run in 15)."""
    script = tmp_path / "reduce.py"
    script.write_text("""
import sys, torch, torch.distributed as dist
from vae.runtime import Runtime
dist.init_process_group("gloo")
runtime = Runtime(torch.device("cpu"), dist.get_rank(), 2, False)
late = 0
for _ in range(400):
    tensor = torch.ones(3)
    held = tensor._use_count()
    runtime.all_reduce(tensor)
    late += tensor._use_count() > held or not torch.equal(tensor, torch.full((3,), 2.0))
open(f"{sys.argv[1]}/late-{dist.get_rank()}", "w").write(str(late))
dist.destroy_process_group()
""")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(tmp_path)]
    env = {**ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [(tmp_path / f"late-{rank}").read_text() for rank in (0, 1)] == ["0", "0"]


def test_two_process_ddp_on_cpu(data, tmp_path, capsys):
    run = tmp_path / "ddp"
    stdout, _ = train_in_two_processes(data, run, *TINY, "--save-every", "2")
    config = strict_json(run / "config.json")
    assert config["world_size"] == 2
    # the kept epochs are written once, by the first process, and hold the model the processes share
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0000.pt", "epoch-0002.pt"]
    kept, last = load_checkpoint(run / "checkpoints" / "epoch-0002.pt"), load_checkpoint(run / "last.pt")
    assert all(torch.equal(kept["model"][k], last["model"][k]) for k in last["model"])
    assert len(last["initial_weights"]) == 64  # fingerprinted by the first process, which writes the checkpoints
    records = metrics(run)
    train_images = config["data"]["synthetic_train"]
    assert len(records) == 2 and all(r["train"]["images"] == train_images // 2 * 2 for r in records)
    assert records[1]["train"]["loss"] < records[0]["train"]["loss"]
    # the default, auto, compiles on CUDA only; config.json says so
    assert config["compile"] == {"setting": "auto", "why": "--compile auto: compiled on CUDA only, and this run is on "
                                 "cpu", "used": False}
    assert "amp off, eager," in stdout
    # the throughput logged is that of both processes together, as recorded (not counted once per process)
    logged = [float(rate) for rate in re.findall(r"(\d+) img/s", stdout)]
    assert logged == [round(r["train"]["images_per_second"]) for r in records]
    assert all(r["train"]["images_per_second"] == r["train"]["images"] / r["train"]["seconds"] for r in records)
    # continued in one process: allowed, and said, since the global batch halves
    capsys.readouterr()
    assert train_main(["--out", str(run), "--resume", "--epochs", "3", "--workers", "0", "--no-progress"]) == 0
    assert ("note: the run trained in 2 process(es), a global batch of 32; it continues in 1, a global batch of "
            "16: from here its steps, and so its weights, differ from those of an uninterrupted run"
            in capsys.readouterr().out)


def test_compiled_ddp_trains_as_eager_ddp_does(data, tmp_path):
    """Under DDP the compiled objective wraps the DDP module (its gradient hooks and all-reduce), which the
    single-process check against eager never sees: the whole run is compared instead. COMPILES, not TINY, so
    that the compiled graph is used rather than refused by the check."""
    train_in_two_processes(data, tmp_path / "eager", *COMPILES, "--save-every", "2")
    _, said = train_in_two_processes(data, tmp_path / "compiled", *COMPILES, "--compile")
    assert "Profiler record function" not in said  # dynamo's notice about DDP's profiler annotation: noise
    check = strict_json(tmp_path / "compiled" / "config.json")["compile"]
    assert check["used"] and check["mean_difference"] < 1e-4, check
    eager, compiled = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    assert [r["train"]["images"] for r in compiled] == [r["train"]["images"] for r in eager]
    for e, c in zip(eager, compiled):  # a compiled step that skipped DDP's all-reduce: 0.5% off in epoch 1
        assert c["train"]["loss"] == pytest.approx(e["train"]["loss"], rel=1e-3)
        assert c["validation"]["loss"] == pytest.approx(e["validation"]["loss"], rel=1e-3)
    start = load_checkpoint(tmp_path / "eager" / "checkpoints" / "epoch-0000.pt")["model"]
    end_e = load_checkpoint(tmp_path / "eager" / "last.pt")["model"]
    end_c = load_checkpoint(tmp_path / "compiled" / "last.pt")["model"]
    assert end_c.keys() == end_e.keys()  # plain keys: no DDP or torch.compile prefix in the checkpoint
    floats = [k for k in end_e if end_e[k].is_floating_point()]

    def norm(tensors):
        return sum(t.float().square().sum() for t in tensors).sqrt().item()

    # where the two runs end apart, against how far training moved the weights: 0.5% here; 18% when the
    # compiled step skips the all-reduce
    apart = norm(end_c[k] - end_e[k] for k in floats) / norm(end_e[k] - start[k] for k in floats)
    assert apart < 0.05, apart


def test_sync_bn_across_cpu_processes_is_refused_with_the_reason(data, tmp_path):
    """torch's SyncBatchNorm runs on CUDA only: two CPU processes with --sync-bn ended in an internal error."""
    run = tmp_path / "synced"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vae.train", "--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY, "--sync-bn"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "internal error" not in result.stderr
    assert ("--sync-bn: torch synchronises BatchNorm across processes on CUDA GPUs only, and these 2 processes "
            "train on cpu" in result.stderr), result.stderr[-3000:]
    assert not run.exists()


@pytest.mark.parametrize("extra, code, message", [
    (["--encoder", "8@4x4"], 2, "--encoder"),
    (["--recon", "perceptual", "--vgg-weights", "/nonexistent.pth"], 2, "--vgg-weights /nonexistent.pth: no such file"),
    (["--recon", "perceptual"], 1, "vgg19-dcbb9e9d.pth"),
])
def test_configuration_errors_are_clear(data, tmp_path, capsys, monkeypatch, extra, code, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    out = tmp_path / "runs" / "run"
    rc = train_main(["--data", str(data / "synth"), "--out", str(out), "--epochs", "1", *TINY, *extra])
    assert rc == code and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # a run that fails to start leaves no folder behind


def test_a_run_whose_vgg_weights_are_gone_resumes_once_they_are_back(data, tmp_path, capsys):
    weights, moved, run = tmp_path / "vgg.pth", tmp_path / "elsewhere.pth", tmp_path / "run"
    torch.save(trained_like_vgg19().state_dict(), weights)
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY, "--recon",
                       "perceptual", "--vgg-weights", str(weights), "--no-progress"]) == 0
    weights.rename(moved)
    capsys.readouterr()
    assert train_main(["--out", str(run), "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: the run was started with --vgg-weights {weights}: no such file" in err
    assert "put the file back there" in err and err.count("\n") == 1
    moved.rename(weights)
    assert train_main(["--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_runs_are_not_overwritten_and_resume_keeps_its_settings(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 0
    capsys.readouterr()
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 2
    assert "already holds a run; add --resume" in capsys.readouterr().err
    assert train_main(["--out", str(run), "--resume", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "drop --lr 0.1 (the run has 0.0015)" in err and err.count("\n") == 1
    assert train_main(["--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "no run with a checkpoint" in capsys.readouterr().err and not (tmp_path / "nothing").exists()


def test_a_setting_named_like_its_group_is_found_by_its_name():
    from common.settings import value_of
    from vae.config import DataSettings, TrainConfig

    config = TrainConfig(out="run", data=DataSettings(data=["a", "b"], natural=["c"]))
    assert value_of(config, "data") == ["a", "b"] and value_of(config, "natural") == ["c"]  # not the group


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_trainer_on_one_run_folder_is_refused(data, tmp_path, capsys):
    """The same command started twice (a scheduler's retry): the second is refused at once, whether it starts
    a run or continues one, and nothing of it reaches the folder."""
    run = tmp_path / "run"
    with lock_held_elsewhere(run, "vae-train") as holder:
        capsys.readouterr()
        assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 1
        err = capsys.readouterr().err
        assert f"--out {run}: another vae-train (pid {holder.pid}) is training the run there now" in err
        assert sorted(p.name for p in run.iterdir()) == [".vae-train.lock"]  # the holder's alone
    # it exited holding the lock: the file stays, the lock died with the process
    assert (run / ".vae-train.lock").exists()
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert not (run / ".vae-train.lock").exists() and (run / "last.pt").exists()


def test_a_run_taken_over_between_the_checks_and_the_start_is_refused(data, tmp_path, capsys):
    """Two commands that both passed their checks before either took the folder: the later one is refused
    once it holds the folder, before it loads any data or writes anything."""
    from vae.cli import new_run, resumed_run
    from vae.train import train

    run, args = tmp_path / "run", ["--data", str(data / "synth"), "--epochs", "1", *TINY]
    parser_values = vars(make_parser().parse_args([*args, "--out", str(run)]))
    parser_values.pop("resume")
    late_new = new_run(parser_values)  # checked while the folder was empty
    assert train_main([*args, "--out", str(run)]) == 0
    before = _files(run)
    with pytest.raises(UserError, match="another vae-train started a run there meanwhile"):
        train(late_new, None, ["vae-train"])
    resume_values = vars(make_parser().parse_args(["--out", str(run), "--resume", "--epochs", "3", "--workers", "0"]))
    resume_values.pop("resume")
    late_config, late_state = resumed_run(resume_values)  # read epoch 1 as the last
    assert train_main(["--out", str(run), "--resume", "--epochs", "2", "--workers", "0"]) == 0
    continued = _files(run)
    assert continued != before
    with pytest.raises(UserError, match="went on while this command started"):
        train(late_config, late_state, ["vae-train"])
    assert _files(run) == continued and load_checkpoint(run / "last.pt")["epoch"] == 2


def test_the_kept_epochs_are_told_with_their_disk_space_and_a_note_when_it_is_not_free():
    """The paper's model keeps 745 MB per epoch: 15 of them over 140 epochs take 11 GB."""
    assert list(kept_epochs(0, 140, 10, new=True)) == list(range(0, 141, 10))
    assert list(kept_epochs(37, 45, 4, new=False)) == [40, 44]  # a resumed run: from its next epoch on
    assert list(kept_epochs(40, 45, 4, new=False)) == [44] and list(kept_epochs(45, 45, 4, new=False)) == []
    # --epochs has no upper bound: the line is told at once, not after listing 10^12 epochs
    huge = kept_epochs_line(kept_epochs(0, 10**12, 1, new=True), 2**20, 2**30)
    assert huge.startswith("kept epochs (--save-every): 1000000000001 model(s) of 1 MiB")
    assert "(epochs 0, 1, 2, 3, 4, 5, ... 1000000000000)" in huge
    line = kept_epochs_line(kept_epochs(0, 140, 10, new=True), 745 * 2**20, 50 * 2**30)
    assert line == ("kept epochs (--save-every): 15 model(s) of 745 MiB in checkpoints/, 10.9 GiB in all (epochs 0, "
                    "10, 20, 30, 40, 50, ... 140)")
    short = kept_epochs_line(range(5, 11, 5), 745 * 2**20, 2**30)
    assert short.endswith("1.46 GiB in all (epochs 5, 10); note: only 1 GiB are free there, so the run will stop "
                          "with an error when the disk fills (its last.pt whole, to resume from): free space, or keep "
                          "fewer with a larger --save-every on --resume")
    # a resumed run whose untrained start is rebuilt keeps it besides its next epochs
    resumed = kept_epochs_line(kept_epochs(37, 140, 10, new=False), 745 * 2**20, 50 * 2**30, start=True)
    assert "12 model(s)" in resumed and resumed.endswith("(epochs 0, 40, 50, 60, 70, 80, ... 140)")
    assert kept_epochs_line(kept_epochs(45, 45, 4, new=False), 2**20, 2**30, start=True).endswith("(epochs 0)")


def test_sets_of_two_sizes_train_at_an_image_size_below_both_and_resume(data, tmp_path, capsys):
    photos = tmp_path / "natural-48"
    assert synthgen_main(["pack", str(data / "sos"), "--out", str(photos), "--size", "48", "--no-progress",
                          "--workers", "1"]) == 0
    run = tmp_path / "run"
    sets = ["--data", str(data / "synth"), "--natural", str(photos), "--natural-start", "0", "--natural-ramp", "1"]
    assert train_main([*sets, "--out", str(run), "--epochs", "1", *TINY, "--no-progress"]) == 2
    assert "and no --image-size is given; give --image-size 32 or less" in capsys.readouterr().err
    assert not run.exists()
    assert train_main([*sets, "--out", str(run), "--epochs", "1", "--image-size", "24", *TINY, "--no-progress"]) == 0
    config = strict_json(run / "config.json")
    assert [s["image_size"] for s in config["data"]["sets"]] == [32, 48] and config["model"]["image_size"] == 24
    assert config["data"]["feed"]["pool_bytes"] == (64 + 20) * 24 * 24 * 3  # held at the training size
    assert train_main(["--out", str(run), "--resume", "--epochs", "2", "--workers", "0", "--no-progress"]) == 0
    assert [r["epoch"] for r in metrics(run)] == [1, 2]


def test_save_every_keeps_the_course_of_training_and_leaves_the_run_as_it_was(data, tmp_path, capsys):
    common = ["--data", str(data / "synth"), "--epochs", "2", *TINY, "--no-progress"]
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    assert train_main([*common, "--out", str(plain)]) == 0
    assert train_main([*common, "--out", str(kept), "--save-every", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{kept / 'checkpoints'}/epoch-*.pt" in out
    size = (kept / "checkpoints" / "epoch-0000.pt").stat().st_size
    logged = re.search(r"kept epochs \(--save-every\): 2 model\(s\) of ([\d.]+) MiB in checkpoints/, [\d.e-]+ GiB "
                       r"in all \(epochs 0, 2\)\n", out)
    # the weights: the file adds its settings and torch's framing, a tenth of this tiny model, nothing of 186M
    assert logged and 0.8 * size < float(logged[1]) * 2**20 <= size, out
    assert not (plain / "checkpoints").exists()
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["epoch-0000.pt", "epoch-0002.pt"]
    last, plain_last = load_checkpoint(kept / "last.pt"), load_checkpoint(plain / "last.pt")
    assert all(torch.equal(last["model"][k], plain_last["model"][k]) for k in last["model"])  # saving moved nothing
    start, second = (load_checkpoint(kept / "checkpoints" / f"epoch-{k:04d}.pt") for k in (0, 2))
    assert (start["epoch"], second["epoch"]) == (0, 2) and "optimizer" not in second
    assert all(torch.equal(second["model"][k], last["model"][k]) for k in last["model"])
    assert not all(torch.equal(start["model"][k], last["model"][k]) for k in last["model"])  # the untrained model
    # one run, whatever it keeps: --save-every is not part of what the run is
    assert run_identity(start) == run_identity(second) == run_identity(plain_last)
    assert train_main(["--out", str(kept), "--resume", "--epochs", "3", "--save-every", "3", "--workers", "0",
                       "--no-progress"]) == 0
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["epoch-0000.pt", "epoch-0002.pt",
                                                                         "epoch-0003.pt"]
    assert strict_json(kept / "config.json")["train"]["training"]["save_every"] == 3
    # a run that kept no epochs gets its untrained start, rebuilt from its seed, when --save-every comes on resume
    assert train_main(["--out", str(plain), "--resume", "--epochs", "3", "--save-every", "3", "--workers", "0",
                       "--no-progress"]) == 0
    assert "(epochs 0, 3)" in capsys.readouterr().out
    assert sorted(p.name for p in (plain / "checkpoints").iterdir()) == ["epoch-0000.pt", "epoch-0003.pt"]
    rebuilt = load_checkpoint(plain / "checkpoints" / "epoch-0000.pt")
    assert all(torch.equal(rebuilt["model"][k], start["model"][k]) for k in start["model"])
    assert rebuilt["epoch"] == 0 and rebuilt["best_validation_loss"] == float("inf")
    assert run_identity(rebuilt) == run_identity(start)
    # rebuilding it moved nothing of the run: its epoch 3 is the one of the run that kept its start from the first
    plain_third, kept_third = load_checkpoint(plain / "last.pt")["model"], load_checkpoint(kept / "last.pt")["model"]
    assert all(torch.equal(plain_third[k], kept_third[k]) for k in kept_third)


def test_a_finished_run_gets_its_untrained_start_unless_it_cannot_be_rebuilt_exactly(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 0
    trained = (run / "last.pt").read_bytes()
    # --save-every on a finished run: its start is kept, and nothing else is done
    resume = ["--out", str(run), "--resume", "--save-every", "5", "--workers", "0", "--no-progress"]
    assert train_main(resume) == 0
    assert (run / "checkpoints" / "epoch-0000.pt").exists() and (run / "last.pt").read_bytes() == trained
    assert train_main(resume) == 0 and "nothing to do" in capsys.readouterr().out
    shutil.rmtree(run / "checkpoints")
    last = load_checkpoint(run / "last.pt")
    assert len(last["initial_weights"]) == 64
    for recorded, reason in (("0" * 64, "is not the one the run started from"), (None, "an earlier vae-train")):
        if recorded is None:  # a run begun before the weights it starts from were recorded
            last.pop("initial_weights")
        else:  # as though another torch had initialised it
            last["initial_weights"] = recorded
        save_checkpoint(run / "last.pt", last)
        assert train_main(["--out", str(run), "--resume", "--epochs", str(last["epoch"] + 1), "--save-every", "1",
                           "--workers", "0", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert "the untrained start (epoch 0) cannot be kept: " in out and reason in out
        assert "epoch-0000.pt" not in {p.name for p in (run / "checkpoints").iterdir()}
        last = load_checkpoint(run / "last.pt")


def test_a_copied_or_moved_run_resumes_in_place(data, tmp_path, capsys):
    original = tmp_path / "a"
    assert train_main(["--data", str(data / "synth"), "--out", str(original), "--epochs", "1", *TINY]) == 0
    before = _files(original)
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    # the same value as the run's own is no change, so it may be given
    assert train_main(["--out", str(copy), "--resume", "--epochs", "2", "--workers", "0", "--lr", "0.0015"]) == 0
    assert _files(original) == before  # the original run is untouched, byte for byte
    assert load_checkpoint(copy / "last.pt")["epoch"] == 2 and len(metrics(copy)) == 2
    assert json.loads((copy / "config.json").read_text())["train"]["out"] == str(copy)
    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    assert train_main(["--out", str(moved), "--resume", "--epochs", "3", "--workers", "0"]) == 0
    assert not copy.exists()  # nothing is written where the run used to be
    assert load_checkpoint(moved / "last.pt")["epoch"] == 3 and len(metrics(moved)) == 3
    assert _files(original) == before
    finished = _files(moved)
    capsys.readouterr()
    for epochs in ("3", "2"):  # a finished run, resumed: said at once, and its folder left as it is
        assert train_main(["--out", str(moved), "--resume", "--epochs", epochs, "--workers", "0"]) == 0
        assert f"has trained 3 epochs (--epochs {epochs}); nothing to do" in capsys.readouterr().out
    assert _files(moved) == finished
    logged = (moved / "metrics.jsonl").read_text().splitlines(keepends=True)
    (moved / "metrics.jsonl").write_text("".join(logged[:-1]))  # cut off between its last checkpoint and metrics
    assert train_main(["--out", str(moved), "--resume", "--epochs", "3", "--workers", "0"]) == 0
    assert "nothing to do" not in capsys.readouterr().out
    assert (moved / "metrics.jsonl").read_text() == "".join(logged)  # repaired from the checkpoint's history


def test_resume_refuses_a_set_rebuilt_differently_under_the_same_path(tmp_path, capsys):
    args = ["--size", "32", "--no-progress", "--workers", "1", "--out", str(tmp_path / "set")]
    assert synthgen_main(["build", "--n", "40", *args]) == 0
    run = tmp_path / "run"
    assert train_main(["--data", str(tmp_path / "set"), "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert synthgen_main(["build", "--n", "40", "--seed", "3", "--overwrite", *args]) == 0
    capsys.readouterr()
    assert train_main(["--out", str(run), "--resume", "--epochs", "2", "--workers", "0"]) == 1
    assert "changed since the run started" in capsys.readouterr().err
    # The same build made larger has the same identity, yet other images to split: refused as well.
    assert synthgen_main(["build", "--n", "40", "--overwrite", *args]) == 0
    assert synthgen_main(["build", "--n", "56", *args]) == 0
    capsys.readouterr()
    assert train_main(["--out", str(run), "--resume", "--epochs", "2", "--workers", "0"]) == 1
    assert "holds 56 images, the run started with 40" in capsys.readouterr().err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_a_checkpoint_of_an_earlier_version_still_has_its_sets_checked(data, tmp_path, capsys):
    """Checkpoints written before the sets' image counts were saved kept each set's identity by path."""
    run = tmp_path / "run"
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 0
    state = load_checkpoint(run / "last.pt")
    sets = json.loads(state.pop("data_sets"))
    save_checkpoint(run / "last.pt", state | {"data_identities": json.dumps({s["path"]: s["identity"] for s in sets})})
    capsys.readouterr()
    assert train_main(["--out", str(run), "--resume", "--epochs", "2", "--workers", "0", "--data",
                       str(data / "few")]) == 1
    assert f"--data {data / 'few'} is not the run's set {data / 'synth'}" in capsys.readouterr().err
    assert train_main(["--out", str(run), "--resume", "--epochs", "2", "--workers", "0"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    state = load_checkpoint(run / "last.pt")  # older still: nothing recorded of the sets, nothing to compare
    del state["data_sets"]
    save_checkpoint(run / "last.pt", state)
    assert train_main(["--out", str(run), "--resume", "--epochs", "3", "--workers", "0"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_a_resumed_run_keeps_the_split_it_started_with(data, tmp_path, capsys):
    """The split of the run's images (what is held out, which natural images are removed for balance, the order
    they join in) is saved in last.pt: a version that would split otherwise does not move a validation image
    into training. A last.pt from before the split was saved is checked against what config.json records."""
    run = tmp_path / "run"
    common = ["--out", str(run), "--resume", "--workers", "0"]
    assert train_main(["--data", str(data / "synth"), "--natural", str(data / "natural"), "--out", str(run),
                       "--epochs", "1", "--natural-start", "0", "--natural-ramp", "1", *TINY]) == 0
    state = load_checkpoint(run / "last.pt")
    split = {key: state["split"][key].numpy() for key in ("train_synthetic", "train_natural_order", "validation")}
    recorded = strict_json(run / "config.json")["data"]
    assert [split[key].size for key in split] == [recorded["synthetic_train"], recorded["natural_train"],
                                                  recorded["validation"]]
    # What another version's split would look like: one validation image of the natural set trained on instead.
    moved = split["validation"][-1]
    edited = {"train_synthetic": torch.from_numpy(split["train_synthetic"]),
              "train_natural_order": torch.from_numpy(np.append(split["train_natural_order"], moved)),
              "validation": torch.from_numpy(split["validation"][:-1]), "dropped": state["split"]["dropped"]}
    save_checkpoint(run / "last.pt", state | {"split": edited})
    capsys.readouterr()
    assert train_main([*common, "--epochs", "2"]) == 0
    assert "note: this version of vae-train would split the run's images otherwise; the run goes on with the " \
        "split it started with" in capsys.readouterr().out
    after = load_checkpoint(run / "last.pt")["split"]
    assert all(torch.equal(after[key], edited[key]) for key in ("train_synthetic", "train_natural_order", "validation"))
    data_record = strict_json(run / "config.json")["data"]
    assert (data_record["natural_train"], data_record["validation"]) == (recorded["natural_train"] + 1,
                                                                         recorded["validation"] - 1)
    assert metrics(run)[1]["natural_images"] == recorded["natural_train"] + 1

    # A last.pt of an earlier version holds no split: the counts config.json records stand in for it.
    state = load_checkpoint(run / "last.pt")
    del state["split"]
    save_checkpoint(run / "last.pt", state)
    config = json.loads((run / "config.json").read_text())
    config["data"]["natural_dropped_per_class"] = {"1": 2}
    (run / "config.json").write_text(json.dumps(config))
    before = _files(run)
    assert train_main([*common, "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert f"--resume: {run}: this version of vae-train splits the run's images otherwise than the version that " \
        "started it (natural training images: " in err
    assert "natural examples removed per class: {1: 2} recorded in config.json, {} now)" in err
    assert _files(run) == before  # nothing written
    config["data"] = data_record | {"natural_train": recorded["natural_train"], "validation": recorded["validation"]}
    (run / "config.json").write_text(json.dumps(config))  # the record of the split this version computes
    assert train_main([*common, "--epochs", "3"]) == 0
    assert load_checkpoint(run / "last.pt")["split"]["validation"].numel() == recorded["validation"]


def test_a_run_whose_sets_moved_resumes_from_where_they_are_now(data, tmp_path, capsys):
    """--resume with --data and --natural where the run's sets are now: checked to be the same sets, and the
    run goes on exactly as if nothing had moved."""
    sets, moved = tmp_path / "sets", tmp_path / "moved"
    for name in ("synth", "natural"):
        shutil.copytree(data / name, sets / name)
    recipe = ["--natural-start", "1", "--natural-ramp", "1", *TINY, "--no-progress"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for out, epochs in ((whole, "2"), (cut, "1")):
        assert train_main(["--data", str(sets / "synth"), "--natural", str(sets / "natural"), "--out", str(out),
                           "--epochs", epochs, *recipe]) == 0
    shutil.move(sets, moved)
    cut_before = _files(cut)
    capsys.readouterr()
    resume = ["--out", str(cut), "--resume", "--epochs", "2", "--workers", "0"]
    assert train_main(resume) == 2
    err = capsys.readouterr().err
    assert f"the run's set --data {sets / 'synth'} is not there any more" in err and "--data (and --natural)" in err
    assert train_main([*resume, "--data", str(moved / "synth")]) == 2  # the natural set is not named
    assert f"--natural {sets / 'natural'} is not there any more" in capsys.readouterr().err
    # Other sets in their places, or not all of them: refused before any training, the run left as it was.
    assert train_main([*resume, "--data", str(data / "few"), "--natural", str(moved / "natural")]) == 1
    err = capsys.readouterr().err
    assert f"--data {data / 'few'} is not the run's set {sets / 'synth'} (another build)" in err
    assert train_main([*resume, "--data", str(moved / "synth"), "--natural"]) == 1
    assert "was started with 2 set(s)" in capsys.readouterr().err
    assert _files(cut) == cut_before
    assert train_main([*resume, "--data", str(moved / "synth"), "--natural", str(moved / "natural")]) == 0
    assert f"--natural {moved / 'natural'}: the run's set, moved from {sets / 'natural'}" in capsys.readouterr().out
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(cut / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["train"]["loss"] for r in metrics(whole)] == [r["train"]["loss"] for r in metrics(cut)]
    saved = json.loads((cut / "config.json").read_text())
    assert saved["train"]["data"]["data"] == [str(moved / "synth")]
    assert [s["path"] for s in saved["data"]["sets"]] == [str(moved / "synth"), str(moved / "natural")]
    assert train_main(["--out", str(cut), "--resume", "--epochs", "3", "--workers", "0"]) == 0  # found there now
    assert load_checkpoint(cut / "last.pt")["epoch"] == 3


# reduce-overhead (CUDA graphs) given alone: a --compile-mode other than default compiles under --compile auto
@pytest.mark.parametrize("mode, model, flags, setting", [
    ("default", COMPILES, ["--compile"], "yes"), ("reduce-overhead", COMPILES, [], "auto"),
    ("default", TINY, ["--compile", "yes"], "yes")])
def test_compiled_training_matches_eager(data, tmp_path, capsys, mode, model, flags, setting):
    common = ["--data", str(data / "synth"), "--epochs", "1", *model]
    assert train_main([*common, "--out", str(tmp_path / "eager")]) == 0
    assert train_main([*common, "--out", str(tmp_path / "compiled"), *flags, "--compile-mode", mode]) == 0, \
        capsys.readouterr().err
    check = json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"]
    assert check["setting"] == setting and check["mode"] == mode and check["seconds"] > 0
    assert check["why"] == (f"--compile {setting}" if setting == "yes" else
                            f"--compile auto with --compile-mode {mode}")
    assert check["used"] == (check["mean_difference"] <= check["tolerance"])
    if model is COMPILES:
        assert check["used"] and check["mean_difference"] < 1e-4, f"torch {torch.__version__} miscompiles it too"
        # the augmentation is compiled with the objective, and checked against eager execution too
        augmentation = check["augmentation"]
        assert augmentation["used"] and augmentation["max_difference"] <= augmentation["tolerance"]
        assert "the augmentation compiled too" in capsys.readouterr().out
    if not check["used"]:  # torch.compile got the model wrong: the run must say so and train eagerly
        assert "differs from eager execution" in capsys.readouterr().out
    eager, compiled = metrics(tmp_path / "eager")[0], metrics(tmp_path / "compiled")[0]
    assert compiled["train"]["loss"] == pytest.approx(eager["train"]["loss"], rel=1e-3)
    assert compiled["validation"]["loss"] == pytest.approx(eager["validation"]["loss"], rel=1e-3)
    model, _ = load_model_and_metadata(tmp_path / "compiled" / "best.pt")  # plain keys, no torch.compile wrapper
    assert not any(key.startswith("_orig_mod") for key in model.state_dict())


def test_a_machine_where_compiling_fails_trains_eagerly_and_says_why(data, tmp_path, capsys):
    """torch.compile needs a working C++ compiler for CPU code (Triton for CUDA); a minimal container often has
    none. That is the machine, not the run's input nor a bug: the run trains eagerly, as without --compile,
    and the log and config.json say why."""
    import torch._dynamo
    import torch._functorch.config
    import torch._inductor.config

    common = ["--data", str(data / "synth"), "--epochs", "1", *COMPILES]
    assert train_main([*common, "--out", str(tmp_path / "eager")]) == 0
    no_compiler = {"cpp.cxx": (str(tmp_path / "no-such-compiler"),),
                   "fx_graph_cache": False}  # a graph compiled by an earlier test would hide the missing compiler
    torch._dynamo.reset()
    capsys.readouterr()
    with torch._inductor.config.patch(no_compiler), torch._functorch.config.patch(enable_autograd_cache=False):
        assert train_main([*common, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    out = capsys.readouterr().out
    assert "--compile yes: torch.compile failed on this machine" in out and "C++ compiler" in out
    check = json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"]
    assert check["setting"] == "yes" and not check["used"] and "C++ compiler" in check["error"]
    assert "amp off, eager," in out
    torch._dynamo.reset()
    # the same run as without --compile: the failed check left the model's state as it was
    assert [r["train"]["loss"] for r in metrics(tmp_path / "compiled")] == \
        [r["train"]["loss"] for r in metrics(tmp_path / "eager")]
    eager, compiled = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("eager", "compiled"))
    assert all(torch.equal(eager[key], compiled[key]) for key in eager)


def test_compiled_objective_only_sees_the_checked_shape(data, tmp_path):
    """Epochs end with a partial batch, and validation runs without gradients: neither may reach the
    compiled objective, or torch.compile would build graphs the check never saw (a dynamic-shape one,
    which would then serve every full batch too). Any recompilation fails this run."""
    import torch._dynamo

    out = tmp_path / "run"
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert train_main(["--data", str(data / "synth"), "--out", str(out), "--epochs", "2", "--compile",
                           *COMPILES]) == 0
    check = json.loads((out / "config.json").read_text())["compile"]
    assert check["used"] and check["augmentation"]["used"]
    train_images = metrics(out)[0]["train"]["images"]
    assert train_images % 16, "the set must leave a partial batch for this test to mean anything"


def test_streaming_and_memory_feeds_train_identical_weights_and_resume_exactly(data, tmp_path, capsys):
    """The same batches in the same order, whichever feed: a run fed from memory and one streamed from the
    shards by DataLoader workers end with identical weights, and a streamed run cut after 2 epochs and
    resumed equals the uninterrupted one."""
    common = ["--data", str(data / "synth"), "--natural", str(data / "natural"), "--natural-start", "1",
              "--natural-ramp", "2", *TINY]
    memory, stream = tmp_path / "memory", tmp_path / "stream"
    assert train_main([*common, "--out", str(memory), "--epochs", "3", "--data-on-device", "yes"]) == 0
    assert "data in device memory (--data-on-device yes)" in capsys.readouterr().out
    # the default number of loader workers: 4, or fewer where fewer cores are available (more would only
    # contend, and torch would warn of "excessive worker creation")
    default_workers = [a for i, a in enumerate(common) if "--workers" not in (a, common[i - 1])]
    children = set(multiprocessing.active_children())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_main([*default_workers, "--out", str(stream), "--epochs", "2", "--data-on-device", "no"]) == 0
    # the loader's workers ended with the run: left to the garbage collector, they stalled whatever came next 5 s each
    assert set(multiprocessing.active_children()) <= children
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
    runtime = json.loads((stream / "config.json").read_text())["train"]["runtime"]
    assert runtime["workers"] == min(4, len(os.sched_getaffinity(0)))
    assert "data streamed from the shards (--data-on-device no)" in capsys.readouterr().out
    # more loader workers than cores run as many as there are cores (more only contend; each one imports torch)
    assert train_main(["--out", str(stream), "--resume", "--epochs", "3", "--data-on-device", "no",
                       "--workers", "200"]) == 0
    assert f"--workers 200 is more than the {len(os.sched_getaffinity(0))} cores here" in capsys.readouterr().out
    a, b = load_checkpoint(memory / "last.pt"), load_checkpoint(stream / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["train"]["loss"] for r in metrics(memory)] == [r["train"]["loss"] for r in metrics(stream)]
    feed = json.loads((stream / "config.json").read_text())["data"]["feed"]
    assert feed["feed"] == "stream" and feed["pool_bytes"] == (64 + 5 * 4) * 32 * 32 * 3


def test_a_streamed_run_stopped_by_ctrl_c_stops_its_loader_workers_at_once(data, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the second epoch of a run streamed by 2 loader workers: the command ends at once, its workers
    with it. Left to the garbage collector that runs as the command ends, the workers were waited on for 5 s each
    and then killed."""
    import vae.train

    steps, stepped = [], vae.train.Run.augmented  # called once per training step

    def interrupted(self, *args):
        steps.append(time.time())
        if len(steps) == 6:  # 4 steps an epoch
            raise KeyboardInterrupt
        return stepped(self, *args)

    monkeypatch.setattr(vae.train.Run, "augmented", interrupted)
    children = set(multiprocessing.active_children())
    args = ["--data", str(data / "synth"), "--out", str(tmp_path / "run"), "--epochs", "3", *TINY,
            "--data-on-device", "no", "--workers", "2"]
    assert train_main(args) == 130
    assert time.time() - steps[-1] < 5  # 10 s before
    assert set(multiprocessing.active_children()) <= children
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("vae-train: interrupted")


def test_auto_feed_says_why(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--data", str(data / "synth"), "--out", str(run), "--epochs", "1", *TINY]) == 0
    out = capsys.readouterr().out
    assert "data in device memory (--data-on-device auto: the pool's 0.00 GiB is under half the" in out
    feed = json.loads((run / "config.json").read_text())["data"]["feed"]
    assert feed["feed"] == "memory" and feed["free_bytes"] > 2 * feed["pool_bytes"] > 0


def test_image_convolutions_by_the_triton_kernels_train_as_cudnn_does(data, tmp_path, capsys):
    """--image-conv triton: the compiled step runs the image convolutions (here the output layer and VGG's conv1_1;
    encoder.0 has stride 2 and keeps cuDNN) with vae.tritonconv's kernels, and the trainer's check compares it with
    eager execution. On the CPU, as a compiled CUDA step would (PADDED_ON), under Triton's interpreter, which is
    read when Triton loads: in a process of its own."""
    triton = pytest.importorskip("triton", reason="Triton is not installed (torch's CUDA wheels for Linux bring it)")
    common = ["--data", str(data / "synth"), "--epochs", "1", *COMPILES, "--recon", "perceptual", "--vgg-weights",
              "random", "--image-size", "16", "--no-progress"]
    triton_run, eager_run = tmp_path / "triton", tmp_path / "eager"
    code = ("import sys\nfrom vae import imageconv\nimageconv.PADDED_ON = ('cpu',)\nfrom vae.cli import main\n"
            f"sys.exit(main({[*common, '--out', str(triton_run), '--compile', '--image-conv', 'triton']!r}))")
    result = subprocess.run([sys.executable, "-c", code], env={**ENV, "TRITON_INTERPRET": "1"}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the image convolutions (output, vgg.0) run vae.tritonconv's Triton kernels, checked against torch's " \
        "(within " in result.stdout
    check = strict_json(triton_run / "config.json")["compile"]
    kernels = check["image_conv"].pop("check")
    assert check["image_conv"] == {"kernels": "triton", "triton_layers": ["output", "vgg.0"],
                                   "triton": triton.__version__}
    # each layer's passes against torch's convolution before compiling (in fp32 here: to its rounding); the frozen
    # VGG's conv1_1 gets no weight or bias gradient in a step, nor in the check
    assert kernels["used"] and kernels["tolerance"] == 0.02
    assert {layer: sorted(passes) for layer, passes in kernels["differences"].items()} == {
        "output": ["bias gradient", "input gradient", "output", "weight gradient"],
        "vgg.0": ["input gradient", "output"]}
    assert all(0 <= value < 1e-5 for passes in kernels["differences"].values() for value in passes.values()), kernels
    assert check["used"] and check["mean_difference"] < 1e-4 and check["gradient_difference"] < 1e-3, check
    assert strict_json(triton_run / "config.json")["train"]["runtime"]["image_conv"] == "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random VGG's
        assert train_main([*common, "--out", str(eager_run), "--compile", "no", "--image-conv", "triton"]) == 0
        assert "--image-conv triton: for compiled CUDA steps only, and this run trains eagerly (--compile no)" in \
            capsys.readouterr().out
        # compiled on the CPU, which is not among the devices that run the kernels: torch's convolutions, and said
        # (the pixel loss: compiling the VGG for the CPU only takes longer)
        assert train_main(["--data", str(data / "synth"), "--epochs", "1", *COMPILES, "--image-size", "16",
                           "--out", str(tmp_path / "cpu"), "--compile", "--image-conv", "triton"]) == 0
    assert "--image-conv triton: for compiled CUDA steps only; on cpu torch's own convolutions run" in \
        capsys.readouterr().out
    assert strict_json(tmp_path / "cpu" / "config.json")["compile"]["image_conv"] == \
        {"kernels": "triton", "triton_layers": []}
    compiled, eager = metrics(triton_run)[0], metrics(eager_run)[0]
    assert compiled["train"]["loss"] == pytest.approx(eager["train"]["loss"], rel=1e-3)
    assert compiled["validation"]["loss"] == pytest.approx(eager["validation"]["loss"], rel=1e-3)


def test_triton_kernels_that_differ_from_cudnn_on_the_machine_are_not_used(data, tmp_path):
    """Before compiling, --image-conv triton checks each layer's kernels against torch's convolution on the machine
    it runs on. A weight gradient with one tap of 9 missing (made so here, in the kernels' last step) changes the
    step's gradients by less than bf16 rounding can hide from the check of the whole step; the layer check finds
    it, names the layer and the pass, and the run compiles with cuDNN for every image convolution."""
    pytest.importorskip("triton", reason="Triton is not installed (torch's CUDA wheels for Linux bring it)")
    out = tmp_path / "run"
    args = ["--data", str(data / "synth"), "--epochs", "1", *COMPILES, "--recon", "perceptual", "--vgg-weights",
            "random", "--image-size", "16", "--no-progress", "--out", str(out), "--compile", "--image-conv", "triton"]
    code = ("import sys\nfrom vae import imageconv, tritonconv\nimageconv.PADDED_ON = ('cpu',)\n"
            "summed = tritonconv.summed_weight_grad\n"
            "def one_tap_missing(*args):\n    weight, bias = summed(*args)\n    weight[..., 1, 1] = 0\n"
            "    return weight, bias\n"
            "tritonconv.summed_weight_grad = one_tap_missing\nfrom vae.cli import main\n"
            f"sys.exit(main({args!r}))")
    result = subprocess.run([sys.executable, "-c", code], env={**ENV, "TRITON_INTERPRET": "1"}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    check = strict_json(out / "config.json")["compile"]
    kernels = check["image_conv"]["check"]
    assert not kernels["used"] and check["image_conv"]["triton_layers"] == []
    assert kernels["largest"]["what"] == "weight gradient" and kernels["largest"]["value"] > 0.1
    # the output layer (64 -> 3 channels) loses a tap; its other passes are right, and so is VGG's conv1_1, whose
    # weight gradient (frozen) no step computes
    output, vgg = kernels["differences"]["output"], kernels["differences"]["vgg.0"]
    assert output["weight gradient"] > 0.1 and output["output"] < 1e-5 and output["input gradient"] < 1e-5
    assert sorted(vgg) == ["input gradient", "output"] and max(vgg.values()) < 1e-5
    assert kernels["largest"]["layer"] == "output"
    assert ("--image-conv triton: vae.tritonconv's kernels differ from torch's convolution on this machine, in "
            "output's weight gradient by ") in result.stdout
    assert "cuDNN runs the image convolutions" in result.stdout
    assert check["used"], "the step compiles, with cuDNN's convolutions"


def test_a_random_loss_network_is_drawn_from_the_runs_seed():
    """--vgg-weights random (tests) draws the VGG's weights from the run's seed: two runs of a seed, or a run and
    its resumption, train against the same loss network, and the draw leaves torch's global generator alone."""
    from vae.build import build_reconstruction
    from vae.config import LossSettings
    from vae.runtime import Runtime

    def first_filters(seed: int) -> torch.Tensor:
        config = TrainConfig(out="x", data=DataSettings(data=["x"]), loss=LossSettings(vgg_weights="random"),
                             training=TrainingSettings(seed=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random VGG's
            return build_reconstruction(config, Runtime(torch.device("cpu"), 0, 1, False))[0].vgg[0].weight

    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    same, again, other = first_filters(1), first_filters(1), first_filters(2)
    assert torch.equal(torch.rand(3), before)
    assert torch.equal(same, again) and not torch.equal(same, other)
