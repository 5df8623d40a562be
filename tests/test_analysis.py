"""The analyses checked against known answers: planted units, statsmodels, scikit-learn, end to end."""
import csv
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis import figures as draw
from analysis.cli import analyze_main as analyse_main
from analysis.cli import subitize_main as readout_main
from analysis.metrics import CLASSES, average_precision, bootstrap_intervals, classification_report, count_class
from analysis.readout import class_weights, load_readout, stratified_split
from analysis.readout_report import READOUT_FILES
from analysis.regression import AREA, NUMEROSITY, bootstrap_betas, fit_eq3, make_predictors, standardise, unit_labels
from analysis.area_vs_number import CONFOUNDED_R
from analysis.report import CUE_WITH_N
from analysis.controls import population_decoding, rotation_null
from analysis.encode import check_checkpoints, run_labels, run_names
from analysis.units import UNTRAINED_ACTIVE_THRESHOLD, Criteria, find_units
from common import streams
from conftest import lock_held_elsewhere, strict_json
from synthgen import ShardSet
from synthgen.cli import main as synthgen_main
from synthgen.overlap import shared_images
from synthgen.stats import corr_log
from test_pack import make_sos_tree
from vae import load_model
from vae.augment import to_float
from vae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vae.cli import main as train_main

sm = pytest.importorskip("statsmodels.api", reason="statsmodels is a test dependency")
sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a test dependency")


def design(n=4000, seed=0):
    """N uniform in 0..4 and a cumulative area drawn independently of N, as synthgen makes them."""
    rng = np.random.default_rng(seed)
    count = rng.integers(0, 5, n)
    area = np.where(count > 0, np.exp(rng.uniform(np.log(500), np.log(5000), n)), 0.0)
    return rng, count, area


def planted_latents(rng, count, area):
    """Known units: z0, z1 numerosity (opposite signs), z2, z3 area (opposite signs), z4 both, z5-z9
    noise, z10-z11 inactive (almost constant)."""
    n = count.size
    log_n = np.log(np.maximum(count, 1))
    log_a = np.log(np.maximum(area, 1))
    s_n = (log_n - log_n[count > 0].mean()) / log_n[count > 0].std()
    s_a = (log_a - log_a[count > 0].mean()) / log_a[count > 0].std()
    z = rng.normal(size=(n, 12))
    z[:, 0] += 0.8 * s_n
    z[:, 1] -= 0.8 * s_n
    z[:, 2] += 0.8 * s_a
    z[:, 3] -= 0.8 * s_a
    z[:, 4] += 0.8 * s_n + 0.8 * s_a
    z[:, 10:] = 1e-3 * rng.normal(size=(n, 2))
    return z


def test_planted_units_are_found_and_nothing_else():
    rng, count, area = design()
    z = planted_latents(rng, count, area)
    found = find_units(z, make_predictors(count, area), Criteria(), bootstrap=200)
    assert found.units == {"numerosity": [0, 1], "area": [2, 3]}
    assert found.dims.tolist() == list(range(10))  # z10 and z11 are inactive and left out
    assert found.predictors.excluded_zero == int((count == 0).sum())
    fit, ci = found.fit, found.ci
    assert fit.beta_n[0] > 0 > fit.beta_n[1] and fit.beta_a[2] > 0 > fit.beta_a[3]
    assert np.all(ci[0, 0, :2] < np.abs(fit.beta_n[:2]).max())  # the intervals bracket the estimates
    assert np.all((ci[0] <= np.stack([fit.beta_n, fit.beta_a])) & (np.stack([fit.beta_n, fit.beta_a]) <= ci[1]))
    strict = find_units(z, make_predictors(count, area), Criteria(r2_min=0.9))
    assert strict.units == {"numerosity": [], "area": []}


def test_a_dimension_that_codes_neither_property_is_no_unit_whatever_the_thresholds():
    r2, beta_n, beta_a = np.array([0.3, 0.3, 0.016, 0.058]), np.array([0.55, 0.02, 0.09, 0.19]), \
        np.array([0.02, 0.55, 0.09, 0.15])
    assert unit_labels(r2, beta_n, beta_a, 0.05).tolist() == [NUMEROSITY, AREA, "", ""]
    # under 0.1 on both betas: it met both criteria at --r2-min 0, and was called an area unit
    assert unit_labels(r2, beta_n, beta_a, 0.0).tolist() == [NUMEROSITY, AREA, "", ""]
    # at --beta-max 0.2 the last has neither 0.2 of N nor of A: it met both criteria, and was called an area unit
    assert unit_labels(r2, beta_n, beta_a, 0.05, beta_max=0.2).tolist() == [NUMEROSITY, AREA, "", ""]


def test_a_set_that_cannot_separate_number_from_area_is_refused():
    count = np.repeat(np.arange(1, 6), 20)
    with pytest.raises(ValueError, match=r"almost one predictor over the images \(r = \+1.000\)"):
        make_predictors(count, 3.0 * count)  # every object one pixel: the area is the count
    area = 3.0 * count * np.exp(np.random.default_rng(0).normal(0, 0.5, count.size))
    assert 0.3 < make_predictors(count, area).correlation < 0.99  # confounded, but separable
    # one area for every image: log 12 repeated has a std of 4e-16 in floating point, which once passed for variation
    with pytest.raises(ValueError, match="log N or log A does not vary"):
        make_predictors(count, np.full(count.size, 12.0))


@pytest.mark.parametrize("log1p", [False, True])
def test_eq3_equals_statsmodels_ols(log1p):
    rng, count, area = design(3000, seed=1)
    z = planted_latents(rng, count, area)[:, :10]
    predictors = make_predictors(count, area, log1p)
    fit = fit_eq3(z[predictors.used], predictors.x)
    y = standardise(z[predictors.used])
    for i in range(z.shape[1]):
        ols = sm.OLS(y[:, i], sm.add_constant(predictors.x)).fit()
        np.testing.assert_allclose([fit.intercept[i], fit.beta_n[i], fit.beta_a[i]], ols.params, atol=1e-8, rtol=0)
        np.testing.assert_allclose([fit.se_n[i], fit.se_a[i]], ols.bse[1:], atol=1e-8, rtol=0)
        assert abs(fit.r2[i] - ols.rsquared) < 1e-8
    assert predictors.x.shape[0] == (count.size if log1p else int((count > 0).sum()))


def test_bootstrap_resamples_are_exact_refits():
    rng, count, area = design(500, seed=2)
    z = planted_latents(rng, count, area)[:, :6]
    predictors = make_predictors(count, area)
    zu = z[predictors.used]
    boots = bootstrap_betas(zu, predictors.x, 3, seed=7)
    draws = streams.rng(7, streams.BETA_BOOTSTRAP)  # the resamples the analysis draws for --seed 7
    for b in range(3):
        rows = draws.integers(0, zu.shape[0], zu.shape[0])
        refit = fit_eq3(zu[rows], standardise(predictors.x[rows]))
        np.testing.assert_allclose(boots[b], np.stack([refit.beta_n, refit.beta_a]), atol=1e-10)


