"""analyze-area-vs-number: latent dimensions that code numerosity but not cumulative area, and the reverse.

Encodes a set built for the purpose (`synthgen build --same-object --max-occlusion 0`, as in the
paper's section 4.4) with a trained VAE (posterior means), drops inactive dimensions, fits Eq. 3
for every dimension (analysis.regression) and applies Stoianov & Zorzi's criteria. Writes
dimensions.csv, summary.json, report.md and the figures to the output folder.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from analysis.config import AnalysisConfig
from analysis.encode import encode_set, load_encoder
from analysis.figures import beta_scatter, response_profile, traversal_grid
from analysis.regression import AREA, NUMEROSITY, bootstrap_betas, classify, fit_eq3, make_predictors
from common.cli import resolve_device
from common.errors import UserError
from common.settings import to_dict
from synthgen import ShardSet
from vae.augment import to_float
from vae.plots import reconstruction_grid

PAPER_RESULT = ("one or two recurring dimensions responded to A or N with R^2 > 0.06 +- 0.02; when several area "
                "units were found, their signs were opposite")


def _set_notes(shards: ShardSet) -> list[str]:
    """How far the set is from the paper's analysis set (same object, no overlap, counts 0..4)."""
    config = shards.manifest.get("config", {})
    notes = []
    if not config.get("same_object"):
        notes.append("the set was not built with --same-object: objects differ within an image")
    if config.get("max_occlusion", 0) > 0:
        notes.append(f"objects may overlap (--max-occlusion {config.get('max_occlusion')}); the paper used none")
    return notes


def find_units(means: np.ndarray, count: np.ndarray, area: np.ndarray, config: AnalysisConfig) -> dict:
    """The analysis proper, from posterior means to units: drop inactive dimensions, fit Eq. 3 to the
    rest, bootstrap the betas, apply the criteria. Returns every intermediate result by name."""
    variance = means.var(axis=0)
    active = variance >= config.active_threshold
    if not active.any():
        raise UserError(f"--checkpoint: no active latent dimension (variance of the posterior mean over the set >= "
                        f"--active-threshold {config.active_threshold}): the model codes nothing that varies here")
    dims = np.flatnonzero(active)
    predictors = make_predictors(count, area, config.log1p)
    z = means[predictors.used][:, active]
    fit = fit_eq3(z, predictors.x)
    labels = classify(fit, config.r2_min, config.beta_max)
    if config.bootstrap > 0:
        ci = np.percentile(bootstrap_betas(z, predictors.x, config.bootstrap, config.seed), [2.5, 97.5], axis=0)
    else:
        ci = np.full((2, 2, dims.size), np.nan)  # low/high x beta_N/beta_A x dimensions
    units = {kind: [int(dims[k]) for k in np.flatnonzero(labels == kind)] for kind in (NUMEROSITY, AREA)}
    return {"variance": variance, "active": active, "dims": dims, "predictors": predictors, "fit": fit,
            "labels": labels, "ci": ci, "units": units}


