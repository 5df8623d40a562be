"""What `analyze-area-vs-number` writes: summary.json values, report.md and dimensions.csv of one run, and the
summary over several runs. The statistics are computed elsewhere (analysis.units, analysis.controls,
analysis.selectivity); here they are only laid out.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.regression import AREA, NUMEROSITY
from analysis.selectivity import TERMS
from common.atomic import write_atomic
from common.jsontext import finite

if TYPE_CHECKING:
    from analysis.area_vs_number import RunAnalysis

PAPER_RESULT = ("one or two recurring dimensions responded to A or N with R^2 > 0.06 +- 0.02; when several area "
                "units were found, their signs were opposite")
NULL_STATISTICS = {"numerosity_units": "numerosity units (Eq. 3 criteria)", "area_units": "area units (Eq. 3 criteria)",
                   "best_numerosity_unit_r2": "R^2 of the best numerosity unit (0: none)",
                   "best_area_unit_r2": "R^2 of the best area unit (0: none)",
                   "best_r2": "best R^2 of Eq. 3 over the dimensions",
                   "selective_units": "number-selective units (two-way ANOVA)"}
VERDICT_STATISTICS = ("best_numerosity_unit_r2", "best_area_unit_r2", "best_r2")


def _number(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def run_summary(run: "RunAnalysis", settings: dict) -> dict:
    """Every result of one run as plain values (summary.json)."""
    units, fit = run.units, run.units.fit
    area_signs = {f"z{units.dims[k]}": ("+" if fit.beta_a[k] > 0 else "-")
                  for k in np.flatnonzero(units.labels == AREA)}
    best = units.best
    summary = {
        "label": run.label, "checkpoint": run.checkpoint, "model_epoch": run.epoch, "data": run.data,
        "settings": settings, "n_images": run.n_images, "latent": int(units.active.size),
        "active_dims": int(units.active.sum()), "active_threshold": run.active_threshold,
        "inactive_dims": [int(d) for d in np.flatnonzero(~units.active)],
        "fit_images": int(units.predictors.used.sum()), "excluded_n0_images": units.predictors.excluded_zero,
        "predictor_correlation": units.predictors.correlation,
        "predictors": ("standardised log(1 + N), log(1 + A)" if units.predictors.transform == "log1p"
                       else "standardised log N, log A"),
        "numerosity_units": units.units[NUMEROSITY], "area_units": units.units[AREA], "area_unit_signs": area_signs,
        "area_units_of_opposite_sign": len(set(area_signs.values())) > 1,
        "best_r2": {f"z{units.dims[k]}": float(fit.r2[k]) for k in best[:10]},
        "best_dimension": {"dim": int(units.dims[best[0]]), "r2": float(fit.r2[best[0]]),
                           "beta_n": float(fit.beta_n[best[0]]), "beta_a": float(fit.beta_a[best[0]])},
        "null": run.null.summary() if run.null else None,
        "decoding": [d.summary() for d in run.decoding],
        "comparison": run.comparison.summary() if run.comparison else None,
        "image_size": {"set": run.image_sizes[0], "model": run.image_sizes[1]},
        "set_notes": run.set_notes, "figures": run.figures, "paper": PAPER_RESULT,
    }
    if run.selectivity is not None:
        sel = run.selectivity
        chosen = np.flatnonzero(sel.selective)
        summary["selectivity"] = {
            "test": f"two-way ANOVA per dimension, numerosity x area bin with interaction, Type II sums of squares; "
                    f"selective: numerosity p < {sel.p_max}, area and interaction p >= {sel.p_max}",
            "numerosities": sel.levels.tolist(), "area_bins": sel.area_bins,
            "selective_units": [int(units.dims[k]) for k in chosen],
            "preferred": {f"z{units.dims[k]}": int(sel.preferred[k]) for k in chosen},
            "preferred_histogram": {str(int(v)): int(np.sum(sel.preferred[chosen] == v)) for v in sel.levels},
            "tuning_widths": {str(k): v for k, v in sel.widths.items()}}
    return summary


def collapsed_summary(label: str, checkpoint: str, epoch, data: str, n_images: int, means: np.ndarray,
                      settings: dict) -> dict:
    """summary.json of a run whose code does not vary over the set: no Eq. 3, no units, no controls."""
    variance = means.var(axis=0)
    return {"label": label, "checkpoint": checkpoint, "model_epoch": epoch, "data": data, "settings": settings,
            "n_images": n_images, "latent": int(variance.size), "active_dims": 0,
            "collapsed": (f"no active latent dimension: the largest variance of a posterior mean over the set is "
                          f"{variance.max():.2g}, under --active-threshold {settings['active_threshold']}"),
            "numerosity_units": [], "area_units": [], "best_dimension": {"r2": None}, "null": None, "decoding": [],
            "figures": {}, "paper": PAPER_RESULT}


def collapsed_markdown(summary: dict) -> str:
    return "\n".join([
        "# Area versus number", "",
        f"Checkpoint `{summary['checkpoint']}` (epoch {summary['model_epoch']}), set `{summary['data']}` "
        f"({summary['n_images']} images).", "",
        f"**Nothing to analyse: {summary['collapsed']}.** The model codes nothing that varies over these images "
        "(a collapsed posterior, as a large KL weight gives): it has no numerosity or area unit, and Eq. 3, the "
        "controls and the ANOVA are not run. The posterior means are in `latents.npz`.", ""])


def write_dimensions(path: Path, run: "RunAnalysis") -> None:
    """One row per latent dimension, active or not: variance, Eq. 3, CIs, the ANOVA, the unit labels."""
    units, fit, ci, sel = run.units, run.units.fit, run.units.ci, run.selectivity
    position = {int(dim): k for k, dim in enumerate(units.dims)}
    rows = []
    for dim in range(units.active.size):
        row = {"dim": dim, "active": bool(units.active[dim]), "variance": float(units.variance[dim])}
        if dim in position:
            k = position[dim]
            row.update({"r2": fit.r2[k], "beta_n": fit.beta_n[k], "se_n": fit.se_n[k], "ci_n_low": ci[0, 0, k],
                        "ci_n_high": ci[1, 0, k], "beta_a": fit.beta_a[k], "se_a": fit.se_a[k],
                        "ci_a_low": ci[0, 1, k], "ci_a_high": ci[1, 1, k], "unit": units.labels[k]})
            if sel is not None:
                row.update({f"anova_p_{term}": sel.p[t, k] for t, term in enumerate(TERMS)})
                row.update({"number_selective": bool(sel.selective[k]), "preferred_numerosity": int(sel.preferred[k])})
        rows.append(row)
    # an undefined value (no bootstrap) as an empty cell, read as missing
    write_csv(path, list(rows[int(units.dims[0])].keys()), finite(rows))


def _interval(lo: float, hi: float, sign: str = "+") -> str:
    """` [lo, hi]`, or nothing where no bootstrap was run (--bootstrap 0)."""
    return "" if math.isnan(lo) else f" [{lo:{sign}.3f}, {hi:{sign}.3f}]"


def _unit_row(run: "RunAnalysis", k: int) -> str:
    fit, ci, dims, labels = run.units.fit, run.units.ci, run.units.dims, run.units.labels
    return (f"| z{dims[k]} | {labels[k] or '-'} | {fit.r2[k]:.3f} | {fit.beta_n[k]:+.3f} ± {fit.se_n[k]:.3f}"
            f"{_interval(ci[0, 0, k], ci[1, 0, k])} | {fit.beta_a[k]:+.3f} ± {fit.se_a[k]:.3f}"
            f"{_interval(ci[0, 1, k], ci[1, 1, k])} |")


def _null_section(run: "RunAnalysis") -> list[str]:
    null = run.null
    if null is None:
        return ["", "## Against chance", "", "No null was run (--null-rotations 0)."]
    lines = ["", "## Against chance: the random-rotation null", "",
             f"The same analysis on {null.rotations} random orthogonal rotations of the centred active latents: "
             "the information the code holds is kept, its axes are not. p is the share of rotations (plus one) "
             "that reach the observed value or more.", "",
             "| statistic | observed | null mean | null 95th percentile | p |", "|---|---|---|---|---|"]
    for key, label in NULL_STATISTICS.items():
        if key in null.observed:
            values = null.null[key]
            shown = "{:.3f}" if key.endswith("r2") else "{:.0f}"
            lines.append(f"| {label} | {shown.format(null.observed[key])} | {values.mean():.3g} | "
                         f"{np.percentile(values, 95):.3g} | {null.p[key]:.3f} |")
    beyond = [NULL_STATISTICS[k] for k in VERDICT_STATISTICS if null.p[k] < 0.05]
    lines += ["", "Verdict: " + (f"beyond chance (p < 0.05): {'; '.join(beyond)}." if beyond else
                                 "no Eq. 3 statistic is beyond chance (every p >= 0.05): the units found, if any, are "
                                 "what randomly oriented axes of this code would also show.")]
    return lines


def _decoding_section(run: "RunAnalysis") -> list[str]:
    bootstrapped = any(not math.isnan(d.ci[0]) for d in run.decoding)
    lines = ["", "## Population decoding", "",
             "Cross-validated ridge regression (features standardised per training fold, penalty by leave-one-out "
             "on the training fold); R^2 over the out-of-fold predictions"
             + (", 95% bootstrap interval over images." if bootstrapped else " (no bootstrap: --bootstrap 0)."), "",
             f"| target | from | dimensions | R^2{' [95% CI]' if bootstrapped else ''} | folds |",
             "|---|---|---|---|---|"]
    for d in run.decoding:
        lines.append(f"| {d.target} | {d.features} | {d.n_features} | {d.r2:.3f}{_interval(*d.ci, sign='')} | "
                     f"{d.folds} |")
    return lines


def _selectivity_section(run: "RunAnalysis") -> list[str]:
    sel = run.selectivity
    if sel is None:
        return []
    chosen = np.flatnonzero(sel.selective)
    dims = run.units.dims
    lines = ["", "## Number-selective units (two-way ANOVA, as Nasr et al. 2019)", "",
             f"Per active dimension, a two-way ANOVA of the response on numerosity ({sel.levels.size} levels: "
             f"{', '.join(map(str, sel.levels))}) and cumulative area ({sel.area_bins} "
             f"{'levels of the design' if sel.by_levels else 'quantile bins of log A'}) with their interaction "
             f"(Type II sums of squares; images with N = 0 left out). Selective: numerosity p < {sel.p_max}, area and "
             f"interaction p >= {sel.p_max}. This is a different criterion from Eq. 3's, named apart: with many "
             "images, small effects are significant, so compare the count with its null above.", "",
             f"Number-selective units: {', '.join(f'z{dims[k]}' for k in chosen) or 'none'} ({chosen.size} of "
             f"{dims.size})."]
    if chosen.size:
        histogram = ", ".join(f"N = {int(v)}: {int(np.sum(sel.preferred[chosen] == v))}" for v in sel.levels)
        lines += [f"Preferred numerosities: {histogram}."]
    if sel.widths:
        lines += ["", "Gaussian fits of the average tuning curve per preferred numerosity (widths in N, and in "
                  "log2 N):", "", "| preferred N | units | sigma (linear) | R^2 (linear) | sigma (log2) | R^2 (log2) |",
                  "|---|---|---|---|---|---|"]
        for value, fits in sorted(sel.widths.items()):
            lines.append(f"| {value} | {fits['units']} | {fits['linear']['sigma']:.2f} | {fits['linear']['r2']:.2f} | "
                         f"{fits['log2']['sigma']:.2f} | {fits['log2']['r2']:.2f} |")
    return lines


def _weber_text(fit) -> str:
    """w [95% CI] of a WeberFit, or why there is none."""
    if fit is None:
        return "-"
    if fit.weber_fraction is not None:
        low, high = fit.ci95
        return f"{fit.weber_fraction:.3f} [{low:.3f}, {'-' if high is None else f'{high:.3f}'}]"
    return f"none: {fit.why_none()}"


def _biases_text(biases) -> str:
    return "; ".join(f"{b.cue} {b.per_doubling:+.3f} ± {b.se:.3f} ({b.p:.2g}; sd {b.spread_at_fixed_n:.2f} at a "
                     f"fixed N, r {b.corr_with_log_n:+.2f} with log N)" for b in biases) or "-"


# A cue correlated with log N at least this much over the compared images is flagged in the report: on the dot
# arrays of a fixed field (r 0.81 for their hull) w at fixed cues still came out finer than the same codes give where
# the field varies (r 0.60; 0.21 against 0.26, benchmarks/RESULTS.md).
CUE_WITH_N = 0.7


def cue_with_number_note(bias) -> str:
    """What a cue that goes with N in the set means for w, and what set would tell them apart."""
    remedy = ("arrays whose field varies, e.g. `synthgen dots --field-range 0.4-0.9 --area-range 0.03-0.12`"
              if bias.cue == "field area" else f"a set whose {bias.cue} varies apart from N")
    return (f"Note: the {bias.cue} goes with N in this set (r {bias.corr_with_log_n:+.2f} with log N over the compared "
            f"images; sd {bias.spread_at_fixed_n:.2f} doublings at a fixed N). A readout can answer by it, so w here "
            "is partly the cue's, and with a cue this close to N the fit at fixed cues does not take all of that out. "
            f"For number's own acuity, compare on {remedy} (README: the positive control).")


def _comparison_section(run: "RunAnalysis") -> list[str]:
    comparison = run.comparison
    if comparison is None:
        return []
    title = ["", "## Numerosity comparison and its Weber fraction (Stoianov & Zorzi 2012)", ""]
    if not comparison.curves:
        return title + [f"Not run, no reference suits this set: {'; '.join(comparison.left_out)}. Give references "
                        "within its numerosities with --comparison-references, or none to leave this out."]
    method = (f"Is an image more numerous than a reference r? A linear readout of the active latents answers for "
              f"the images with N from r/2 to 2r (ratios symmetric on the log scale), trained by ridge regression onto "
              f"+1/-1 on as many images of each side, the answers out of fold ({comparison.folds} folds). The Weber "
              "fraction w is fitted by maximum likelihood to P(more | N) = Phi((N - r) / (w sqrt(N^2 + r^2))) "
              "(Piazza et al. 2004), 95% Wald interval. Smaller is finer: S&Z's network reached 0.15, human adults "
              "about 0.1-0.25. The cue biases b are the shifts of the answers, in probit units, per doubling of each "
              "non-numerical magnitude the set records at a fixed N and fixed other cues (the same fit with their "
              "log2 as further predictors, after DeWind et al. 2015): 0 for answers by number alone, positive where "
              "more reads as more. The same fit's slope of number gives w at fixed cues: coarser than w where part of "
              "the answers' acuity comes from a cue that goes with N. Each cue's sd of log2 at a fixed N (in "
              "doublings) and its correlation r with log N over the compared images say how well its bias is told "
              "apart from number: a cue that barely varies at a fixed N, or goes with N almost in step, leaves both "
              "uncertain.")
    lines = title + [method, "", "| reference | images | accuracy | w [95% CI] | w at fixed cues [95% CI] | cue "
                     "biases b ± SE (p) |", "|---|---|---|---|---|---|"]
    lines += [f"| {c.reference} | {c.fit.images} | {c.accuracy:.3f} | {_weber_text(c.fit)} | "
              f"{_weber_text(c.fit_at_fixed_cues)} | {_biases_text(c.biases)} |" for c in comparison.curves]
    lines += [f"| all together | {comparison.pooled.images} | "
              f"{1 - comparison.pooled.errors / comparison.pooled.images:.3f} | {_weber_text(comparison.pooled)} | "
              f"{_weber_text(comparison.pooled_at_fixed_cues)} | {_biases_text(comparison.pooled_biases)} |"]
    lines += [line for bias in comparison.pooled_biases if abs(bias.corr_with_log_n) >= CUE_WITH_N
              for line in ("", cue_with_number_note(bias))]
    if comparison.left_out:
        lines += [""] + [f"Not used: {problem}." for problem in comparison.left_out]
    return lines


def _sizes(sizes: dict) -> str:
    if sizes["set"] == sizes["model"]:
        return f" of {sizes['set']} px"
    return f" of {sizes['set']} px, reduced to the model's {sizes['model']} px by area averaging"


def report_markdown(run: "RunAnalysis", summary: dict, criteria, bootstrap: int, seed: int) -> str:
    units = run.units
    interval = " [95% bootstrap CI]" if bootstrap else ""
    header = (f"| dimension | unit | R^2 | beta_N ± SE{interval} | beta_A ± SE{interval} |\n"
              "|---|---|---|---|---|")
    found = [k for k in units.best if units.labels[k]]
    lines = [
        "# Area versus number", "",
        f"Checkpoint `{summary['checkpoint']}` (epoch {summary['model_epoch']}), set `{summary['data']}` "
        f"({summary['n_images']} images{_sizes(summary['image_size'])}).", "",
        "## Method",
        f"* Posterior means of {summary['latent']} latent dimensions; {summary['active_dims']} are active (variance "
        f"of the posterior mean over the set >= {criteria.active_threshold:g}"
        + (": the untrained model, whose code no KL term has shaped yet, so every dimension that varies is analysed "
           "and --active-threshold applies to trained models only" if summary["model_epoch"] == 0 else "")
        + f"); inactive and left out: {', '.join(f'z{d}' for d in summary['inactive_dims']) or 'none'}.",
        f"* Eq. 3 fitted by OLS with an intercept for every active dimension: standardised z_i on "
        f"{summary['predictors']}, over {summary['fit_images']} images (corr(log N, log A) = "
        f"{summary['predictor_correlation']:+.3f} over them)"
        + ("; log(1 + x) keeps the N = 0 images." if criteria.log1p else
           f"; the {summary['excluded_n0_images']} images with N = 0 are left out (log 0 is undefined)."
           if summary["excluded_n0_images"] else "; the set has no image with N = 0."),
        f"* Standard errors: classical OLS (n - 3 degrees of freedom). Confidence intervals: 2.5 and 97.5 "
        f"percentiles of {bootstrap} row bootstraps (seed {seed})." if bootstrap
        else "* No bootstrap was run (--bootstrap 0).",
        f"* Criteria (Stoianov & Zorzi 2012): numerosity unit R^2 >= {criteria.r2_min} and |beta_A| < "
        f"{criteria.beta_max}; area unit R^2 >= {criteria.r2_min} and |beta_N| < {criteria.beta_max}"
        + (" (the paper's loosened threshold; --r2-min 0.1 gives Stoianov & Zorzi's)." if criteria.r2_min == 0.05
           else "."), "",
        "## Units found (Stoianov & Zorzi regression, Eq. 3)", "",
        f"Numerosity units: {', '.join(f'z{d}' for d in summary['numerosity_units']) or 'none'}. "
        f"Area units: {', '.join(f'z{d}' for d in summary['area_units']) or 'none'}.",
    ]
    if len(summary["area_units"]) > 1:
        signs = ", ".join(f"{dim} {sign}" for dim, sign in summary["area_unit_signs"].items())
        lines.append(f"Signs of beta_A of the area units: {signs} ("
                     + ("opposite signs, as the paper reports" if summary["area_units_of_opposite_sign"]
                        else "all the same sign") + ").")
    lines += ["", header] + [_unit_row(run, k) for k in found] if found else ["", "No dimension met either criterion."]
    lines += _null_section(run) + _decoding_section(run) + _selectivity_section(run) + _comparison_section(run)
    lines += ["", "## Best-fitting dimensions (Eq. 3)", "", header] + [_unit_row(run, k) for k in units.best[:10]]
    lines += ["", f"For reference, the paper (section 4.4): {PAPER_RESULT}."]
    if summary["set_notes"]:
        lines += ["", "## About the set", ""] + [f"* {note}." for note in summary["set_notes"]]
    lines += ["", "## Figures", ""] + [f"* {name}: `{Path(path).name}`" for name, path in summary["figures"].items()]
    lines += ["", "Every dimension, active or not, is in `dimensions.csv`; the posterior means in `latents.npz`."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ several runs

RUN_COLUMNS = ("active_dims", "numerosity_units", "area_units", "best_r2", "p_best_numerosity_unit_r2",
               "p_best_area_unit_r2", "p_best_r2", "selective_units", "p_selective_units", "decoding_r2_log_n",
               "decoding_r2_log_a", "weber_fraction", "weber_fraction_at_fixed_cues", "area_bias", "field_area_bias")


RUN_FILES = ("summary.json", "report.md", "dimensions.csv", "latents.npz")  # besides the figures it lists
RUNS_FILES = ("summary.json", "report.md", "runs.csv", "runs.png")


def earlier_run_folders(summary, out: Path) -> list[str]:
    """The run folders in `out` that an earlier summary over several runs lists (its rows' labels), both
    commands' summaries alike; a label that would lead out of `out` (an edited or damaged file) is left out."""
    runs = summary.get("runs") if isinstance(summary, dict) else None
    labels = [str(row.get("label", "")) for row in runs if isinstance(row, dict)] if isinstance(runs, list) else []
    return [label for label in labels if label and "/" not in label and label not in (".", "..")
            and (out / label).is_dir()]


def earlier_outputs(out: Path) -> list[str]:
    """What an earlier analysis wrote into `out`, as its summary.json records it (its files and figures, and with
    several runs those of their folders), as paths relative to `out`: the new analysis replaces them all, so that
    the folder shows one analysis (a figure of the earlier one, such as the profile of a dimension this one does
    not single out, would otherwise stay beside the new ones). Files it did not write are not named."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(summary, dict):
        return []
    names = [f"{label}/{name}" for label in earlier_run_folders(summary, out)  # several runs: a folder each
             for name in earlier_outputs(out / label)]
    figures = summary.get("figures")
    figure_names = [Path(str(path)).name for path in figures.values()] if isinstance(figures, dict) else []
    names += [name for name in {*figure_names, *(RUNS_FILES if "runs" in summary else RUN_FILES)}
              if (out / name).is_file()]
    return sorted(names)


def run_row(summary: dict, run: str) -> dict:
    """One checkpoint's key figures, as a row of the summary over several; `run` names the run it is of."""
    null = summary.get("null") or {}
    decoding = {(d["target"], d["features"]): d["r2"] for d in summary["decoding"]}
    comparison = summary.get("comparison") or {}
    biases = {b["cue"]: b["per_doubling"] for b in comparison.get("cue_biases", [])}
    row = {"label": summary["label"], "run": run, "checkpoint": summary["checkpoint"],
           "model_epoch": summary["model_epoch"],
           "active_dims": summary["active_dims"], "numerosity_units": len(summary["numerosity_units"]),
           "area_units": len(summary["area_units"]), "best_r2": summary["best_dimension"]["r2"],
           "selective_units": len((summary.get("selectivity") or {}).get("selective_units", [])),
           "decoding_r2_log_n": decoding.get(("log N", "all active dimensions")),
           "decoding_r2_log_a": decoding.get(("log A", "all active dimensions")),
           "weber_fraction": comparison.get("weber_fraction"),
           "weber_fraction_at_fixed_cues": comparison.get("weber_fraction_at_fixed_cues"),
           **{f"{cue}_bias": biases.get(name) for cue, name in (("area", "cumulative area"),
                                                                ("field_area", "field area"))},
           "collapsed": "collapsed" in summary}
    for key in ("best_numerosity_unit_r2", "best_area_unit_r2", "best_r2", "selective_units"):
        row[f"p_{key}"] = (null.get("p") or {}).get(key)
    return row


def runs_summary(rows: list[dict], columns=RUN_COLUMNS) -> dict:
    """Mean and standard deviation (ddof 1) over runs of each of these columns, over the runs that have a value
    (vae-subitize's summary uses it too)."""
    stats = {}
    for column in columns:
        values = np.array([r[column] for r in rows if _number(r[column]) is not None], dtype=np.float64)
        if values.size:
            # one run has no spread to show: its sd is undefined, not 0
            stats[column] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1 else None,
                             "runs": int(values.size)}
    return stats