def test_average_precision_equals_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 400))
        positive = rng.random(n) < rng.uniform(0.05, 0.9)
        positive[0] = True
        scores = np.round(rng.random(n), int(rng.integers(1, 4)))  # many ties
        assert average_precision(scores, positive) == pytest.approx(
            sklearn_metrics.average_precision_score(positive, scores), abs=1e-12)
    labels = count_class(rng.integers(0, 7, 300))  # counts above 4 are the class 4+
    assert labels.max() == 4
    probabilities = rng.dirichlet(np.ones(5), 300)
    report = classification_report(probabilities, labels)
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, probabilities.argmax(1)))
    assert report["confusion"] == sklearn_metrics.confusion_matrix(labels, probabilities.argmax(1)).tolist()
    assert report["chance"] == pytest.approx(np.bincount(labels, minlength=5) / 300)
    recall = sklearn_metrics.recall_score(labels, probabilities.argmax(1), average=None)
    assert report["recall"] == pytest.approx(recall)
    # a test set without classes 2-4: their AP and chance are undefined, and both means are over classes 0 and 1
    # (the chance mean was over all five, 20%, beside an AP mean over two: a readout below chance looked above it)
    two = rng.integers(0, 2, 200)
    report = classification_report(probabilities[:200], two)
    present = [sklearn_metrics.average_precision_score(two == c, probabilities[:200, c]) for c in (0, 1)]
    assert report["ap"][:2] == pytest.approx(present) and np.isnan(report["ap"][2:]).all()
    assert report["mean_ap"] == pytest.approx(np.mean(present)) and np.isnan(report["chance"][2:]).all()
    assert report["mean_chance"] == pytest.approx(0.5)


