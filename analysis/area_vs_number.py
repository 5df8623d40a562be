"""analyze-area-vs-number: latent dimensions that code numerosity but not cumulative area, and the reverse,
and whether what is found is more than chance.

For each checkpoint: encode the set (posterior means), then the statistics, each a value of its own
module: Stoianov & Zorzi's Eq. 3 and criteria (analysis.units), the random-rotation null and population
decoding (analysis.controls), the two-way ANOVA of number selectivity (analysis.selectivity), and S&Z's
numerosity comparison with its Weber fraction (analysis.comparison). Then the writers (analysis.report,
analysis.figures). Several checkpoints (seeds, betas, or the epochs that vae-train
--save-every kept) get a folder each and a summary over them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from analysis.comparison import Comparison, numerosity_comparison
from analysis.config import AnalysisConfig
from analysis.controls import Decoding, NullResult, population_decoding, rotation_null
from analysis.encode import (checked_checkpoints, encode_set, load_encoder, over_training, resize_notes,
                             seen_by_the_vae)
from analysis.regression import AREA, NUMEROSITY, Predictors, make_predictors
from analysis.report import (collapsed_markdown, collapsed_summary, earlier_outputs, epochs_markdown, epochs_summary,
                             mean_sd_text, report_markdown, run_row, run_summary, runs_markdown, runs_summary,
                             write_dimensions, write_runs_csv)
from analysis.selectivity import Design, Selectivity, anova_moments, make_design, number_selectivity
from analysis.units import UNTRAINED_ACTIVE_THRESHOLD, Criteria, NoActiveDimension, UnitResult, find_units
from common import streams
from common.atomic import ReplacedOutputs, write_atomic
from common.cli import resolve_device
from common.errors import UserError
from common.jsontext import json_text
from common.locks import FolderLock
from common.settings import to_dict
from synthgen import ShardSet
from vae.augment import to_float


@dataclass
class SetLabels:
    """What the analyses need of a set besides its images."""

    count: np.ndarray
    area: np.ndarray  # visible cumulative area, pixels
    design: Design  # the ANOVA's numerosity levels and area bins (the set's own levels, or --area-bins quantiles)
    predictors: Predictors  # Eq. 3's standardised log N and log A, and the images they cover
    cues: dict[str, np.ndarray]  # the non-numerical magnitudes the comparison's answers are checked against


@dataclass
class RunAnalysis:
    """Every result of one checkpoint on the set."""

    label: str
    checkpoint: str
    epoch: int | None
    data: str
    n_images: int
    units: UnitResult
    selectivity: Selectivity | None
    null: NullResult | None
    decoding: list[Decoding]
    set_notes: list[str]
    image_sizes: tuple[int, int] = (0, 0)  # the set's, the model's
    active_threshold: float = 0.01  # the one applied (criteria_of: all varying dimensions of an untrained model)
    comparison: Comparison | None = None  # None: not asked for (--comparison-references none)
    figures: dict[str, str] = field(default_factory=dict)


def criteria_of(config: AnalysisConfig, epoch: int | None = None) -> Criteria:
    """The criteria for a checkpoint of `epoch`: an untrained model's (epoch 0) dimensions are all analysed."""
    threshold = UNTRAINED_ACTIVE_THRESHOLD if epoch == 0 else config.active_threshold
    return Criteria(config.r2_min, config.beta_max, threshold, config.log1p)


def set_notes(shards: ShardSet) -> list[str]:
    """How far the set is from the paper's analysis set (same object, no overlap, counts 0..4)."""
    if shards.kind == "dots":
        return []
    config = shards.manifest.get("config", {})
    notes = []
    if not config.get("same_object"):
        notes.append("the set was not built with --same-object: objects differ within an image")
    if config.get("max_occlusion", 0) > 0:
        notes.append(f"objects may overlap (--max-occlusion {config.get('max_occlusion')}); the paper used none")
    return notes


CONFOUNDED_R = 0.3  # |r| of log N and log A from which a set separates them visibly less well (README)


def confound_note(labels: SetLabels, config: AnalysisConfig) -> str | None:
    """A note when the set's log N and log A are correlated over the images Eq. 3 fits: it then separates them
    less well, whatever the code. The paper's set draws the area independently of N (r near 0)."""
    r = labels.predictors.correlation
    if abs(r) < CONFOUNDED_R:
        return None
    cause = (" (with --log1p, the N = 0 images sit at 0 on both)" if config.log1p else "")
    return (f"log N and log A are correlated over the fitted images (r = {r:+.2f}){cause}: Eq. 3 separates number "
            f"from area less well here, the standard errors of its betas are {1 / np.sqrt(1 - r * r):.2f}x those of "
            "an uncorrelated set of the same size, and a dimension coding either shows part of the other; the "
            "paper's analysis set draws the area independently of N (synthgen build, r near 0)")