def analyse(config: AnalysisConfig, log=print) -> dict:
    out = Path(config.out)
    device = resolve_device(config.runtime.device)
    model, meta = load_encoder(config.checkpoint, device)
    shards = ShardSet(config.data, verify=config.runtime.verify_shards, progress=config.runtime.progress,
                      option="--data")
    if shards.kind == "natural":
        raise UserError(f"--data {config.data}: a natural set has no areas; give a synthgen build set")
    count = shards.labels["count"].astype(np.int64)
    area = shards.labels["visible_area"].astype(np.float64)
    if np.count_nonzero(count > 0) < 4 or np.unique(count[count > 0]).size < 2:
        raise UserError(f"--data {config.data}: Eq. 3 needs images with at least two different counts N >= 1; "
                        f"this set has counts {sorted(set(count.tolist()))}")
    means = encode_set(model, shards, device, config.batch_size, config.runtime.progress)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "latents.npz", means=means, count=count, area=area)

    found = find_units(means, count, area, config)
    variance, active, dims, predictors, fit, labels, ci = (found[k] for k in (
        "variance", "active", "dims", "predictors", "fit", "labels", "ci"))

    rows = []
    position = {dim: k for k, dim in enumerate(dims)}
    for dim in range(means.shape[1]):
        row = {"dim": dim, "active": bool(active[dim]), "variance": float(variance[dim])}
        if dim in position:
            k = position[dim]
            row.update({"r2": fit.r2[k], "beta_n": fit.beta_n[k], "se_n": fit.se_n[k], "ci_n_low": ci[0, 0, k],
                        "ci_n_high": ci[1, 0, k], "beta_a": fit.beta_a[k], "se_a": fit.se_a[k],
                        "ci_a_low": ci[0, 1, k], "ci_a_high": ci[1, 1, k], "unit": labels[k]})
        rows.append(row)
    with open(out / "dimensions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[position[dims[0]]].keys()))
        writer.writeheader()
        writer.writerows(rows)

    units = found["units"]
    area_signs = {f"z{dims[k]}": ("+" if fit.beta_a[k] > 0 else "-") for k in np.flatnonzero(labels == AREA)}
    figures = _figures(out, model, shards, means, count, area, dims, fit, labels, variance, config, device)
    summary = {
        "checkpoint": str(Path(config.checkpoint).resolve()), "data": str(shards.root),
        "settings": to_dict(config), "n_images": len(shards), "latent": int(means.shape[1]),
        "active_dims": int(active.sum()), "inactive_dims": [int(d) for d in np.flatnonzero(~active)],
        "fit_images": int(predictors.used.sum()), "excluded_n0_images": predictors.excluded_zero,
        "predictors": "standardised log(1 + N), log(1 + A)" if config.log1p else "standardised log N, log A",
        "numerosity_units": units[NUMEROSITY], "area_units": units[AREA], "area_unit_signs": area_signs,
        "area_units_of_opposite_sign": len(set(area_signs.values())) > 1,
        "best_r2": {f"z{dims[k]}": float(fit.r2[k]) for k in np.argsort(-fit.r2)[:10]},
        "set_notes": _set_notes(shards), "figures": figures, "paper": PAPER_RESULT,
        "model_epoch": meta.get("epoch"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    (out / "report.md").write_text(_report(summary, dims, fit, labels, ci, config))
    left_out = (f"; {predictors.excluded_zero} images with N = 0 left out of the fit" if not config.log1p
                else "; log(1 + x) predictors")
    log(f"analyze-area-vs-number: {summary['active_dims']}/{summary['latent']} active dimensions; "
        f"numerosity units {units[NUMEROSITY] or 'none'}, area units {units[AREA] or 'none'} "
        f"(R^2 >= {config.r2_min}, |other beta| < {config.beta_max}){left_out}")
    log(f"  report {out / 'report.md'}; table {out / 'dimensions.csv'}; figures in {out}")
    return summary


def _figures(out, model, shards, means, count, area, dims, fit, labels, variance, config, device) -> dict:
    figures = {"betas": str(out / "betas.png")}
    beta_scatter(dims, fit.beta_n, fit.beta_a, fit.r2, labels, config.r2_min, config.beta_max, figures["betas"])
    selected = [k for k in np.argsort(-fit.r2) if labels[k]]
    if not selected:  # no unit met the criteria: show the best-fitting dimensions instead (and say so)
        selected = list(np.argsort(-fit.r2)[:2])
    for k in selected:
        dim = int(dims[k])
        path = out / f"profile-z{dim}.png"
        response_profile(dim, means[:, dim], count, area, labels[k], fit.r2[k], fit.beta_n[k], fit.beta_a[k], path)
        figures[f"profile_z{dim}"] = str(path)
    rng = np.random.default_rng(config.seed)
    with_objects = np.flatnonzero(count > 0)
    example = int(rng.choice(with_objects)) if with_objects.size else 0
    traversal_dims = [int(dims[k]) for k in selected[:6]]
    figures["traversal"] = str(out / "traversal.png")
    # the posterior means are already known: the figures decode them rather than encode again
    traversal_grid(model, shards.image(example), means[example], traversal_dims, np.sqrt(variance),
                   figures["traversal"], device=device)
    chosen = np.sort(rng.choice(len(shards), min(8, len(shards)), replace=False))
    x = to_float(torch.from_numpy(shards.images(chosen)), model.config.image_size)
    with torch.no_grad():
        x_hat = model.decode(torch.as_tensor(means[chosen], dtype=torch.float32, device=device)).cpu()
    figures["reconstructions"] = str(out / "reconstructions.png")
    reconstruction_grid(x.permute(0, 2, 3, 1).numpy(), x_hat.permute(0, 2, 3, 1).numpy(),
                        figures["reconstructions"], "posterior-mean reconstructions of the analysis set")
    return figures


def _report(summary, dims, fit, labels, ci, config) -> str:
    def unit_row(k):
        return (f"| z{dims[k]} | {labels[k] or '-'} | {fit.r2[k]:.3f} | {fit.beta_n[k]:+.3f} ± {fit.se_n[k]:.3f} "
                f"[{ci[0, 0, k]:+.3f}, {ci[1, 0, k]:+.3f}] | {fit.beta_a[k]:+.3f} ± {fit.se_a[k]:.3f} "
                f"[{ci[0, 1, k]:+.3f}, {ci[1, 1, k]:+.3f}] |")

    header = ("| dimension | unit | R^2 | beta_N ± SE [95% bootstrap CI] | beta_A ± SE [95% bootstrap CI] |\n"
              "|---|---|---|---|---|")
    units = [k for k in np.argsort(-fit.r2) if labels[k]]
    lines = [
        "# Area versus number", "",
        f"Checkpoint `{summary['checkpoint']}` (epoch {summary['model_epoch']}), set `{summary['data']}` "
        f"({summary['n_images']} images).", "",
        "## Method",
        f"* Posterior means of {summary['latent']} latent dimensions; {summary['active_dims']} are active (variance "
        f"of the posterior mean over the set >= {config.active_threshold}); inactive and left out: "
        f"{', '.join(f'z{d}' for d in summary['inactive_dims']) or 'none'}.",
        f"* Eq. 3 fitted by OLS with an intercept for every active dimension: standardised z_i on "
        f"{summary['predictors']}, over {summary['fit_images']} images"
        + (f"; the {summary['excluded_n0_images']} images with N = 0 are left out (log 0 is undefined)."
           if not config.log1p else "; log(1 + x) keeps the N = 0 images."),
        f"* Standard errors: classical OLS (n - 3 degrees of freedom). Confidence intervals: 2.5 and 97.5 "
        f"percentiles of {config.bootstrap} row bootstraps (seed {config.seed})." if config.bootstrap
        else "* No bootstrap was run (--bootstrap 0).",
        f"* Criteria (Stoianov & Zorzi 2012): numerosity unit R^2 >= {config.r2_min} and |beta_A| < "
        f"{config.beta_max}; area unit R^2 >= {config.r2_min} and |beta_N| < {config.beta_max}"
        + (" (the paper's loosened threshold; --r2-min 0.1 gives Stoianov & Zorzi's)." if config.r2_min == 0.05
           else "."), "",
        "## Units found", "",
        f"Numerosity units: {', '.join(f'z{d}' for d in summary['numerosity_units']) or 'none'}. "
        f"Area units: {', '.join(f'z{d}' for d in summary['area_units']) or 'none'}.",
    ]
    if len(summary["area_units"]) > 1:
        signs = ", ".join(f"{dim} {sign}" for dim, sign in summary["area_unit_signs"].items())
        lines.append(f"Signs of beta_A of the area units: {signs} ("
                     + ("opposite signs, as the paper reports" if summary["area_units_of_opposite_sign"]
                        else "all the same sign") + ").")
    lines += ["", header] + [unit_row(k) for k in units] if units else ["", "No dimension met either criterion."]
    lines += ["", "## Best-fitting dimensions", "", header] + [unit_row(k) for k in np.argsort(-fit.r2)[:10]]
    lines += ["", f"For reference, the paper (section 4.4): {PAPER_RESULT}."]
    if summary["set_notes"]:
        lines += ["", "## About the set", ""] + [f"* {note}." for note in summary["set_notes"]]
    lines += ["", "## Figures", ""] + [f"* {name}: `{Path(path).name}`" for name, path in summary["figures"].items()]
    lines += ["", "Every dimension, active or not, is in `dimensions.csv`; the posterior means in `latents.npz`."]
    return "\n".join(lines) + "\n"