def test_the_readouts_intervals_are_percentiles_of_scikit_learn_scores_on_resampled_test_sets():
    """Each resample is scored from one sort of the test scores, as multiplicities: it must equal scoring the
    resampled test set anew, ties (a drawn image's copies) included."""
    rng = np.random.default_rng(3)
    labels = rng.choice(5, 240, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    probabilities = rng.dirichlet(np.ones(5), 240).round(2)  # ties between images too
    result = bootstrap_intervals(probabilities, labels, 60, streams.rng(5, streams.READOUT_BOOTSTRAP))
    draws = streams.rng(5, streams.READOUT_BOOTSTRAP).integers(0, 240, (60, 240))  # the resamples, one block
    ap, recall, accuracy = np.full((60, 5), np.nan), np.full((60, 5), np.nan), np.empty(60)
    for b, rows in enumerate(draws):
        y, p = labels[rows], probabilities[rows]
        for c in np.unique(y):
            ap[b, c] = sklearn_metrics.average_precision_score(y == c, p[:, c])
            recall[b, c] = sklearn_metrics.recall_score(y == c, p.argmax(1) == c)
        accuracy[b] = sklearn_metrics.accuracy_score(y, p.argmax(1))
    for c in range(5):
        drawn = np.isfinite(ap[:, c])
        assert result["ap"][c] == pytest.approx(np.percentile(ap[drawn, c], [2.5, 97.5]), abs=1e-12)
        assert result["recall"][c] == pytest.approx(np.percentile(recall[drawn, c], [2.5, 97.5]), abs=1e-12)
        assert result["missing"][c] == int(np.sum(~drawn))
    assert result["mean_ap"] == pytest.approx(np.percentile(np.nanmean(ap, axis=1), [2.5, 97.5]), abs=1e-12)
    assert result["accuracy"] == pytest.approx(np.percentile(accuracy, [2.5, 97.5]), abs=1e-12)
    report = classification_report(probabilities, labels)
    assert result["mean_ap"][0] < report["mean_ap"] < result["mean_ap"][1]


def test_readout_validation_is_stratified_and_classes_weigh_the_same():
    labels = np.repeat(np.arange(5), [500, 300, 100, 60, 40])
    train, validation = stratified_split(labels, 0.1, seed=0)
    assert not set(train) & set(validation) and len(train) + len(validation) == labels.size
    assert np.bincount(labels[validation]).tolist() == [50, 30, 10, 6, 4]
    weights = class_weights(labels[train])
    assert np.allclose(weights * np.bincount(labels[train]), weights[0] * np.bincount(labels[train])[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small VAE trained on CPU on the embedded default, and an analysis set built for the purpose."""
    root = tmp_path_factory.mktemp("analysis")
    fast = ["--size", "32", "--no-progress", "--workers", "1"]
    assert synthgen_main(["build", "--n", "300", "--out", str(root / "train"), *fast]) == 0
    # the paper's analysis set: one object copied N times, no overlap (areas up to 20% fit a 32 px canvas)
    assert synthgen_main(["build", "--n", "200", "--seed", "5", "--same-object", "--source-objects", "15",
                          "--max-occlusion", "0", "--area-range", "0.04-0.2", "--out", str(root / "analysis-set"),
                          *fast]) == 0
    for run, seed in (("run", "0"), ("run-seed1", "1")):  # two independent runs for the summary over runs
        # --save-every: the course of training, for the summary over epochs (it changes nothing of the run)
        assert train_main(["--data", str(root / "train"), "--out", str(root / run), "--epochs", "4", "--seed", seed,
                           "--save-every", "2",
                           "--encoder", "8@4x4-1,16@4x4-2,16@4x4-2,32@4x4-2", "--decoder",
                           "32@3x3-1,16@3x3-2,16@3x3-2,8@3x3-2", "--latent", "8", "--batch-size", "16", "--workers",
                           "0", "--recon", "pixel", "--beta", "1", "--no-progress"]) == 0
    return root


def _valid_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.width > 200 and np.asarray(image.convert("L")).std() > 3


def test_analyze_area_vs_number_end_to_end(trained, tmp_path):
    out = tmp_path / "analysis"
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(trained / "analysis-set"),
                         "--out", str(out), "--bootstrap", "200", "--no-progress"]) == 0
    summary = strict_json(out / "summary.json")
    assert summary["fit_images"] + summary["excluded_n0_images"] == 200 and summary["excluded_n0_images"] == 40
    report = (out / "report.md").read_text()
    assert "left out (log 0 is undefined)" in report
    for section in ("## Against chance: the random-rotation null", "## Population decoding",
                    "## Number-selective units (two-way ANOVA"):
        assert section in report
    null = summary["null"]
    assert null["rotations"] == 200 and all(1 / 201 <= p <= 1 for p in null["p"].values())
    assert {d["target"] for d in summary["decoding"]} == {"log N", "log A"}
    assert all(d["ci95"][0] <= d["r2"] <= d["ci95"][1] for d in summary["decoding"])
    assert summary["selectivity"]["numerosities"] == [1, 2, 3, 4]
    # the paper's counts 1-4 reach neither of Stoianov & Zorzi's references: the report says so, and draws nothing
    assert summary["comparison"]["references"] == [] and summary["comparison"]["weber_fraction"] is None
    assert ("Not run, no reference suits this set: reference 8 needs at least 2 numerosities on each side within a "
            "ratio of 2 (N from 4 to 16), and the set's 1-4 have 1 below and 0 above; reference 16 needs") in report
    assert "comparison" not in summary["figures"]
    rows = (out / "dimensions.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and rows[0].startswith("dim,active,variance,r2,beta_n")
    assert "anova_p_numerosity" in rows[0] and "number_selective" in rows[0]
    for name in ("betas.png", "traversal.png", "reconstructions.png", "controls.png", "tuning.png",
                 *summary["figures"].values()):
        assert _valid_png(out / name if "/" not in str(name) else name), name
    assert any(name.startswith("profile_z") for name in summary["figures"])
    with np.load(out / "latents.npz") as latents:
        assert latents["means"].shape == (200, 8)
    assert summary["image_size"] == {"set": 32, "model": 32} and summary["set_notes"] == []
    labels = ShardSet(trained / "analysis-set").labels  # the fit's r is inspect's corr(log N, log A)
    assert summary["predictor_correlation"] == pytest.approx(corr_log(labels["count"], labels["visible_area"]))
    assert abs(summary["predictor_correlation"]) < CONFOUNDED_R
    assert "(200 images of 32 px)" in report
    kept = tmp_path / "log1p"
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(trained / "analysis-set"),
                         "--out", str(kept), "--log1p", "--bootstrap", "0", "--no-progress"]) == 0
    unbootstrapped = strict_json(kept / "summary.json")  # the intervals it has not got are null, not NaN
    assert unbootstrapped["fit_images"] == 200 and unbootstrapped["decoding"][0]["ci95"] == [None, None]
    r = unbootstrapped["predictor_correlation"]  # the 40 images with N = 0 sit at log(1 + 0) = 0 on both
    assert r > CONFOUNDED_R and unbootstrapped["set_notes"] == [
        f"log N and log A are correlated over the fitted images (r = {r:+.2f}) (with --log1p, the N = 0 images sit "
        f"at 0 on both): Eq. 3 separates number from area less well here, the standard errors of its betas are "
        f"{1 / np.sqrt(1 - r * r):.2f}x those of an uncorrelated set of the same size, and a dimension coding either "
        "shows part of the other; the paper's analysis set draws the area independently of N (synthgen build, r "
        "near 0)"]
    for name in ("report.md", "dimensions.csv"):
        assert not re.search(r"\bnan\b", (kept / name).read_text(), re.IGNORECASE), name
    assert ",,," in (kept / "dimensions.csv").read_text()  # empty cells, which csv readers take as missing


def test_several_runs_get_a_folder_each_and_a_summary_over_them(trained, tmp_path):
    out = tmp_path / "runs"
    checkpoints = [str(trained / "run" / "best.pt"), str(trained / "run-seed1" / "best.pt")]
    assert analyse_main(["--checkpoint", *checkpoints, "--data", str(trained / "analysis-set"), "--out", str(out),
                         "--bootstrap", "50", "--null-rotations", "50", "--no-progress"]) == 0
    summary = strict_json(out / "summary.json")
    assert [row["label"] for row in summary["runs"]] == ["run-best", "run-seed1-best"]
    for row in summary["runs"]:
        run = strict_json(out / row["label"] / "summary.json")
        assert row["best_r2"] == run["best_dimension"]["r2"] and row["p_best_r2"] == run["null"]["p"]["best_r2"]
    values = [row["best_r2"] for row in summary["runs"]]
    assert summary["over_runs"]["best_r2"]["mean"] == pytest.approx(np.mean(values))
    assert summary["over_runs"]["best_r2"]["sd"] == pytest.approx(np.std(values, ddof=1))
    assert "mean ± sd" in (out / "report.md").read_text() and len((out / "runs.csv").read_text().splitlines()) == 3
    assert _valid_png(out / "runs.png")


def test_a_collapsed_run_among_several_is_reported_and_the_others_analysed(trained, tmp_path, capsys):
    """A sweep over the KL weight can leave a run with a collapsed code; it stopped the whole analysis."""
    state = torch.load(trained / "run-seed1" / "best.pt", weights_only=True)
    state["model"]["fc_mu.weight"].zero_()  # every posterior mean the same: a code that varies nowhere
    state["model"]["fc_mu.bias"].zero_()
    collapsed = tmp_path / "collapsed" / "best.pt"
    collapsed.parent.mkdir()
    save_checkpoint(collapsed, state)
    out = tmp_path / "runs"
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), str(collapsed), "--data",
                         str(trained / "analysis-set"), "--out", str(out), "--bootstrap", "40", "--null-rotations",
                         "20", "--no-progress"]) == 0
    summary = strict_json(out / "summary.json")
    rows = {row["label"]: row for row in summary["runs"]}
    assert rows["collapsed-best"]["collapsed"] and rows["collapsed-best"]["active_dims"] == 0
    assert rows["collapsed-best"]["best_r2"] is None and rows["collapsed-best"]["numerosity_units"] == 0
    assert summary["over_runs"]["best_r2"] == {"mean": rows["run-best"]["best_r2"], "sd": None, "runs": 1}
    assert summary["over_runs"]["numerosity_units"]["runs"] == 2  # counted as a run without units
    report = (out / "report.md").read_text()
    assert "No active latent dimension in collapsed-best" in report and "(1 run)" in report
    assert "Nothing to analyse" in (out / "collapsed-best" / "report.md").read_text()
    assert strict_json(out / "collapsed-best" / "summary.json")["active_dims"] == 0
    assert _valid_png(out / "runs.png")
    # alone, it is refused, and the message names it
    assert analyse_main(["--checkpoint", str(collapsed), "--data", str(trained / "analysis-set"), "--out",
                         str(tmp_path / "alone"), "--no-progress"]) == 1
    assert f"--checkpoint {collapsed}: no active latent dimension" in capsys.readouterr().err


def test_one_run_at_one_epoch_twice_is_refused(trained, tmp_path, capsys):
    """A run's best.pt and last.pt of one epoch, its kept model of that epoch, or a copy of the run would count
    one model twice in the summary; the same run at other epochs is its course of training (below)."""
    shutil.copytree(trained / "run", tmp_path / "copy")
    out = ["--out", str(tmp_path / "out"), "--no-progress"]
    last = trained / "run" / "last.pt"
    for main, inputs in ((analyse_main, ["--data", str(trained / "analysis-set")]),
                         (readout_main, ["--train", str(trained / "train"), "--test", str(trained / "analysis-set")])):
        for other in (trained / "run" / "checkpoints" / "epoch-0004.pt", tmp_path / "copy" / "last.pt"):
            assert main(["--checkpoint", str(last), str(other), *inputs, *out]) == 2
            err = capsys.readouterr().err
            assert f"--checkpoint {last} and {other} are one run at one epoch (4: " in err, err
            assert err.count("\n") == 1
        # the same file twice, however it is spelled
        assert main(["--checkpoint", str(last), str(trained / "run" / ".." / "run" / "last.pt"), *inputs, *out]) == 2
        assert f"--checkpoint {trained / 'run' / '..' / 'run' / 'last.pt'} is given twice (as {last} and " in \
            capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# The checkpoints of course_checkpoints: (run, epoch, the folder of its analysis)
COURSE = [("run-seed1", 0, "run-seed1-epoch-0000"), ("run-seed1", 2, "run-seed1-epoch-0002"),
          ("run-seed1", 4, "run-seed1-epoch-0004"), ("run", 4, "run-epoch-0004")]


def course_checkpoints(trained) -> list[str]:
    """The epochs vae-train --save-every kept of one run, and one epoch of the other: two runs' courses."""
    return [str(trained / run / "checkpoints" / f"epoch-{epoch:04d}.pt") for run, epoch, _ in COURSE]


def test_a_runs_kept_epochs_are_analysed_as_its_course_of_training(trained, tmp_path, capsys):
    out = tmp_path / "course"
    assert analyse_main(["--checkpoint", *course_checkpoints(trained), "--data", str(trained / "analysis-set"),
                         "--out", str(out), "--bootstrap", "40", "--null-rotations", "20", "--no-progress"]) == 0
    assert "analyze-area-vs-number: 4 checkpoints of 2 run(s), epochs 0 to 4;" in capsys.readouterr().out
    summary = strict_json(out / "summary.json")
    rows = summary["runs"]
    assert [(row["run"], row["model_epoch"], row["label"]) for row in rows] == COURSE
    for row in rows:  # each checkpoint analysed in its own folder, as one run alone would be
        alone = strict_json(out / row["label"] / "summary.json")
        assert (alone["model_epoch"], alone["active_dims"]) == (row["model_epoch"], row["active_dims"])
    assert "over_runs" not in summary  # epochs of one run are not independent runs: no mean ± sd over them all
    course = summary["over_training"]
    assert course["runs"] == {"run-seed1": [0, 2, 4], "run": [4]}
    at_4 = [row["decoding_r2_log_n"] for row in rows if row["model_epoch"] == 4]
    assert course["by_epoch"]["4"]["decoding_r2_log_n"] == {"mean": pytest.approx(np.mean(at_4)),
                                                             "sd": pytest.approx(np.std(at_4, ddof=1)), "runs": 2}
    assert course["by_epoch"]["2"]["numerosity_units"]["runs"] == 1
    # the untrained model: its posterior means vary by about 1e-5, under --active-threshold, yet every dimension
    # carries the image; all are analysed (every statistic is scale-free), and its report says why
    untrained = strict_json(out / "run-seed1-epoch-0000" / "summary.json")
    assert (untrained["active_dims"], untrained["active_threshold"]) == (8, UNTRAINED_ACTIVE_THRESHOLD)
    assert np.load(out / "run-seed1-epoch-0000" / "latents.npz")["means"].var(axis=0).max() < 0.01
    assert "the untrained model, whose code no KL term has shaped yet" in \
        (out / "run-seed1-epoch-0000" / "report.md").read_text()
    assert strict_json(out / "run-seed1-epoch-0002" / "summary.json")["active_threshold"] == 0.01
    assert rows[0]["decoding_r2_log_n"] != rows[2]["decoding_r2_log_n"]  # the untrained code is another code
    report = (out / "report.md").read_text()
    assert "over the course of training" in report and "| run-seed1 | 0 | " in report
    assert re.search(r"^\| 4 \| \d+ ± ", report, re.MULTILINE) and not re.search(r"^\| [02] \| ", report, re.MULTILINE)
    assert len((out / "runs.csv").read_text().splitlines()) == 5 and _valid_png(out / "runs.png")


def test_checkpoints_are_named_by_the_run_they_are_of(trained, tmp_path):
    """Two runs whose folders have one name: each keeps its own name in every folder of its checkpoints."""
    paths = []
    for run, epoch, folder in (("run", 2, "a"), ("run-seed1", 2, "b"), ("run-seed1", 4, "b")):
        place = tmp_path / folder / "run"
        place.mkdir(parents=True, exist_ok=True)
        paths.append(str(shutil.copy(trained / run / "checkpoints" / f"epoch-{epoch:04d}.pt", place)))
    runs = run_names(paths, check_checkpoints(paths))
    assert runs == ["run", "run-1", "run-1"]
    assert run_labels(paths, runs) == ["run-epoch-0002", "run-1-epoch-0002", "run-1-epoch-0004"]


def test_a_readout_over_the_course_of_training(trained, tmp_path, capsys):
    out = tmp_path / "readouts"
    given = [course_checkpoints(trained)[k] for k in (3, 2, 0, 1)]  # in no order: the table goes by run and epoch
    assert readout_main(["--checkpoint", *given, "--train", str(trained / "train"), "--test",
                         str(trained / "analysis-set"), "--epochs", "20", "--bootstrap", "0", "--out", str(out),
                         "--no-progress"]) == 0
    assert "vae-subitize: 4 checkpoints of 2 run(s); test mean AP " in capsys.readouterr().out
    summary = strict_json(out / "readout.json")
    rows = summary["runs"]
    assert [(row["run"], row["model_epoch"], row["label"]) for row in rows] == [COURSE[k] for k in (3, 2, 0, 1)]
    for row in rows:
        assert strict_json(out / row["label"] / "readout.json")["test"]["mean_ap"] == row["mean_ap"]
    assert "over_runs" not in summary and summary["over_training"]["runs"] == {"run-seed1": [0, 2, 4], "run": [4]}
    at_4 = [row["accuracy"] for row in rows if row["model_epoch"] == 4]
    assert summary["over_training"]["by_epoch"]["4"]["accuracy"] == {
        "mean": pytest.approx(np.mean(at_4)), "sd": pytest.approx(np.std(at_4, ddof=1)), "runs": 2}
    table = (out / "table.md").read_text()
    assert table.startswith("# Subitizing readout over the course of training: 4 checkpoints of 2 run(s)")
    assert "| **mean ± sd over the runs at epoch 4** | AP |" in table and "epoch 2**" not in table
    shown = [table.index(f"| {label} | AP |") for label in ("run-epoch-0004", "run-seed1-epoch-0000",
                                                              "run-seed1-epoch-0002", "run-seed1-epoch-0004")]
    assert shown == sorted(shown) and f"run-seed1-epoch-0000 {rows[2]['accuracy']:.1%}" in table
    assert _valid_png(out / "readouts.png")


def test_a_file_or_link_where_a_runs_folder_goes_is_refused_before_any_run(trained, tmp_path, capsys):
    """With several checkpoints each run writes into a folder of its own: something else in its place failed
    only when that run's turn came ("File exists"), after the runs before it."""
    checkpoints = [str(trained / "run" / "best.pt"), str(trained / "run-seed1" / "best.pt")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "run-seed1-best").write_text("a note of the user's\n")
    (tmp_path / "elsewhere").mkdir()
    readout_sets = ["--train", str(trained / "train"), "--test", str(trained / "analysis-set")]
    for prog, main, inputs in (("analyze-area-vs-number", analyse_main, ["--data", str(trained / "analysis-set")]),
                               ("vae-subitize", readout_main, readout_sets)):
        for what in ("not a folder", "a link"):
            if what == "a link":
                (out / "run-best").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
            assert main(["--checkpoint", *checkpoints, *inputs, "--out", str(out), "--no-progress"]) == 2
            name, checkpoint = ("run-seed1-best", checkpoints[1]) if what == "not a folder" else ("run-best",
                                                                                                  checkpoints[0])
            assert capsys.readouterr().err == (
                f"{prog}: error: --out {out}: {out / name} is {what}, and the results "
                f"of --checkpoint {checkpoint} go there (a folder per checkpoint); move it, or choose another "
                "--out\n")
            if what == "a link":
                (out / "run-best").unlink()
        assert [p.name for p in out.iterdir()] == ["run-seed1-best"]
        assert not any((tmp_path / "elsewhere").iterdir())
    assert (out / "run-seed1-best").read_text() == "a note of the user's\n"


def test_subitize_end_to_end(trained, tmp_path):
    out = tmp_path / "readout"
    assert readout_main(["--checkpoint", str(trained / "run" / "best.pt"), "--train", str(trained / "train"),
                         "--test", str(trained / "analysis-set"), "--out", str(out), "--epochs", "40",
                         "--no-progress"]) == 0
    result = strict_json(out / "readout.json")
    assert result["images"] == {"train": 270, "validation": 30, "test": 200}
    assert result["notes"] == []  # the VAE trained on --train's images, never on --test's
    assert len(result["test"]["ap"]) == 5 and 0 <= result["test"]["mean_ap"] <= 1
    assert np.sum(result["test"]["confusion"]) == 200
    assert 1 <= result["training"]["best_epoch"] <= result["training"]["epochs_run"] <= 40
    table = (out / "table.md").read_text()
    assert "| CNN_FT [Zhang et al.] | AP | 93.6 | 93.8 | 75.2 | 58.6 | 71.6 | 78.6 |" in table
    assert "| VAE + softmax [Wever & Runia] | reported as AP; most likely per-class recall (accuracy) |" in table
    assert "| **VAE + softmax (this checkpoint)** | per-class recall |" in table
    assert "VAE + softmax (this checkpoint)" in table and "scikit-learn's average_precision_score" in table
    assert _valid_png(out / "confusion.png")
    ci = result["test"]["ci95"]  # over 1,000 resamples of the test images, by default
    assert ci["resamples"] == 1000 and ci["mean_ap"][0] <= result["test"]["mean_ap"] <= ci["mean_ap"][1]
    assert ci["accuracy"][0] <= result["test"]["accuracy"] <= ci["accuracy"][1]
    assert "| | AP, 95% interval |" in table and "percentile intervals over 1000 bootstrap resamples" in table
    # readout.pt, loaded as the README shows, gives the scores of readout.json on images encoded the README's way
    counter = load_readout(out / "readout.pt")
    assert counter.checkpoint == str((trained / "run" / "best.pt").resolve()) and not counter.training
    model, shards = load_model(counter.checkpoint), ShardSet(trained / "analysis-set")
    with torch.no_grad():
        probabilities = counter(model.encode(to_float(torch.from_numpy(shards.images(np.arange(len(shards)))),
                                                      model.config.image_size))[0]).numpy()
    again = classification_report(probabilities, count_class(shards.labels["count"]))
    assert again["confusion"] == result["test"]["confusion"]
    assert again["ap"] == pytest.approx(result["test"]["ap"], abs=1e-5)
    with pytest.raises(ValueError, match=r"takes posterior means of shape \(n, 8\), as its VAE \(.*best.pt\) gives "
                                         r"them; got \(3, 7\)"):
        counter(torch.zeros(3, 7))
    for wrong, words in ((trained / "run" / "best.pt", "not a readout of vae-subitize"),
                         (out / "nothing.pt", "no such file (give the readout.pt that vae-subitize wrote)"),
                         (out / "table.md", "not a readable readout.pt")):
        with pytest.raises(CheckpointError, match=re.escape(f"{wrong}: {words}")):
            load_readout(wrong)


def test_several_checkpoints_get_a_readout_each_and_a_summary_over_them(trained, tmp_path):
    """The spread between VAEs, which no interval over the test images shows: each checkpoint's readout as it
    would be alone, and every score's mean and sd over them."""
    out = tmp_path / "readouts"
    common = ["--train", str(trained / "train"), "--test", str(trained / "analysis-set"), "--epochs", "20",
              "--bootstrap", "0", "--no-progress"]
    checkpoints = [str(trained / "run" / "best.pt"), str(trained / "run-seed1" / "best.pt")]
    assert readout_main(["--checkpoint", *checkpoints, "--out", str(out), *common]) == 0
    assert readout_main(["--checkpoint", checkpoints[1], "--out", str(tmp_path / "alone"), *common]) == 0
    alone = strict_json(tmp_path / "alone" / "readout.json")
    assert strict_json(out / "run-seed1-best" / "readout.json")["test"] == alone["test"]
    summary = strict_json(out / "readout.json")
    assert [row["label"] for row in summary["runs"]] == ["run-best", "run-seed1-best"]
    tests = [strict_json(out / row["label"] / "readout.json")["test"] for row in summary["runs"]]
    assert tests[0] != tests[1]  # two VAEs, two codes
    scores = {**{f"ap_{c}": [t["ap"][k] for t in tests] for k, c in enumerate(CLASSES)},
              **{f"recall_{c}": [t["recall"][k] for t in tests] for k, c in enumerate(CLASSES)},
              **{key: [t[key] for t in tests] for key in ("mean_ap", "mean_recall", "accuracy")}}
    assert set(summary["over_runs"]) == set(scores)
    for key, values in scores.items():
        assert summary["over_runs"][key] == {"mean": pytest.approx(np.mean(values)),
                                             "sd": pytest.approx(np.std(values, ddof=1)), "runs": 2}, key
    with open(out / "readouts.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["mean_ap"]) for row in rows] == pytest.approx(scores["mean_ap"])
    table = (out / "table.md").read_text()
    mean_ap = f"{100 * np.mean(scores['mean_ap']):.1f} ± {100 * np.std(scores['mean_ap'], ddof=1):.1f}"
    assert re.search(rf"\| \*\*VAE \+ softmax, mean ± sd over 2 runs\*\* \| AP \|.* {mean_ap} \|\n", table), table
    assert "| run-seed1-best | per-class recall |" in table and "| CNN_FT [Zhang et al.] | AP |" in table
    assert _valid_png(out / "readouts.png")
    # one checkpoint into that folder replaces all of the earlier readout, its runs' folders included
    assert readout_main(["--checkpoint", checkpoints[1], "--out", str(out), *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(READOUT_FILES)
    again = strict_json(out / "readout.json")
    assert again["test"] == alone["test"] and again["settings"]["out"] == str(out)


def test_the_readout_shows_its_progress_unless_told_not_to(trained, tmp_path, capsys):
    """Encoding, the readout's epochs (each with its validation loss) and the bootstrap are the long parts."""
    common = ["--checkpoint", str(trained / "run" / "best.pt"), "--train", str(trained / "train"), "--test",
              str(trained / "analysis-set"), "--epochs", "3", "--bootstrap", "40"]
    assert readout_main([*common, "--out", str(tmp_path / "shown")]) == 0
    err = capsys.readouterr().err
    assert "encoding train: 100%" in err and "encoding analysis-set: 100%" in err
    assert re.search(r"training the readout: 100%.*\| 3/3 .*validation loss \d", err), err
    assert readout_main([*common, "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_sets_that_share_images_are_told_from_sets_that_do_not(tmp_path):
    """What vae-subitize refuses to train and test on together (tests/test_bad_inputs.py has the messages)."""
    fast = ["--size", "32", "--no-progress", "--workers", "1"]
    for name, extra in (("first-20", ["--n", "20"]), ("first-30", ["--n", "30"]),
                        ("seed-1", ["--n", "20", "--seed", "1"])):
        assert synthgen_main(["build", *extra, "--out", str(tmp_path / name), *fast]) == 0
    labels = make_sos_tree(tmp_path / "photos", per_label=2)
    split_file = tmp_path / "split.csv"
    split_file.write_text("path,label,split\n" + "".join(f"{path},{label},{'test' if k % 3 == 0 else 'train'}\n"
                                                       for k, (path, label) in enumerate(sorted(labels.items()))))
    for name, extra in (("train", ["--split", "train"]), ("test", ["--split", "test"]),
                        ("test-cropped", ["--split", "test", "--fit", "crop"])):
        assert synthgen_main(["pack", str(tmp_path / "photos"), "--split-file", str(split_file), *extra, "--out",
                              str(tmp_path / name), *fast]) == 0
    assert synthgen_main(["pack", str(tmp_path / "photos"), "--out", str(tmp_path / "all"), *fast]) == 0
    sets = {p.name: ShardSet(p) for p in tmp_path.iterdir() if (p / "manifest.json").exists()}
    assert shared_images(sets["first-20"], sets["first-30"]) == "the same build: its first 20 images are the same"
    assert shared_images(sets["first-20"], sets["seed-1"]) is None
    assert shared_images(sets["train"], sets["test"]) is None  # one folder's disjoint splits
    for a, b, both in (("test", "test-cropped", 4), ("all", "train", 6), ("test", "all", 4)):
        expected = f"packed from the same photos: {both} of {tmp_path / 'photos'} are in both"
        assert shared_images(sets[a], sets[b]) == expected, (a, b)
    assert shared_images(sets["first-20"], sets["all"]) is None


def test_a_test_set_the_vae_trained_on_is_noted(trained, tmp_path, capsys):
    out = tmp_path / "readout"
    assert readout_main(["--checkpoint", str(trained / "run" / "best.pt"), "--train", str(trained / "analysis-set"),
                         "--test", str(trained / "train"), "--out", str(out), "--epochs", "3", "--no-progress"]) == 0
    note = (f"the VAE was trained on images of --test {trained / 'train'} (--data {trained / 'train'}: the same "
            "build: its first 300 images are the same)")
    assert f"vae-subitize: note: {note}" in capsys.readouterr().out
    assert strict_json(out / "readout.json")["notes"] == [note + ": the test scores images its encoder "
                                                                       "learnt from, without their labels"]
    assert f"**Note:** {note}" in (out / "table.md").read_text()
    # two VAEs both trained on it: the summary over them says so too
    assert readout_main(["--checkpoint", str(trained / "run" / "best.pt"), str(trained / "run-seed1" / "best.pt"),
                         "--train", str(trained / "analysis-set"), "--test", str(trained / "train"), "--out", str(out),
                         "--epochs", "2", "--bootstrap", "0", "--no-progress"]) == 0
    noted = note + ": the test scores images its encoder learnt from, without their labels"
    for result in (out / "readout.json", out / "run-seed1-best" / "readout.json"):
        assert strict_json(result)["notes"] == [noted]
    table = (out / "table.md").read_text()
    assert f"**Note:** {note}" in table and "Some runs have notes of their own" not in table


def test_a_test_set_given_twice_is_noted(trained, tmp_path, capsys):
    # scored twice and counted twice ("on 400 images"), without a word
    out = tmp_path / "readout"
    test = str(trained / "analysis-set")
    assert readout_main(["--checkpoint", str(trained / "run" / "best.pt"), "--train", str(trained / "train"),
                         "--test", test, test, "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    note = (f"--test {test} and --test {test} hold the same images (the same build: its first 200 images are the "
            "same): those images are scored twice, and weigh twice in the AP and the accuracy")
    assert f"vae-subitize: note: {note}" in capsys.readouterr().out
    assert note in strict_json(out / "readout.json")["notes"]


def test_a_set_of_another_size_than_the_runs_is_noted(trained, tmp_path, capsys):
    """Both analyses reduce a set's images to the model's size; a synthetic set made at another size than the
    run's own shows the encoder its objects at another scale, which the log, report and results say."""
    assert json.loads(load_checkpoint(trained / "run" / "best.pt")["data_sets"])[0]["image_size"] == 32
    assert synthgen_main(["build", "--n", "200", "--seed", "5", "--same-object", "--source-objects", "15",
                          "--max-occlusion", "0", "--area-range", "0.04-0.2", "--out", str(tmp_path / "set-40"),
                          "--size", "40", "--no-progress", "--workers", "1"]) == 0
    note = (f"the images of --data {tmp_path / 'set-40'} are 40 px and the run's own sets were 32 px (the model works "
            "at 32 px): their objects were drawn at another scale before the reduction, so the encoder sees them "
            "otherwise than in the images it learnt from; build the set at --size 32 to match them")
    out = tmp_path / "analysis"
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(tmp_path / "set-40"),
                         "--out", str(out), "--bootstrap", "0", "--null-rotations", "0", "--no-progress"]) == 0
    assert f"analyze-area-vs-number: run-best: note: {note}" in capsys.readouterr().out
    summary = strict_json(out / "summary.json")
    assert summary["image_size"] == {"set": 40, "model": 32} and summary["set_notes"] == [note]
    report = (out / "report.md").read_text()
    assert "(200 images of 40 px, reduced to the model's 32 px by area averaging)" in report
    assert f"## About the set\n\n* {note}." in report
    assert readout_main(["--checkpoint", str(trained / "run" / "best.pt"), "--train", str(trained / "analysis-set"),
                         "--test", str(tmp_path / "set-40"), "--out", str(tmp_path / "readout"), "--epochs", "2",
                         "--no-progress"]) == 0
    assert strict_json(tmp_path / "readout" / "readout.json")["notes"] == [
        note.replace("--data", "--test")]


def test_an_analysis_set_the_vae_trained_on_is_noted(trained, tmp_path):
    out = tmp_path / "analysis"
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(trained / "train"), "--out",
                         str(out), "--bootstrap", "0", "--null-rotations", "0", "--no-progress"]) == 0
    seen = (f"the VAE was trained on images of --data {trained / 'train'} (--data {trained / 'train'}: the same build: "
            "its first 300 images are the same): the analysis reads the code of images the encoder learnt from; the "
            "paper's analysis set was made apart from its training set")
    assert seen in strict_json(out / "summary.json")["set_notes"]
    assert seen in (out / "report.md").read_text()


def test_dot_arrays_whose_area_grows_with_number_are_noted(trained, tmp_path, capsys):
    """With --control item-size the cumulative area grows with N: Eq. 3 then separates them less well."""
    for control in ("item-size", "total-area"):
        assert synthgen_main(["dots", "--n", "320", "--control", control, "--out", str(tmp_path / control),
                              "--no-progress", "--workers", "1"]) == 0
        assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(tmp_path / control),
                             "--out", str(tmp_path / f"analysis-{control}"), "--bootstrap", "0", "--null-rotations",
                             "0", "--no-progress"]) == 0
    confounded, crossed = (strict_json(tmp_path / f"analysis-{c}" / "summary.json") for c in ("item-size",
                                                                                               "total-area"))
    assert confounded["predictor_correlation"] > 0.6 and abs(crossed["predictor_correlation"]) < 0.1
    assert crossed["set_notes"] == [] and len(confounded["set_notes"]) == 1
    assert confounded["set_notes"][0].startswith("log N and log A are correlated over the fitted images (r = +0.")
    assert "note: log N and log A are correlated" in capsys.readouterr().out
    report = (tmp_path / "analysis-item-size" / "report.md").read_text()
    assert "the set has no image with N = 0." in report and "## About the set" in report
    # the ANOVA's area factor: the design's 8 levels for the dot stimuli, quantile bins otherwise
    assert "cumulative area (8 levels of the design)" in (tmp_path / "analysis-total-area" / "report.md").read_text()
    # numerosities 1-32: the comparison with Stoianov & Zorzi's references 8 and 16, N from half to twice each
    comparison = crossed["comparison"]
    assert [(c["reference"], c["numerosities"][0], c["numerosities"][-1]) for c in comparison["references"]] == [
        (8, 4, 16), (16, 8, 32)]
    assert comparison["pooled"]["images"] == sum(c["images"] for c in comparison["references"])
    assert [b["cue"] for b in comparison["cue_biases"]] == ["cumulative area", "field area"]  # dots: their hull too
    assert all(0 < b["p"] <= 1 and b["se"] > 0 for b in comparison["cue_biases"])
    assert all(0 <= share <= 1 for c in comparison["references"] for share in c["share_more"])
    assert _valid_png(tmp_path / "analysis-total-area" / "comparison.png")
    report = (tmp_path / "analysis-total-area" / "report.md").read_text()
    assert "## Numerosity comparison and its Weber fraction" in report and "| cue biases b ± SE (p) |" in report
    # the hull of arrays in a fixed field goes with N (a few dots span a small hull); the area is drawn apart from N.
    # The report says what that means for w, and which set would tell them apart
    by_cue = {b["cue"]: b for b in comparison["cue_biases"]}
    assert by_cue["field area"]["corr_with_log_n"] >= CUE_WITH_N > abs(by_cue["cumulative area"]["corr_with_log_n"])
    assert 0 < by_cue["field area"]["spread_at_fixed_n"] < by_cue["cumulative area"]["spread_at_fixed_n"]
    assert "Note: the field area goes with N in this set" in report and "--field-range 0.4-0.9" in report
    assert "Note: the cumulative area" not in report
    varied = tmp_path / "varied-field"
    assert synthgen_main(["dots", "--n", "320", "--field-range", "0.4-0.9", "--area-range", "0.03-0.12", "--out",
                          str(varied), "--no-progress", "--workers", "1"]) == 0
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(varied), "--out",
                         str(tmp_path / "analysis-varied"), "--bootstrap", "0", "--null-rotations", "0",
                         "--no-progress"]) == 0
    cues = strict_json(tmp_path / "analysis-varied" / "summary.json")["comparison"]["cue_biases"]
    hull = {b["cue"]: b for b in cues}["field area"]
    assert hull["corr_with_log_n"] < CUE_WITH_N
    assert hull["spread_at_fixed_n"] > by_cue["field area"]["spread_at_fixed_n"]
    assert "Note: the field area" not in (tmp_path / "analysis-varied" / "report.md").read_text()
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(tmp_path / "total-area"),
                         "--out", str(tmp_path / "none"), "--bootstrap", "0", "--null-rotations", "0",
                         "--comparison-references", "none", "--no-progress"]) == 0
    assert strict_json(tmp_path / "none" / "summary.json")["comparison"] is None
    assert not (tmp_path / "none" / "comparison.png").exists()