def run_notes(state: dict, checkpoint: str, shards: ShardSet, confound: str | None) -> list[str]:
    """What a run's report says of the set besides set_notes: its confound, and how this checkpoint's encoder
    sees it (another size than the run's own sets, or images it trained on)."""
    seen = [f"{seen}: the analysis reads the code of images the encoder learnt from; the paper's analysis set was "
            "made apart from its training set" for seen in seen_by_the_vae(state, [("--data", shards)])]
    return ([confound] if confound else []) + resize_notes(state, checkpoint, [("--data", shards)]) + seen


def analyse_latents(means: np.ndarray, labels: SetLabels, config: AnalysisConfig, criteria: Criteria
                    ) -> tuple[UnitResult, Selectivity, NullResult | None, list[Decoding], Comparison | None]:
    """The statistics of one run, from its posterior means: units, selectivity, null, decoding, comparison."""
    units = find_units(means, labels.predictors, criteria, config.bootstrap, config.seed)
    z = units.latents(means)
    design = labels.design
    z_design = means[design.used][:, units.active]
    moments = anova_moments(z_design, design)  # once, for the observed ANOVA and for its rotations
    selectivity = number_selectivity(z_design, design, config.anova_p, moments)
    null = None
    if config.null_rotations:
        null = rotation_null(z, units.predictors.x, config.r2_min, config.beta_max, config.null_rotations,
                             config.seed, anova=moments, p_max=config.anova_p)
    positions = {kind: np.flatnonzero(units.labels == kind) for kind in (NUMEROSITY, AREA)}
    decoding = population_decoding(z, units.predictors.x[:, 0], units.predictors.x[:, 1], positions, config.folds,
                                   config.seed, config.bootstrap)
    comparison = (numerosity_comparison(means[:, units.active], labels.count, config.comparison_references,
                                        config.folds, config.seed, labels.cues)
                  if config.comparison_references else None)
    return units, selectivity, null, decoding, comparison


def analyse_run(checkpoint: str, label: str, shards: ShardSet, labels: SetLabels, config: AnalysisConfig,
                out: Path, device, outputs: ReplacedOutputs, log=print, notes: list[str] = (),
                replace: tuple[Path, ...] = (), collapsed_ok: bool = False) -> dict:
    """One checkpoint: encode, analyse, write the folder; returns its summary. `notes` (run_notes) are logged
    and reported with the set's own. `replace`: folders whose earlier analysis is set aside in `outputs` once this one
    is computed, before it is written (report.earlier_outputs), so that a failed analysis leaves the earlier
    one whole. `collapsed_ok`: a model with no active dimension is reported as such (one run of several,
    as a large KL weight of a sweep can give) instead of refused."""
    for note in notes:
        log(f"analyze-area-vs-number: {label}: note: {note}")
    model, meta = load_encoder(checkpoint, device)
    means = encode_set(model, shards, device, config.batch_size, config.runtime.progress)
    criteria = criteria_of(config, meta.get("epoch"))
    try:
        units, selectivity, null, decoding, comparison = analyse_latents(means, labels, config, criteria)
    except NoActiveDimension as exc:
        if not collapsed_ok:
            raise NoActiveDimension(f"--checkpoint {checkpoint}: {exc}") from None
        units = None
    _replace_previous(outputs, replace, log)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "latents.npz",
                 lambda handle: np.savez(handle, means=means, count=labels.count, area=labels.area))
    if units is None:
        summary = collapsed_summary(label, str(Path(checkpoint).resolve()), meta.get("epoch"), str(shards.root),
                                    len(shards), means, to_dict(config))
        write_atomic(out / "summary.json", json_text(summary).encode())
        write_atomic(out / "report.md", collapsed_markdown(summary).encode())
        log(f"analyze-area-vs-number: {label}: {summary['collapsed']}; reported as a run without units")
        log(f"  report {out / 'report.md'}")
        return summary
    run = RunAnalysis(label, str(Path(checkpoint).resolve()), meta.get("epoch"), str(shards.root), len(shards),
                      units, selectivity, null, decoding, set_notes(shards) + list(notes),
                      (shards.image_size, model.config.image_size), criteria.active_threshold, comparison)
    run.figures = write_figures(out, run, model, shards, means, labels, config, device)
    summary = run_summary(run, to_dict(config))
    write_dimensions(out / "dimensions.csv", run)
    write_atomic(out / "summary.json", json_text(summary).encode())
    report = report_markdown(run, summary, criteria, config.bootstrap, config.seed)
    write_atomic(out / "report.md", report.encode())
    found = units.units
    chance = (f"; against {null.rotations} rotations: p = {null.p['best_numerosity_unit_r2']:.3f} (best numerosity "
              f"unit), {null.p['best_r2']:.3f} (best R^2)" if null else "")
    weber = comparison.pooled.weber_fraction if comparison and comparison.pooled else None
    judged = f"; Weber fraction {weber:.3f}" if weber is not None else ""
    log(f"analyze-area-vs-number: {label}: {int(units.active.sum())}/{units.active.size} active dimensions; "
        f"numerosity units {found[NUMEROSITY] or 'none'}, area units {found[AREA] or 'none'}{chance}; decoding R^2 "
        f"log N {decoding[0].r2:.3f}, log A {decoding[1].r2:.3f}; {int(selectivity.selective.sum())} "
        f"number-selective units (ANOVA){judged}")
    log(f"  report {out / 'report.md'}; table {out / 'dimensions.csv'}; figures in {out}")
    return summary


