"""benchmarks/bench_train.py: `vae-train` run as a command, its rows read back from each run's own files."""
from __future__ import annotations

import json

import cv2
import pytest

from conftest import REPO, load_benchmark

TINY = ("--device cpu --encoder 8@4x4-2,16@4x4-2 --decoder 16@3x3-2,8@3x3-2 --latent 8 --recon pixel --beta 1 "
        "--workers 0")


def test_rows_are_the_runs_as_trained(tmp_path, capsys):
    bench = load_benchmark("bench_train")
    out = tmp_path / "bench"
    bench.main(["--n", "300", "--build", "--size 32 --workers 1", "--epochs", "2", "--out", str(out),
                f"--common={TINY}", "--run=--batch-size 16", "--run=--batch-size 32 --lr 0.003"])
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["options"], r["batch_size"]) for r in rows] == [("--batch-size 16", 16),
                                                               ("--batch-size 32 --lr 0.003", 32)]
    for row in rows:
        run = out / "runs" / f"tree0-run{rows.index(row)}-0"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert row["validation_loss"] == [m["validation"]["loss"] for m in metrics]
        assert row["images_per_second"] == [m["train"]["images_per_second"] for m in metrics]
        assert row["after_first"] == metrics[1]["train"]["images_per_second"]
        assert row["latent"] == 8 and 0 <= row["active_dims"][-1] <= 8
        assert row["images_per_epoch"] == metrics[0]["train"]["images"] < 300  # the validation share is held out
        assert row["compiled"] is False and row["device"] == "cpu"
    # both runs trained on the one set the tree built
    sets = {json.loads((out / "runs" / f"tree0-run{j}-0" / "config.json").read_text())["train"]["data"]["data"][0]
            for j in range(2)}
    assert sets == {str((out / "sets" / "set-0").resolve())}
    assert cv2.imread(str(out / "curves.png")) is not None
    printed = capsys.readouterr().out
    assert printed.count(f"| {REPO.name} | --batch-size") == 2  # a tree is named by its folder
    # a compiled run's row says what compiling cost before its first epoch (config.json's compile record)
    assert "| no |" in bench.format_row(rows[0])
    compiled = {**rows[0], "compiled": True, "compile_difference": 1.3e-3, "compile_seconds": 14.2}
    assert "| yes (1.3e-03, 14 s) |" in bench.format_row(compiled)
    # --image-conv triton: where the kernels ran, or that they did not (the layer check refused them)
    triton = {**compiled, "image_conv": {"kernels": "triton", "triton_layers": ["output", "vgg.0"]}}
    assert "| yes (1.3e-03, 14 s; Triton in output, vgg.0) |" in bench.format_row(triton)
    refused = {**compiled, "image_conv": {"kernels": "triton", "triton_layers": []}}
    assert "| yes (1.3e-03, 14 s; Triton kernels not used, cuDNN ran) |" in bench.format_row(refused)


def test_a_failed_run_names_itself_and_its_log(tmp_path):
    bench = load_benchmark("bench_train")
    out = tmp_path / "bench"
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--n", "200", "--build", "--size 32 --workers 1", "--epochs", "1", "--out", str(out),
                    f"--common={TINY}", "--run=--latent 0"])
    message = str(stopped.value)
    assert "vae-train --latent 0" in message and "run0-0.log" in message and "--latent" in message.split(":\n", 1)[1]
    with pytest.raises(SystemExit):  # the benchmark's own arguments are its to set
        bench.main(["--out", str(tmp_path / "other"), "--run=--epochs 3"])
