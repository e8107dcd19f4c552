"""Latent arithmetic on a trained face VAE (Toledo & Antonelo, ENIAC 2021, section on attribute vectors;
White 2016, "Sampling Generative Networks"): attribute vectors, edits, spectra, interpolation, and the
entanglement that correlated training data leaves in them.

An attribute vector is the difference of class means of the encoder's mu (the poster used 10k positive
and 10k negative CelebA faces):

    v_a = mean{ mu(x) : a(x) = 1 } - mean{ mu(x) : a(x) = 0 }

and an edit decodes mu(x) + s v_a with a scale s in [-2, 2]. Because attributes co-occur in the data
(Blond_Hair with Eyeglasses in CelebA and, on purpose, in SynthFaces), v_a also carries the attributes
correlated with a. Conditional manipulation removes that part: project v_a off the vectors of the
attributes it must not change,

    v_a' = v_a - V (V^T V)^-1 V^T v_a,   V = [v_b, v_c, ...]

so that the edit is orthogonal to every direction in V (InterFaceGAN's conditional manipulation, Shen
et al. 2020). Those v_b are contaminated by a in turn, so the projection also removes some of a's own
direction and can overshoot (a little "anti-b"); the stratified vector, the difference of means within
groups of faces that agree on the held attributes, removes the correlation at its source:

    v_a|B = sum_g w_g (mean{mu : a = 1, g} - mean{mu : a = 0, g}),   g ranges over values of B
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Decode = Callable[[torch.Tensor], torch.Tensor]
Judge = Callable[[torch.Tensor], torch.Tensor]


def attribute_vectors(mu: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """(N, D) latent means and (N, A) 0/1 labels -> (A, D): mean of positives minus mean of negatives.
    An attribute with no positive or no negative example has no direction: that is an error."""
    attrs = attrs.to(mu.dtype if mu.is_floating_point() else torch.float32)
    positives, negatives = attrs.sum(0), (1 - attrs).sum(0)
    empty = torch.nonzero((positives == 0) | (negatives == 0)).flatten().tolist()
    if empty:
        raise ValueError(f"Attribute column(s) {empty} have no positive or no negative example; "
                         "an attribute vector needs both (encode more faces).")
    mean_pos = attrs.T @ mu / positives[:, None]               # (A, D)
    mean_neg = (1 - attrs).T @ mu / negatives[:, None]
    return mean_pos - mean_neg


def stratified_vector(mu: torch.Tensor, attrs: torch.Tensor, target: int, hold: Sequence[int]) -> torch.Tensor:
    """The attribute vector of column `target` with the columns `hold` held fixed: class-mean differences
    within each group of faces that agree on `hold`, averaged with weights = group size (groups lacking
    either class are skipped)."""
    attrs = attrs.long()
    groups = attrs[:, list(hold)] if hold else torch.zeros(len(attrs), 1, dtype=torch.long)
    total, weight = torch.zeros(mu.shape[1], dtype=mu.dtype), 0
    for key in torch.unique(groups, dim=0):
        members = (groups == key).all(1)
        pos, neg = members & (attrs[:, target] == 1), members & (attrs[:, target] == 0)
        if pos.any() and neg.any():
            total += members.sum() * (mu[pos].mean(0) - mu[neg].mean(0))
            weight += int(members.sum())
    if weight == 0:
        raise ValueError(f"No group of faces agreeing on columns {list(hold)} holds both classes of column {target}.")
    return total / weight


def apply_edit(z: torch.Tensor, vector: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """z (N, D) + scale * vector (D,); `scale` is one number or one per face (N,)."""
    scale = torch.as_tensor(scale, dtype=z.dtype, device=z.device)
    if scale.dim():
        scale = scale.reshape(-1, 1)
    return z + scale * vector


def spectrum(decode: Decode, z: torch.Tensor, vector: torch.Tensor,
             scales: Sequence[float] = (-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2)) -> torch.Tensor:
    """Decoded edits of each face in `z` (N, D) along `vector` at each scale -> (N, S, C, H, W),
    one row per face as in the poster's figure 10."""
    rows = [decode(apply_edit(z, vector, s)) for s in scales]    # S x (N, C, H, W)
    return torch.stack(rows, dim=1)


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Linear interpolation from z0 to z1 (both (D,)) -> (steps, D), ends included."""
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device)[:, None]
    return (1 - t) * z0 + t * z1


def orthogonalise(vector: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Remove from `vector` (D,) its projection on the span of the rows of `others` (K, D)."""
    basis = others.T                                            # (D, K)
    coefficients = torch.linalg.lstsq(basis, vector[:, None]).solution
    return vector - (basis @ coefficients)[:, 0]


@torch.no_grad()
def edit_effects(decode: Decode, judge: Judge, z: torch.Tensor, vector: torch.Tensor, scale: float,
                 batch: int = 256, images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Judged attributes (0/1, (N, A)) of the decoded faces before and after adding `scale * vector`.
    With `images` (N, C, H, W), `decode` is called as decode(z, images) on matching chunks, so a model
    with a mask decoder can paste its prediction onto each face (`faceedu.editing.decoder`)."""
    before, after = [], []
    parts = images.split(batch) if images is not None else [None] * len(z.split(batch))
    for chunk, context in zip(z.split(batch), parts):
        show = decode if context is None else (lambda code, context=context: decode(code, context))
        before.append(judge(show(chunk)) > 0.5)
        after.append(judge(show(apply_edit(chunk, vector, scale))) > 0.5)
    return torch.cat(before), torch.cat(after)


@torch.no_grad()
def entanglement_matrix(decode: Decode, judge: Judge, z: torch.Tensor, vectors: torch.Tensor, scale: float,
                        images: torch.Tensor | None = None) -> torch.Tensor:
    """(A_edit, A_judged): entry (i, j) is the fraction of faces whose judged attribute j changes when
    vector i is added at `scale`. The diagonal is the edit's success; off-diagonal is entanglement.
    `images`: as in `edit_effects`."""
    rows = []
    for vector in vectors:
        before, after = edit_effects(decode, judge, z, vector, scale, images=images)
        rows.append((before != after).float().mean(0))
    return torch.stack(rows)