def mean_sd_text(stat: dict, spec: str) -> str:
    """'mean ± sd' over runs, or 'mean (1 run)' where one run has a value."""
    if stat["sd"] is None:
        return f"{stat['mean']:{spec}} ({stat['runs']} run)"
    return f"{stat['mean']:{spec}} ± {stat['sd']:{spec}}"


def _cell(value, column: str) -> str:
    if _number(value) is None:
        return "-"
    return f"{value:.3f}" if column.startswith(("best", "p_", "decoding", "weber")) or column.endswith("_bias") \
        else f"{value:g}"


def runs_markdown(rows: list[dict], stats: dict, data: str) -> str:
    lines = ["# Area versus number over several runs", "", f"Set `{data}`; {len(rows)} runs, each analysed in its "
             "own folder (report.md there). p: random-rotation null; decoding: cross-validated ridge R^2 from all "
             "active dimensions.", "",
             "| run | " + " | ".join(RUN_COLUMNS) + " |", "|---|" + "---|" * len(RUN_COLUMNS)]
    for row in rows:
        lines.append(f"| {row['label']} | " + " | ".join(_cell(row[c], c) for c in RUN_COLUMNS) + " |")
    collapsed = [row["label"] for row in rows if row.get("collapsed")]
    lines.append("| **mean ± sd** | " + " | ".join(
        mean_sd_text(stats[c], ".3g") if c in stats else "-" for c in RUN_COLUMNS) + " |")
    if collapsed:
        others = ", and the means of those are over the other runs" if len(collapsed) < len(rows) else ""
        lines += ["", f"No active latent dimension in {', '.join(collapsed)}: a collapsed code, counted as 0 units; "
                  f"it has no R^2, p or decoding{others}."]
    lines += ["", f"For reference, the paper (section 4.4): {PAPER_RESULT}.", "", "Figure: `runs.png`."]
    return "\n".join(lines) + "\n"