def _replace_previous(outputs: ReplacedOutputs, folders: tuple[Path, ...], log) -> None:
    for folder in folders:
        earlier = earlier_outputs(folder)
        if earlier:
            outputs.set_aside([str((folder / name).relative_to(outputs.out)) for name in earlier])
            log(f"analyze-area-vs-number: replacing the earlier analysis in {folder} ({len(earlier)} files)")


def write_figures(out: Path, run: RunAnalysis, model, shards, means, labels: SetLabels, config: AnalysisConfig,
                  device) -> dict[str, str]:
    from analysis import figures as draw  # matplotlib: not for an analysis refused before it encodes
    from vae.plots import reconstruction_grid

    units, fit = run.units, run.units.fit
    figures = {"betas": str(out / "betas.png")}
    draw.beta_scatter(units.dims, fit.beta_n, fit.beta_a, fit.r2, units.labels, config.r2_min, config.beta_max,
                      figures["betas"])
    selected = [k for k in units.best if units.labels[k]] or list(units.best[:2])  # no unit: the best-fitting
    for k in selected:
        dim = int(units.dims[k])
        figures[f"profile_z{dim}"] = str(out / f"profile-z{dim}.png")
        draw.response_profile(dim, means[:, dim], labels.count, labels.area, labels.design, units.labels[k], fit.r2[k],
                              fit.beta_n[k], fit.beta_a[k], figures[f"profile_z{dim}"])
    if run.null is not None:
        figures["controls"] = str(out / "controls.png")
        draw.null_figure(run.null, run.decoding, figures["controls"])
    if run.selectivity is not None:
        figures["tuning"] = str(out / "tuning.png")
        draw.tuning_figure(run.selectivity, figures["tuning"])
    if run.comparison is not None and run.comparison.curves:
        figures["comparison"] = str(out / "comparison.png")
        draw.comparison_figure(run.comparison, figures["comparison"])
    rng = streams.rng(config.seed, streams.FIGURE_IMAGES)
    with_objects = np.flatnonzero(labels.count > 0)
    example = int(rng.choice(with_objects)) if with_objects.size else 0
    figures["traversal"] = str(out / "traversal.png")
    # the posterior means are already known: the figures decode them rather than encode again
    draw.traversal_grid(model, shards.image(example), means[example], [int(units.dims[k]) for k in selected[:6]],
                        np.sqrt(units.variance), figures["traversal"], device=device)
    chosen = np.sort(rng.choice(len(shards), min(8, len(shards)), replace=False))
    x = to_float(torch.from_numpy(shards.images(chosen)), model.config.image_size)
    with torch.no_grad():
        x_hat = model.decode(torch.as_tensor(means[chosen], dtype=torch.float32, device=device)).cpu()
    figures["reconstructions"] = str(out / "reconstructions.png")
    reconstruction_grid(x.permute(0, 2, 3, 1).numpy(), x_hat.permute(0, 2, 3, 1).numpy(),
                        figures["reconstructions"], "posterior-mean reconstructions of the analysis set")
    return figures


def load_set(config: AnalysisConfig) -> tuple[ShardSet, SetLabels]:
    shards = ShardSet(config.data, verify=config.runtime.verify_shards, progress=config.runtime.progress,
                      option="--data")
    if shards.kind == "natural":
        raise UserError(f"--data {config.data}: a natural set has no areas; give a synthgen build (or dots) set")
    count = shards.labels["count"].astype(np.int64)
    if np.count_nonzero(count > 0) < 4 or np.unique(count[count > 0]).size < 2:
        raise UserError(f"--data {config.data}: Eq. 3 needs images with at least two different counts N >= 1; "
                        f"this set has counts {sorted(set(count.tolist()))}")
    area = shards.labels["visible_area"].astype(np.float64)
    design = make_design(count, area, shards.labels["target_area"].astype(np.float64), config.area_bins)
    problem = anova_problem(design, config)
    if problem:
        raise UserError(f"--data {config.data}: {problem}")
    try:  # a set whose log N or log A does not vary is refused here, before anything is encoded
        predictors = make_predictors(count, area, config.log1p)
    except ValueError as exc:
        raise UserError(f"--data {config.data}: {exc}") from None
    cues = {"cumulative area": area}
    if "field_area" in shards.labels:  # the dot arrays' convex hull
        cues["field area"] = shards.labels["field_area"].astype(np.float64)
    return shards, SetLabels(count, area, design, predictors, cues)


