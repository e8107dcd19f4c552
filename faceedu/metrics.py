"""How good is an image, and did an edit work? The numbers every lesson reports.

Image fidelity (per image, then averaged; each whole-image and masked to the face):
  SSIM, MS-SSIM (Wang et al. 2004, 2003), PSNR, l1 (MAE), l2 (MSE). The SSIM window is the one in
  `faceedu.losses` (Gaussian 11, sigma 1.5: scikit-image's `gaussian_weights=True`). Masked variants average
  only over pixels (or SSIM windows centred) on the mask.
Edits, refereed by the judges (`faceedu.models.judges`):
  edit success rate      the target attribute reads as asked after the edit (per the attribute judge);
  attribute preservation the other attributes read as they did before the edit;
  identity similarity    cosine of the identity judge's embeddings before and after, and how often it
                         clears the judge's same-person threshold;
  expression transfer    translated faces read as the target expression (per the expression judge).
Generated faces, for every generative lesson (04, 05, 06, 08):
  Fréchet distance       between Gaussians fitted to the attribute judge's penultimate features of real and
                         generated faces (the formula of FID, Heusel et al. 2017, but NOT FID: no Inception
                         network here, so its values are not comparable with published FIDs), always
                         reported beside its floor, the distance between two halves of the real faces;
  diversity              mean pairwise distance of generated faces in the same feature space, against the
                         real faces' (mode collapse drives it towards 0);
  density, coverage      how many real neighbourhoods hold generated faces, and how many real faces have a
                         generated one in their neighbourhood (Naeem et al. 2020): fidelity and diversity
                         apart, where the diversity ratio mixes them; beside them, two halves of the real faces.
`faceedu eval judges` prints the judges' own test-split figures; every result is a dict that
`format_table` prints and `json.dumps` writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, fine to coarse


# --- SSIM: the losses' implementation when it is there -------------------------------------------------

def _ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5):
    """(SSIM map, contrast-structure map), each (B, C, H - w + 1, W - w + 1), data range 1."""
    try:
        from faceedu.losses import ssim_map
    except ImportError:  # faceedu.losses not there yet: the same equations, written out
        ssim_map = None
    if ssim_map is not None:
        return ssim_map(x, y, 1.0, window_size, sigma, return_cs=True)
    r = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).to(x)
    weight = torch.outer(g, g)[None, None].expand(x.shape[1], 1, window_size, window_size)
    blur = lambda t: F.conv2d(t, weight, groups=x.shape[1])  # noqa: E731
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    return (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1) * cs, cs


def _window_mask(mask: torch.Tensor, window_size: int) -> torch.Tensor:
    pad = (window_size - 1) // 2
    return mask[..., pad:mask.shape[-2] - pad, pad:mask.shape[-1] - pad]


def _per_image_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over (C, H, W) per image, or over the pixels where `mask` (B, 1, H, W) is on."""
    if mask is None:
        return values.flatten(1).mean(1)
    weights = mask.expand_as(values)
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-8)


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, window_size: int = 11) -> torch.Tensor:
    """Per-image SSIM (B,), images in [0, 1]; with a mask, over the windows centred on it."""
    s, _ = _ssim_map(x, y, window_size)
    return _per_image_mean(s, None if mask is None else _window_mask(mask, window_size))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, window_size: int = 11) -> torch.Tensor:
    """Per-image MS-SSIM (B,). 64x64 faces fit only the first three scales of the 11-pixel window; as in
    `faceedu.losses.ms_ssim`, the weights of the scales used are renormalised. With a mask, each scale
    averages over windows centred on the mask (average-pooled with the image)."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(x.shape[-2:]) // 2 ** scales >= window_size:
        scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype)
    weights = weights / weights.sum()
    result = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for j in range(scales):
        s, cs = _ssim_map(x, y, window_size)
        term = s if j == scales - 1 else cs
        value = _per_image_mean(term, None if mask is None else _window_mask(mask, window_size)).clamp_min(0)
        result = result * value ** weights[j]
        if j < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
            mask = None if mask is None else F.avg_pool2d(mask, 2)
    return result


def l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _per_image_mean((x - y).abs(), mask)


def l2(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _per_image_mean((x - y) ** 2, mask)


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB for data range 1 (capped at 100 dB for identical images)."""
    return (10 * torch.log10(1 / l2(x, y, mask).clamp_min(1e-10))).clamp_max(100)