def epochs_summary(rows: list[dict], columns=RUN_COLUMNS) -> dict:
    """The course of training (checkpoints of runs at several epochs): each run's epochs, and per epoch the mean
    and sd over the runs that have it of each of these columns (`runs_summary`; vae-subitize's summary uses it
    too)."""
    runs: dict[str, list[int]] = {}
    for row in rows:
        runs.setdefault(row["run"], []).append(row["model_epoch"])
    epochs = sorted({row["model_epoch"] for row in rows})
    return {"runs": {name: sorted(found) for name, found in runs.items()},
            "by_epoch": {str(epoch): runs_summary([row for row in rows if row["model_epoch"] == epoch], columns)
                         for epoch in epochs}}


def shared_epochs(course: dict) -> dict:
    """The epochs of `epochs_summary` that several runs have, with their mean and sd over those runs."""
    return {epoch: stats for epoch, stats in course["by_epoch"].items()
            if max((stat["runs"] for stat in stats.values()), default=0) > 1}


def by_run_and_epoch(rows: list[dict], course: dict) -> list[dict]:
    """The rows of a course of training (`epochs_summary`), run by run in the order given, each by epoch."""
    return sorted(rows, key=lambda row: (list(course["runs"]).index(row["run"]), row["model_epoch"]))


def epochs_markdown(rows: list[dict], course: dict, data: str) -> str:
    """report.md over the course of training: a row per checkpoint, in each run's order of epochs, and the mean
    ± sd over runs of each epoch that several runs have."""
    ordered = by_run_and_epoch(rows, course)
    runs = ", ".join(f"{name} (epochs {', '.join(map(str, epochs))})" for name, epochs in course["runs"].items())
    lines = ["# Area versus number over the course of training", "",
             f"Set `{data}`; {len(rows)} checkpoints of {len(course['runs'])} run(s): {runs}. Each is analysed in its "
             "own folder (report.md there); epoch 0 is the untrained model (vae-train --save-every keeps it). "
             "p: random-rotation null of that checkpoint's code; decoding: cross-validated ridge R^2 from all active "
             "dimensions.", "",
             "| run | epoch | " + " | ".join(RUN_COLUMNS) + " |", "|---|---|" + "---|" * len(RUN_COLUMNS)]
    lines += [f"| {row['run']} | {row['model_epoch']} | " + " | ".join(_cell(row[c], c) for c in RUN_COLUMNS) + " |"
              for row in ordered]
    shared = shared_epochs(course)
    if shared:
        lines += ["", "Mean ± sd over the runs that have the epoch:", "",
                  "| epoch | " + " | ".join(RUN_COLUMNS) + " |", "|---|" + "---|" * len(RUN_COLUMNS)]
        lines += [f"| {epoch} | " + " | ".join(mean_sd_text(stats[c], ".3g") if c in stats else "-"
                                                for c in RUN_COLUMNS) + " |" for epoch, stats in shared.items()]
    lines += ["", f"For reference, the paper (section 4.4, after training): {PAPER_RESULT}.", "",
              "Figure: `runs.png`, the statistics against the epoch."]
    return "\n".join(lines) + "\n"


def write_runs_csv(path: Path, rows: list[dict]) -> None:
    write_csv(path, list(rows[0].keys()), finite(rows))


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Rows as a CSV file, written atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue().encode())