def anova_problem(design: Design, config: AnalysisConfig) -> str | None:
    """Why the number-selectivity ANOVA cannot be tested on this design (None if it can): with as many cells as
    images, nothing is left to estimate the residual against, and every p would be undefined."""
    images, cells = int(design.used.sum()), int(np.unique(design.cells).size)
    if images > cells:
        return None
    if design.by_levels:
        binned, remedy = f"the set's {design.area_edges.size} area levels", "analyse a larger set"
    else:
        binned = f"{design.area_edges.size - 1} area bins (--area-bins {config.area_bins})"
        remedy = "lower --area-bins or analyse a larger set"
    return (f"the two-way ANOVA of number selectivity needs more images than cells: the {images} images with N >= 1 "
            f"fill {cells} cells of {design.levels.size} numerosities x {binned}, leaving nothing to test against; "
            f"{remedy}")


def analyse(config: AnalysisConfig, log=print) -> dict:
    """Analyse every checkpoint on the set; with several, also write the summary over runs, or over the course of
    training where a run is given at several epochs."""
    out = Path(config.out)
    device = resolve_device(config.runtime.device)
    states, runs, names = checked_checkpoints(config.checkpoint, out)
    shards, labels = load_set(config)
    confound = confound_note(labels, config)
    notes = [run_notes(state, path, shards, confound) for path, state in zip(config.checkpoint, states)]
    # One analysis writes the folder at a time: a second one there would replace this one's files as it writes.
    # The earlier analysis there is replaced as one step: a failure at any point (a full disk) puts it back.
    with FolderLock(out, "analyze-area-vs-number", doing="writing an analysis there"), ReplacedOutputs(out) as outputs:
        if len(config.checkpoint) == 1:
            return analyse_run(config.checkpoint[0], names[0], shards, labels, config, out, device, outputs, log,
                               notes[0], replace=(out,))
        summaries = [analyse_run(path, name, shards, labels, config, out / name, device, outputs, log, run_notes,
                                 replace=(out, out / name) if k == 0 else (out / name,), collapsed_ok=True)
                     for k, (path, name, run_notes) in enumerate(zip(config.checkpoint, names, notes))]
        from analysis import figures as draw

        rows = [run_row(s, run) for s, run in zip(summaries, runs)]
        write_runs_csv(out / "runs.csv", rows)
        null_95th = [(s.get("null") or {}).get("null_95th_percentile", {}).get("best_r2") for s in summaries]
        overall = {"data": str(shards.root), "settings": to_dict(config), "runs": rows, "figure": str(out / "runs.png")}
        if over_training(runs):
            course = overall["over_training"] = epochs_summary(rows)
            draw.epochs_figure(rows, course, null_95th, out / "runs.png")
            write_atomic(out / "summary.json", json_text(overall).encode())
            write_atomic(out / "report.md", epochs_markdown(rows, course, str(shards.root)).encode())
            epochs = [int(epoch) for epoch in course["by_epoch"]]
            log(f"analyze-area-vs-number: {len(rows)} checkpoints of {len(course['runs'])} run(s), epochs {epochs[0]} "
                f"to {epochs[-1]}; summary {out / 'report.md'}, {out / 'runs.csv'}, {out / 'runs.png'}")
            return overall
        stats = runs_summary(rows)
        draw.runs_figure(rows, null_95th, out / "runs.png")
        overall["over_runs"] = stats
        write_atomic(out / "summary.json", json_text(overall).encode())
        write_atomic(out / "report.md", runs_markdown(rows, stats, str(shards.root)).encode())
        collapsed = [row["label"] for row in rows if row["collapsed"]]
        found = (f"best R^2 {mean_sd_text(stats['best_r2'], '.3f')}"
                 + (f"; without an active dimension: {', '.join(collapsed)}" if collapsed else "")
                 if "best_r2" in stats else "none with an active dimension")
        log(f"analyze-area-vs-number: {len(rows)} runs; {found}"
            + f"; summary {out / 'report.md'}, {out / 'runs.csv'}, {out / 'runs.png'}")
        return overall