def test_a_test_set_without_some_classes_is_scored_over_those_it_has(trained, tmp_path):
    assert synthgen_main(["build", "--n", "40", "--count", "0-1", "--seed", "9", "--out", str(tmp_path / "zero-one"),
                          "--size", "32", "--no-progress", "--workers", "1"]) == 0
    out = tmp_path / "readout"
    assert readout_main(["--checkpoint", str(trained / "run" / "best.pt"), "--train", str(trained / "analysis-set"),
                         "--test", str(tmp_path / "zero-one"), "--out", str(out), "--epochs", "2",
                         "--no-progress"]) == 0
    result = strict_json(out / "readout.json")
    assert result["test"]["chance"] == [0.5, 0.5, None, None, None] and result["test"]["mean_chance"] == 0.5
    assert result["notes"] == ["the test set has no image of class 2, 3, 4+: the means are over the classes it has, "
                               "and compare with the published means (over all five) only loosely"]
    assert "| **Chance (this test set)** | prevalence | 50.0 | 50.0 | n/a | n/a | n/a | 50.0 |" in (
        out / "table.md").read_text()
    assert readout_main(["--checkpoint", str(trained / "run" / "best.pt"), "--train", str(tmp_path / "zero-one"),
                         "--test", str(trained / "analysis-set"), "--out", str(tmp_path / "swapped"), "--epochs", "2",
                         "--no-progress"]) == 0
    assert strict_json(tmp_path / "swapped" / "readout.json")["notes"] == [
        "the readout's training part has no image of class 2, 3, 4+, which the test set has: it cannot learn to "
        "tell them"]