IMAGE_METRICS = {"ssim": ssim, "ms_ssim": ms_ssim, "psnr": psnr, "l1": l1, "l2": l2}


@torch.no_grad()
def image_metrics(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """Mean of every image metric over the batch, whole-image and (with `mask`) masked: {"ssim": ..., "ssim_masked": ...}."""
    x, y = x.float(), y.float()
    out = {name: float(fn(x, y).mean()) for name, fn in IMAGE_METRICS.items()}
    if mask is not None:
        out |= {f"{name}_masked": float(fn(x, y, mask.float()).mean()) for name, fn in IMAGE_METRICS.items()}
    return out


# --- edits, refereed by the judges ----------------------------------------------------------------------

@torch.no_grad()
def _predict_attributes(judge, images: torch.Tensor) -> torch.Tensor:
    device = next(judge.parameters()).device
    return torch.cat([judge.predict(images[i:i + 500].to(device)).cpu() for i in range(0, len(images), 500)])


def edit_success_rate(judge, edited: torch.Tensor, attribute: str, target: float | torch.Tensor = 1.0) -> float:
    """Share of edited images in which the attribute judge reads `attribute` as `target` (0/1, or one per image)."""
    predicted = _predict_attributes(judge, edited)[:, judge.index(attribute)]
    target = torch.as_tensor(target, dtype=predicted.dtype).expand_as(predicted)
    return float((predicted == target).float().mean())


def attribute_preservation(judge, original: torch.Tensor, edited: torch.Tensor,
                           changed: Sequence[str] = ()) -> dict[str, Any]:
    """How often each attribute not in `changed` reads the same after the edit as before: the mean and per attribute."""
    before, after = _predict_attributes(judge, original), _predict_attributes(judge, edited)
    kept = [(i, name) for i, name in enumerate(judge.attributes) if name not in set(changed)]
    per = {name: float((before[:, i] == after[:, i]).float().mean()) for i, name in kept}
    return {"mean": sum(per.values()) / max(1, len(per)), "per_attribute": per}


@torch.no_grad()
def identity_similarity(judge, original: torch.Tensor, edited: torch.Tensor) -> dict[str, float]:
    """Mean cosine between the identity embeddings before and after, and the share above the same-person threshold."""
    device = next(judge.parameters()).device
    cos = torch.cat([judge.similarity(original[i:i + 500].to(device), edited[i:i + 500].to(device)).cpu()
                     for i in range(0, len(original), 500)])
    return {"mean_cosine": float(cos.mean()), "same_person_rate": float((cos > judge.threshold).float().mean()),
            "threshold": judge.threshold}


@torch.no_grad()
def identity_retrieval(embed, original: torch.Tensor, edited: torch.Tensor, metric: str = "cosine") -> dict[str, float]:
    """Threshold-free identity preservation: for each edited face, the rank of its own original among all
    the originals (1 = it is the closest), and its distance relative to the median distance to the other
    originals (< 1: closer to itself than to others). `embed` maps images to (N, D): the identity judge
    (metric "cosine") or dlib's descriptors (`DlibFaces().embed`, metric "euclidean")."""
    a, b = embed(original).float(), embed(edited).float()
    if metric == "cosine":
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        distance = 1 - b @ a.t()  # (N edited, N originals)
    else:
        distance = torch.cdist(b, a)
    own = distance.diagonal()
    rank = (distance < own[:, None]).sum(1) + 1
    others = distance.masked_fill(torch.eye(len(a), dtype=torch.bool), float("nan"))
    relative = own / others.nanmedian(dim=1).values.clamp_min(1e-8)
    return {"top1": float((rank == 1).float().mean()), "mean_rank": float(rank.float().mean()),
            "relative_distance": float(relative.mean()), "candidates": len(a)}


@torch.no_grad()
def expression_transfer_rate(judge, translated: torch.Tensor, target: str | torch.Tensor) -> float:
    """Share of translated faces that the expression judge reads as `target` (a code like "HA", or indices)."""
    device = next(judge.parameters()).device
    predicted = torch.cat([judge.predict(translated[i:i + 500].to(device)).cpu() for i in range(0, len(translated), 500)])
    if isinstance(target, str):
        target = torch.full_like(predicted, judge.expressions.index(target))
    return float((predicted == target).float().mean())


def attribute_rate(judge, images: torch.Tensor, attribute: str, present: bool = True) -> float:
    """Share of `images` that the attribute judge reads as having `attribute` (or, `present=False`, lacking it)."""
    device, column = next(judge.parameters()).device, judge.index(attribute)
    seen = torch.cat([judge.predict(images[i:i + 500].to(device))[:, column].cpu() for i in range(0, len(images), 500)])
    return float((seen.bool() == present).float().mean())


def edit_report(judges, original: torch.Tensor, edited: torch.Tensor, attribute: str, target: float | torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Everything about one attribute edit: success, preservation, identity, and the image metrics before vs after."""
    report = {"attribute": attribute, "images": len(original),
              "edit_success_rate": edit_success_rate(judges.attributes, edited, attribute, target),
              "attribute_preservation": attribute_preservation(judges.attributes, original, edited, [attribute])["mean"]}
    if judges.identity is not None:
        report |= {f"identity_{k}": v for k, v in identity_similarity(judges.identity, original, edited).items()}
    return report | image_metrics(original, edited, mask)


# --- generated faces: Fréchet distance and diversity in judge feature space ----------------------------

@torch.no_grad()
def judge_features(judge, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """(N, D) float64: the judge's penultimate features (its backbone's pooled output) of images in [0, 1]."""
    from faceedu.models.judges import prepare

    device = next(judge.parameters()).device
    was_training = judge.training
    judge.eval()
    try:
        return torch.cat([judge.backbone(prepare(images[i:i + batch].to(device), judge.channels)).double().cpu()
                          for i in range(0, len(images), batch)])
    finally:
        judge.train(was_training)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D) (Dowson & Landau 1982):

    .. math:: d^2 = \lVert\mu_a - \mu_b\rVert^2 + \operatorname{Tr}\big(\Sigma_a + \Sigma_b - 2(\Sigma_a\Sigma_b)^{1/2}\big)

    The trace of the matrix square root is computed as the sum of the square roots of the eigenvalues of
    the symmetric :math:`\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}`, which has the same spectrum and is stable."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (N, D) feature sets of the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise ValueError("a Fréchet distance needs at least 2 samples in each set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.t()), torch.cov(b.t())
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.t()
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def mean_pairwise_distance(features: torch.Tensor, max_items: int = 2000) -> float:
    """Mean Euclidean distance between distinct rows of (N, D) features (the first `max_items`)."""
    f = features[:max_items].double()
    n = len(f)
    if n < 2:
        raise ValueError("the diversity of fewer than 2 samples is undefined")
    return float(torch.cdist(f, f).sum() / (n * (n - 1)))


MANIFOLD_K = 5


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = MANIFOLD_K) -> dict[str, float]:
    r"""Density and coverage of fake features (M, D) against real ones (N, D) (Naeem, Oh, Uh, Choi & Yoo 2020,
    *Reliable fidelity and diversity metrics for generative models*, eq. 3-4; k = 5 as they recommend). Each
    real feature's neighbourhood is the ball out to its k-th nearest real neighbour:

    .. math:: \text{density} = \frac{1}{kM}\sum_j \sum_i 1[Y_j \in B(X_i)], \qquad
              \text{coverage} = \frac{1}{N}\sum_i 1[\exists j: Y_j \in B(X_i)]

    Density (fidelity: about 1 for fakes drawn like the real ones, above 1 when they crowd dense regions)
    counts the balls each fake falls in; coverage (diversity, at most 1) is the share of real balls that hold
    a fake. A generator that draws a few good faces has high density and low coverage, one whose faces are
    spread but off the data the reverse; the diversity ratio cannot tell the two apart."""
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected two (N, D) feature sets of the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) <= k:
        raise ValueError(f"density and coverage with k = {k} need more than {k} real samples, got {len(real)}")
    real, fake = real.double(), fake.double()
    radii = torch.cdist(real, real).kthvalue(k + 1, dim=1).values        # k-th neighbour; the first is itself
    inside = torch.cdist(real, fake) < radii[:, None]                      # (N, M): fake j in real ball i
    return {"density": float(inside.sum() / (k * len(fake))), "coverage": float(inside.any(1).float().mean())}


def generation_report(judge, real: torch.Tensor, generated: torch.Tensor) -> dict[str, float]:
    """Fréchet distance, diversity, density and coverage of generated faces against real ones, each with
    what real faces score.

    The real faces are split into two halves A and B: the floor is FD(A, B) and the score FD(A, G) with G
    cut to B's size, so both distances come from equally many samples (the estimate is biased by N); density
    and coverage of G against A likewise sit beside those of B against A (`density_real`, `coverage_real`;
    None when A has no more than MANIFOLD_K faces)."""
    fr, fg = judge_features(judge, real), judge_features(judge, generated)
    half = len(fr) // 2
    first, second = fr[:half], fr[half:2 * half]
    real_diversity = mean_pairwise_distance(fr)
    diversity = mean_pairwise_distance(fg)
    if half > MANIFOLD_K:
        manifold, manifold_real = density_coverage(first, fg[:len(second)]), density_coverage(first, second)
    else:                                                                 # too few real faces for k neighbours
        manifold = manifold_real = {"density": None, "coverage": None}
    return {"frechet": frechet_distance(first, fg[:len(second)]), "frechet_floor": frechet_distance(first, second),
            "diversity": diversity, "real_diversity": real_diversity, "diversity_ratio": diversity / real_diversity,
            **manifold, "density_real": manifold_real["density"], "coverage_real": manifold_real["coverage"],
            "real": len(fr), "generated": len(fg)}


# --- printing -------------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]] | dict[str, Any], columns: Sequence[str] | None = None) -> str:
    """A readable fixed-width table: one row per dict (a single dict: two columns, name and value)."""
    if isinstance(rows, dict):
        rows = [{"metric": k, "value": v} for k, v in rows.items() if not isinstance(v, (dict, list))]
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(r[i].replace(",", "").replace(".", "").replace("-", "").replace("%", "").isdigit() or r[i] == "-"
                   for r in cells if r[i]) for i in range(len(columns))]
    line = lambda values: "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


# --- `faceedu eval` -------------------------------------------------------------------------------------

def evaluate_judges(root: Path | str, weights: Path | str | None = None, limit: int | None = None) -> dict[str, Any]:
    """The shipped (or given) judges on the test splits under `root`: attribute accuracy (mean and per
    attribute, each beside its majority baseline), expression accuracy on unseen subjects, identity
    verification on unseen identities. Also what each judge was trained on ("judges") and, where that is
    another kind of faces than `root` holds, a warning ("warnings"); a judge whose data is not under `root`
    (no JAFFE folder, no identity file) is listed in "skipped" with the reason."""
    from faceedu.data.layout import DatasetError
    from faceedu.models.judges import (
        attribute_accuracy, dataset_kind, describe, expression_accuracy, holds, identity_verification, judges_for,
        trained_on,
    )
    from faceedu.data.referees import face_split, identity_faces, jaffe_split

    judges = judges_for(root, weights, verbose=False)
    results: dict[str, Any] = {"data": {"root": str(Path(root).expanduser().resolve()),
                                        "faces": dataset_kind(root, "celeba") if holds(root, "celeba") else "none",
                                        "expressions": dataset_kind(root, "jaffe") if holds(root, "jaffe") else "none"},
                               "judges": {k: describe(j) for k in ("attributes", "expression", "identity")
                                          if (j := getattr(judges, k)) is not None},
                               "warnings": list(judges.warnings), "skipped": {}}
    if judges.attributes is not None or judges.identity is not None:
        try:
            images, attr, identity, names = face_split(root, "test", None, limit=limit)
        except (DatasetError, FileNotFoundError) as error:
            images = None
            for kind in ("attributes", "identity"):
                if getattr(judges, kind) is not None:
                    results["skipped"][kind] = f"no CelebA-layout test split under {root}: {str(error).splitlines()[0]}"
        if images is not None and judges.attributes is not None:
            known = [n for n in judges.attributes.attributes if n in names]
            columns = [names.index(n) for n in known]
            results["attributes"] = attribute_accuracy(judges.attributes, images, attr[:, columns], known)
        if images is not None and judges.identity is not None and trained_on(judges.identity).get("dataset") != "jaffe":
            if identity is None:
                results["skipped"]["identity"] = f"no identity file ({'identity_CelebA.txt'}) under {root}"
            else:
                results["identity"] = identity_verification(judges.identity, images, identity)
    if judges.identity is not None and trained_on(judges.identity).get("dataset") == "jaffe":
        results["skipped"].pop("identity", None)
        try:  # calibrated on JAFFE's training subjects: verified on its test subjects
            images, person = identity_faces(root, "jaffe", "test")
        except (DatasetError, FileNotFoundError) as error:
            results["skipped"]["identity"] = f"no JAFFE folder under {root}: {str(error).splitlines()[0]}"
        else:
            results["identity"] = identity_verification(judges.identity, images, person, pairs=1000)
    if judges.expression is not None:
        try:
            images, labels, codes = jaffe_split(root, "test")
        except (DatasetError, FileNotFoundError) as error:
            results["skipped"]["expression"] = f"no JAFFE folder under {root}: {str(error).splitlines()[0]}"
        else:
            results["expression"] = expression_accuracy(judges.expression, images, labels, codes)
    return results


def judges_table(results: dict[str, Any]) -> str:
    """What the judges were trained on, the headline figure of each beside its majority baseline, then
    per-attribute accuracy next to each attribute's positive rate and majority baseline."""
    rows = []
    if "attributes" in results:
        r = results["attributes"]
        rows.append({"judge": "attributes", "figure": "mean attribute accuracy", "value": r["mean_accuracy"],
                     "majority baseline": r.get("mean_majority_baseline", math.nan)})
    if "expression" in results:
        rows.append({"judge": "expression", "figure": "accuracy, unseen subjects", "value": results["expression"]["accuracy"],
                     "majority baseline": results["expression"].get("majority_baseline", math.nan)})
    if "identity" in results:
        rows.append({"judge": "identity", "figure": "verification accuracy, unseen identities",
                     "value": results["identity"]["verification_accuracy"], "majority baseline": 0.5})
    lines = []
    if "data" in results:
        lines.append(f"Data: {results['data']['root']} (faces: {results['data']['faces']}, "
                     f"expressions: {results['data']['expressions']})")
    lines += [f"  {line}" for line in results.get("judges", {}).values()]
    lines += results.get("warnings", [])
    lines += [f"skipped the {kind} judge: {why}" for kind, why in results.get("skipped", {}).items()]
    text = "\n".join(lines) + ("\n\n" if lines else "") + (format_table(rows) if rows else "no judge could be evaluated")
    if "attributes" in results:
        r = results["attributes"]
        per, rate, base = r["per_attribute"], r["positive_rate"], r.get("majority_baseline", {})
        text += "\n\n" + format_table([{"attribute": n, "accuracy": a, "majority baseline": base.get(n, math.nan),
                                          "above baseline": "yes" if a > base.get(n, 1.0) else "no",
                                          "positive rate": rate[n]} for n, a in per.items()])
        if "above_baseline" in r:
            text += f"\n{r['above_baseline']} of {r['attributes']} attributes above their majority baseline"
    if "expression" in results:
        text += "\n\n" + format_table([{"expression": e, "accuracy": a} for e, a in results["expression"]["per_expression"].items()])
    return text


def judges_markdown(results: dict[str, Any]) -> str:
    """The same figures as markdown tables, for the docs: which judges, trained on what, judged on what."""
    lines = []
    if "data" in results:
        lines += [f"Judged on `{results['data']['root']}` (faces: {results['data']['faces']}, expressions: "
                  f"{results['data']['expressions']}). The judges:", ""]
        lines += [f"- {line}" for line in results.get("judges", {}).values()]
        lines += [f"- **{w.splitlines()[0]}**" for w in results.get("warnings", [])]
        lines += [f"- skipped the {kind} judge: {why}" for kind, why in results.get("skipped", {}).items()]
        lines.append("")
    lines += ["| judge | figure | value | majority baseline |", "|---|---|---|---|"]
    if "attributes" in results:
        r = results["attributes"]
        base = f"{r['mean_majority_baseline']:.2%}" if "mean_majority_baseline" in r else "-"
        lines.append(f"| attributes | mean attribute accuracy ({r['images']} test faces) | {r['mean_accuracy']:.2%} | {base} |")
    if "expression" in results:
        r = results["expression"]
        base = f"{r['majority_baseline']:.2%}" if "majority_baseline" in r else "-"
        lines.append(f"| expression | accuracy on unseen subjects ({r['images']} images) | {r['accuracy']:.2%} | {base} |")
    if "identity" in results:
        r = results["identity"]
        lines.append(f"| identity | verification accuracy, {r['pairs']} pairs of {r['identities']} unseen identities "
                     f"(threshold {r['threshold']:.3f} from the validation split) | {r['verification_accuracy']:.2%} | 50.00% |")
    if "attributes" in results:
        r = results["attributes"]
        per, rate, base = r["per_attribute"], r["positive_rate"], r.get("majority_baseline", {})
        lines += ["", "| attribute | accuracy | majority baseline | positive rate |", "|---|---|---|---|"]
        lines += [f"| {n} | {a:.2%} | {base[n]:.2%} | {rate[n]:.1%} |" if n in base else f"| {n} | {a:.2%} | - | {rate[n]:.1%} |"
                  for n, a in per.items()]
        if "above_baseline" in r:
            lines += ["", f"{r['above_baseline']} of {r['attributes']} attributes above their majority baseline "
                          f"(the accuracy of always answering the attribute's commoner value)."]
    if "expression" in results:
        lines += ["", "| expression | " + " | ".join(results["expression"]["per_expression"]) + " |",
                  "|---|" + "---|" * len(results["expression"]["per_expression"]),
                  "| accuracy | " + " | ".join(f"{a:.0%}" for a in results["expression"]["per_expression"].values()) + " |"]
    return "\n".join(lines) + "\n"


def run_eval(args) -> int:
    """`faceedu eval judges`: print the table, optionally write JSON and markdown."""
    judges = getattr(args, "judges", None) or getattr(args, "weights", None)
    limit = getattr(args, "limit", None)
    results = evaluate_judges(args.root, judges) if limit is None else evaluate_judges(args.root, judges, limit=limit)
    print(judges_table(results))
    if getattr(args, "markdown", None):
        Path(args.markdown).write_text(judges_markdown(results))
        print(f"\nWrote {args.markdown}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nWrote {args.json}")
    return 0