def test_intervals_that_miss_their_estimate_are_drawn(tmp_path):
    """A percentile interval need not contain its estimate (from a single resample it cannot): the figure of the
    decoding R^2 drew negative error bars, and the command ended in an internal error."""
    rng = np.random.default_rng(0)
    x = make_predictors(rng.integers(1, 5, 300), rng.uniform(100, 1000, 300)).x
    z = rng.normal(size=(300, 4))
    z[:, 0] += x[:, 0]
    decoding = population_decoding(z, x[:, 0], x[:, 1], {}, folds=5, seed=0, bootstrap=1)
    assert any(not d.ci[0] <= d.r2 <= d.ci[1] for d in decoding)
    draw.null_figure(rotation_null(z, x, 0.05, 0.1, rotations=5), decoding, tmp_path / "controls.png")
    assert _valid_png(tmp_path / "controls.png")


@pytest.mark.parametrize("area_bins", [4, 50])
def test_the_response_profile_fits_its_figure_with_any_number_of_area_bins(tmp_path, area_bins):
    """A legend entry per area bin ran off the figure at --area-bins 50, and matplotlib warned that the layout
    could not be fitted; many bins get a colour bar instead."""
    from analysis.selectivity import make_design

    rng = np.random.default_rng(1)
    count, area = rng.integers(1, 5, 2000), rng.uniform(1000, 9000, 2000)
    design = make_design(count, area, area_bins=area_bins)
    assert int(design.area_bin.max()) + 1 == area_bins
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draw.response_profile(3, rng.normal(size=2000), count, area, design, "", 0.01, 0.0, 0.1,
                              tmp_path / "profile.png")
    assert _valid_png(tmp_path / "profile.png")


def test_too_few_resamples_for_a_95_percent_interval_are_refused(trained, tmp_path, capsys):
    # 20 resamples put the interval's ends on the most extreme ones, yet the report called it a 95% interval
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(trained / "analysis-set"),
                         "--out", str(tmp_path / "a"), "--bootstrap", "20", "--no-progress"]) == 2
    assert "--bootstrap 20: a 95% percentile interval needs at least 40 resamples" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_an_analysis_replaces_the_earlier_one_in_its_folder_and_nothing_else(trained, tmp_path, capsys):
    """Figures of an earlier analysis (the null's, the profile of a dimension this one does not single out)
    would otherwise stay beside the new ones; a user's file stays, and a failed analysis leaves the earlier whole."""
    out, runs = tmp_path / "analysis", [str(trained / "run" / "best.pt"), str(trained / "run-seed1" / "best.pt")]
    common = ["--data", str(trained / "analysis-set"), "--out", str(out), "--bootstrap", "0", "--no-progress"]
    assert analyse_main(["--checkpoint", runs[0], *common, "--null-rotations", "19"]) == 0
    (out / "notes.txt").write_text("mine\n")
    first = sorted(p.name for p in out.iterdir())
    assert "controls.png" in first
    assert analyse_main(["--checkpoint", runs[0], *common, "--active-threshold", "1e9"]) == 1  # fails: kept whole
    assert sorted(p.name for p in out.iterdir()) == first
    assert analyse_main(["--checkpoint", *runs, *common, "--null-rotations", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.md", "run-best", "run-seed1-best",
                                                     "runs.csv", "runs.png", "summary.json"]
    assert f"replacing the earlier analysis in {out} ({len(first) - 1} files)" in capsys.readouterr().out
    assert analyse_main(["--checkpoint", runs[1], *common, "--null-rotations", "0"]) == 0
    summary = strict_json(out / "summary.json")
    written = {"summary.json", "report.md", "dimensions.csv", "latents.npz", "notes.txt",
               *(Path(p).name for p in summary["figures"].values())}
    assert {p.name for p in out.iterdir()} == written and "controls.png" not in written  # no folder, no stale file


def tree(folder: Path) -> dict[str, bytes]:
    """Every file within a folder, hidden ones included, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def under_file_size_limit(limit: int, command: str, *args) -> subprocess.CompletedProcess:
    """Run an analysis command in a process whose files cannot grow beyond `limit` bytes: the kernel refuses the
    write that would, as a full disk does."""
    main = "analyze_main" if command == "analyze-area-vs-number" else "subitize_main"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            f"from analysis.cli import {main}; sys.exit({main}(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("command", ["analyze-area-vs-number", "vae-subitize"])
def test_a_full_disk_puts_the_earlier_analysis_back_whole(trained, tmp_path, command):
    """A write that failed part way (a full disk) left the earlier analysis deleted and a truncated latents.npz, and
    named no file; the earlier analysis is now set aside until the new one is written whole."""
    out = tmp_path / "out"
    if command == "analyze-area-vs-number":
        runs = [str(trained / "run" / "best.pt"), str(trained / "run-seed1" / "best.pt")]
        args = ["--data", trained / "analysis-set", "--out", out, "--bootstrap", "0", "--null-rotations", "19",
                "--no-progress"]
        assert analyse_main(["--checkpoint", *runs, *map(str, args)]) == 0  # the earlier one: a folder per run
        again = ["--checkpoint", runs[0], *args]
    else:
        args = ["--checkpoint", trained / "run" / "best.pt", "--train", trained / "train", "--test",
                trained / "analysis-set", "--out", out, "--epochs", "5", "--no-progress"]
        assert readout_main(list(map(str, args))) == 0
        again = [*args, "--seed", "1"]
    (out / "notes.txt").write_text("mine\n")
    earlier = tree(out)
    # small files are written, and the first figure is not: the failure comes part way through
    failed = under_file_size_limit(20_000, command, *again)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert re.search(rf"{command}: error: {re.escape(str(out))}/[\w./-]+: File too large$", failed.stderr.strip())
    assert tree(out) == earlier  # every earlier file back, byte for byte, and nothing of the failed one
    assert not list(out.rglob(".*"))  # nor the folder the earlier files were set aside in, nor a lock


@pytest.mark.parametrize("command", ["analyze-area-vs-number", "vae-subitize"])
def test_a_second_analysis_into_one_folder_is_refused(trained, tmp_path, capsys, command):
    """Two analyses into one --out (a sweep's loop started twice): the second would replace the first one's files
    as it writes them. It is refused once its inputs are checked, before encoding, and writes nothing there."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("the first analysis, being written\n")
    arguments = (["--data", str(trained / "analysis-set")] if command == "analyze-area-vs-number" else
                 ["--train", str(trained / "train"), "--test", str(trained / "analysis-set")])
    main = analyse_main if command == "analyze-area-vs-number" else readout_main
    with lock_held_elsewhere(out, command) as holder:
        capsys.readouterr()
        assert main(["--checkpoint", str(trained / "run" / "best.pt"), *arguments, "--out", str(out),
                     "--no-progress"]) == 1
        assert f"--out {out}: another {command} (pid {holder.pid}) is writing" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [f".{command}.lock", "report.md"]
        assert (out / "report.md").read_text() == "the first analysis, being written\n"


def test_analysis_errors_are_clear(trained, tmp_path, capsys):
    assert analyse_main(["--checkpoint", str(tmp_path / "missing.pt"), "--data", str(trained / "analysis-set"),
                         "--out", str(tmp_path / "a"), "--no-progress"]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(trained / "analysis-set"),
                         "--out", str(tmp_path / "b"), "--active-threshold", "1e9", "--no-progress"]) == 1
    assert "no active latent dimension" in capsys.readouterr().err
    # 8 images in 8 area bins: each alone in its cell, nothing is left for the ANOVA's residual. Refused before
    # encoding, where every p would have been undefined and read as "no number-selective unit"
    assert synthgen_main(["build", "--n", "8", "--count", "1-4", "--size", "32", "--out", str(tmp_path / "tiny"),
                          "--no-progress", "--workers", "1"]) == 0
    assert analyse_main(["--checkpoint", str(trained / "run" / "best.pt"), "--data", str(tmp_path / "tiny"),
                         "--out", str(tmp_path / "c"), "--area-bins", "50", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "needs more images than cells: the 8 images with N >= 1 fill 8 cells" in err and "lower --area-bins" in err
    assert not (tmp_path / "c").exists()
