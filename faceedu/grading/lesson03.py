"""Lesson 03 "Latent arithmetic": the reference for each exercise and the checks the notebook calls.

Exercises (one concept each):
  1. ``encode``               - the latent means mu of a set of faces: eval mode, no sampling, no graph, batches
  2. ``attribute_vectors``    - per attribute, mean mu of the faces with it minus mean mu of those without
  3. ``edit_faces``           - mu + scale * v, decoded, pasted onto the face with the *decoded* mask
  4. ``spectrum``             - one face edited at a row of scales, (N, S, C, H, W) (the poster's figure 10)
  5. ``entanglement_matrix``  - what each vector changes, refereed by a judge: share of faces whose judged
                                attribute flips
  6. ``orthogonalise``        - remove from a direction its projection on the span of others (conditional
                                manipulation)

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference (``faceedu.latent`` and
``faceedu.editing``) on fixed and seeded random inputs: a tiny VAE whose BatchNorm and mask decoder make
the usual mistakes visible (train mode, sampled z, logvar, the wrong mask), and a "linear world" decoder
and judge in which the right answer is known exactly. The references are blocked while ``fn`` runs.
"""

from __future__ import annotations

import copy

import torch

from faceedu import editing, latent
from faceedu.editing import edit_faces, encode
from faceedu.grading.core import Check
from faceedu.latent import attribute_vectors, entanglement_matrix, orthogonalise, spectrum
from faceedu.models.vae import FaceVAE, VAEConfig

__all__ = [
    "encode", "attribute_vectors", "edit_faces", "spectrum", "entanglement_matrix", "orthogonalise",
    "check_encode", "check_attribute_vectors", "check_edit_faces", "check_spectrum", "check_entanglement_matrix",
    "check_orthogonalise",
]

REFERENCES = (encode, editing.decode, editing.decoder, edit_faces, editing.LatentSpace.fit,
              editing.LatentSpace.edit, editing.LatentSpace.spectrum, editing.LatentSpace.conditional,
              attribute_vectors, latent.stratified_vector, latent.apply_edit, spectrum, latent.interpolate,
              orthogonalise, latent.edit_effects, entanglement_matrix)

# --- shared inputs ---------------------------------------------------------------------------------------


def tiny_vae(seed: int = 0) -> FaceVAE:
    """A 16x16 VAE with a mask decoder, latent 8, in eval mode, whose BatchNorm running statistics differ
    from any batch's own (so encoding in training mode gives visibly different codes)."""
    torch.manual_seed(seed)
    config = VAEConfig(image_size=16, encoder=((4,), (8,)), dense=16, latent=8, decoder_in=(8, 4),
                       decoder=(8, 4), mask_decoder=(4, 4))
    vae = FaceVAE(config)
    with torch.no_grad():
        vae.train()
        for _ in range(3):
            vae(torch.rand(8, 3, 16, 16) * 0.5)           # running statistics of darker faces than the checks use
        vae.encoder.head.logvar.bias.fill_(-1.0)          # a logvar visibly unlike mu
    return vae.eval()


def _bound(c: Check, vae: FaceVAE, fn) -> Check:
    """A Check that passes `vae` first without snapshotting it (a model is not an input to compare)."""
    return Check(c.exercise, lambda *args, **kwargs: fn(vae, *args, **kwargs), c.hidden, blocked=c.blocked)


def linear_world(c: Check, n: int = 60, dim: int = 6, attributes: int = 4):
    """A decoder that shows the code itself as an image and a judge that reads attribute k as present
    when the code's k-th coordinate exceeds 0.5 (returned as probabilities), and codes in [0, 0.4]: no
    attribute present, every edit measurable exactly."""
    z = torch.rand(n, dim, generator=c.rng) * 0.4

    def decode(code: torch.Tensor) -> torch.Tensor:
        return code.reshape(len(code), 1, 1, dim)                         # (N, 1, 1, D) "images"

    def judge(images: torch.Tensor) -> torch.Tensor:
        values = images.reshape(len(images), dim)[:, :attributes]
        return torch.sigmoid(20 * (values - 0.5))                         # probabilities, 0.5 at the boundary

    return z, decode, judge


# --- checks ------------------------------------------------------------------------------------------


def check_encode(fn, hidden: bool = False) -> None:
    """Visible (a tiny VAE with BatchNorm): (N, latent) codes equal to the encoder's mu in eval mode, for
    N not a multiple of the batch size; not logvar, not a sample, not BatchNorm's training mode; the same
    codes whatever the batch size; no autograd graph. Hidden: one face with batch_size 1, 300 faces, a
    model handed over in training mode."""
    __tracebackhide__ = True
    c = Check("encode", fn, hidden, blocked=REFERENCES)
    vae = tiny_vae()
    bound = _bound(c, vae, fn)
    x = torch.rand(10, 3, 16, 16, generator=c.rng)
    with torch.no_grad():
        mu, logvar = vae.encoder(x)
        train_mu = copy.deepcopy(vae).train().encoder(x)[0]     # a copy: training mode updates BatchNorm's statistics
    batches: list[int] = []   # how many faces each call of the encoder saw
    hook = vae.encoder.register_forward_pre_hook(lambda module, args: batches.append(int(args[0].shape[0])))
    try:
        out = bound.call(x, batch_size=4)
    finally:
        hook.remove()
    if batches and max(batches) > 4:
        c.fail(f"with batch_size=4 the encoder saw {max(batches)} faces at once: cut the images into batches of "
               f"batch_size (images.split(batch_size)) and encode one batch at a time; 24,000 faces at once would "
               f"not fit in memory.")
    c.expect_tensor(out, shape=(10, 8), what="the codes of 10 faces (batch_size=4)",
                    hint="Return one row per face, all batches concatenated (torch.cat), including the last, "
                         "smaller batch.")
    if torch.allclose(out, logvar, atol=1e-5):
        c.fail("you returned logvar, the second output of vae.encoder; the code of a face is mu, the first.")
    if torch.allclose(out, train_mu, atol=1e-4) and not torch.allclose(mu, train_mu, atol=1e-4):
        c.fail("your codes were computed in training mode: BatchNorm then normalises each batch with its own "
               "statistics, so a face's code depends on the faces next to it. Call vae.eval() first.")
    if not torch.allclose(out, mu, atol=1e-4) and not torch.equal(bound.call(x, batch_size=4), out):
        c.fail("two calls on the same faces gave different codes: did you sample z = mu + sigma * eps? An edit "
               "must start from the same point every time: use mu itself.")
    c.expect_close(out, mu, what="the codes", atol=1e-4, hint="mu, logvar = vae.encoder(batch); keep mu.")
    c.expect(not out.requires_grad, "the codes carry an autograd graph: encode under torch.no_grad() (a graph "
                                    "over 24,000 faces would fill your memory).")
    again = bound.call(x, batch_size=3)
    c.expect_close(again, out, what="the codes with batch_size=3", atol=1e-5,
                   hint="A face's code must not depend on how the set is cut into batches.")
    if hidden:
        one = bound.call(x[:1], batch_size=1)
        c.expect_close(one, mu[:1], what="the code of a single face", atol=1e-4,
                       hint="With one face per batch, BatchNorm in training mode fails; eval mode does not.")
        many = torch.rand(300, 3, 16, 16, generator=c.rng)
        with torch.no_grad():
            expected = vae.encoder(many)[0]
        c.expect_close(bound.call(many, batch_size=128), expected, what="the codes of 300 faces", atol=1e-4)
        vae.train()
        try:
            handed = bound.call(x, batch_size=5)
            left_training = vae.training
        finally:
            vae.eval()
        c.expect(left_training, "a model handed over in training mode came back in eval mode: remember "
                                "`was_training = vae.training` first and call `vae.train(was_training)` before "
                                "returning, so that encoding during a training run does not stop it.")
        c.expect_close(handed, mu, what="the codes of a model handed over in training mode", atol=1e-4,
                       hint="Switch to eval mode inside your function: callers may pass a model that was training.")
    c.done()


def check_attribute_vectors(fn, hidden: bool = False) -> None:
    """Visible: a hand-made set (two attributes, known class means), a random (200, 8) set with 3
    attributes against the reference, float 0/1 labels, ValueError when an attribute has no positive or no
    negative face. Hidden: bool and long labels, unbalanced classes (1 positive in 500), float64 codes."""
    __tracebackhide__ = True
    c = Check("attribute_vectors", fn, hidden, blocked=REFERENCES)
    mu = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [2.0, 6.0]])
    attrs = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0], [0, 1]], dtype=torch.float32)
    out = c.call(mu, attrs)
    c.expect_tensor(out, shape=(2, 2), what="the vectors of 2 attributes in a 2-D latent space",
                    hint="One row per attribute (A, D): attrs is (N, A), mu is (N, D).")
    expected = attribute_vectors(mu, attrs)                                   # [[4/3, -4], [7/6, 2/3]]
    if torch.allclose(out, -expected, atol=1e-5):
        c.fail("your vectors point the wrong way: you computed mean(without) - mean(with). Adding v_a should "
               "add the attribute: v_a = mean(mu | a = 1) - mean(mu | a = 0).")
    sums = attrs.T @ mu - (1 - attrs).T @ mu
    if torch.allclose(out, sums, atol=1e-5):
        c.fail("you summed the codes of each class instead of averaging them: divide each sum by the number "
               "of faces in that class (the classes have different sizes).")
    everyone = attrs.T @ mu / attrs.sum(0)[:, None] - mu.mean(0)
    if torch.allclose(out, everyone, atol=1e-5):
        c.fail("you subtracted the mean of all faces; subtract the mean of the faces *without* the attribute.")
    c.expect_close(out, expected, what="the vectors of the hand-made set", atol=1e-5,
                   hint="Attribute 0: faces 0 and 1 have it (mean (2, 0)), faces 2-4 do not (mean (2/3, 4)): "
                        "v_0 = (4/3, -4).")
    g = c.rng
    mu = torch.randn(200, 8, generator=g)
    attrs = (torch.rand(200, 3, generator=g) < torch.tensor([0.5, 0.2, 0.8])).float()
    c.expect_close(c.call(mu, attrs), attribute_vectors(mu, attrs), what="the vectors of a random set", atol=1e-5)
    broken = attrs.clone()
    broken[:, 1] = 0
    c.expect_raises(ValueError, "an attribute that no face has (column 1 all 0) has no mean to subtract: raise "
                                "ValueError instead of returning NaN.", mu, broken)
    if hidden:
        c.expect_close(c.call(mu, attrs.bool()), attribute_vectors(mu, attrs), what="the vectors for bool labels",
                       atol=1e-5, hint="Convert the labels with attrs.float() first.")
        c.expect_close(c.call(mu, attrs.long()), attribute_vectors(mu, attrs), what="the vectors for long labels",
                       atol=1e-5)
        rare = torch.zeros(500, 1)
        rare[7] = 1
        big = torch.randn(500, 4, generator=g)
        c.expect_close(c.call(big, rare), attribute_vectors(big, rare), what="the vector of a rare attribute", atol=1e-5)
        full = attrs.clone()
        full[:, 2] = 1
        c.expect_raises(ValueError, "an attribute that every face has has no negatives: raise ValueError.", mu, full)
        c.expect_close(c.call(mu.double(), attrs), attribute_vectors(mu.double(), attrs.double()),
                       what="the vectors of float64 codes", atol=1e-10)
    c.done()


def check_edit_faces(fn, hidden: bool = False) -> None:
    """Visible (a tiny VAE with a mask decoder): images of the input's shape in [0, 1]; scale 0 gives the
    reconstruction pasted with the predicted mask; scales 1.5 and -1 match the reference (mu + s v, decoded,
    pasted with the decoded mask of the *edited* code); repeatable. Hidden: another vector, one face, a
    model handed over in training mode."""
    __tracebackhide__ = True
    c = Check("edit_faces", fn, hidden, blocked=REFERENCES)
    vae = tiny_vae(1)
    bound = _bound(c, vae, fn)
    x = torch.rand(6, 3, 16, 16, generator=c.rng)
    vector = torch.randn(8, generator=c.rng) * 3
    with torch.no_grad():
        mu = vae.encoder(x)[0]
        pred0, mask0 = vae.decode(mu)
    zero = bound.call(x, vector, 0.0)
    c.expect_tensor(zero, shape=(6, 3, 16, 16), what="the edited faces", hint="Return images like x: (N, 3, H, W).")
    if torch.allclose(zero, pred0, atol=1e-5):
        c.fail("at scale 0 you return the decoder's prediction alone: paste it onto the face with the decoded "
               "mask, out = pred * mask + x * (1 - mask), so the background stays the input's.")
    c.expect_close(zero, pred0 * mask0 + x * (1 - mask0), what="the edit at scale 0 (the reconstruction)", atol=1e-4,
                   hint="Encode with z = mu (eval mode, no sampling), decode image and mask, and paste: "
                        "pred * mask + x * (1 - mask).")
    for scale in (1.5, -1.0):
        out = bound.call(x, vector, scale)
        expected = edit_faces(vae, x, vector, scale)
        with torch.no_grad():
            pred, mask = vae.decode(mu + scale * vector)
            twice = vae.decode(mu + scale * scale * vector)
        if torch.allclose(out, pred * mask0 + x * (1 - mask0), atol=1e-5):
            c.fail(f"at scale {scale:g} you pasted the edited prediction with the mask of the *unedited* code; "
                   f"decode the mask from the edited code too (an edit can change where the hair is).")
        if torch.allclose(out, pred, atol=1e-5):
            c.fail(f"at scale {scale:g} you return the decoder's prediction alone: paste it onto x with the decoded mask.")
        if torch.allclose(out, twice[0] * twice[1] + x * (1 - twice[1]), atol=1e-5):
            c.fail(f"at scale {scale:g} your edit moved scale^2 times the vector: apply the scale once, "
                   f"z = mu + scale * vector.")
        c.expect_close(out, expected, what=f"the edit at scale {scale:g}", atol=1e-4,
                       hint="z = mu + scale * vector; pred, mask = vae.decode(z); out = pred * mask + x * (1 - mask).")
    c.expect(torch.equal(bound.call(x, vector, 1.5), bound.call(x, vector, 1.5)),
             "two identical edits gave different faces: start from mu, do not sample z.")
    if hidden:
        other = torch.randn(8, generator=c.rng)
        c.expect_close(bound.call(x, other, 2.0), edit_faces(vae, x, other, 2.0), what="an edit along another vector",
                       atol=1e-4)
        c.expect_close(bound.call(x[:1], vector, 1.0), edit_faces(vae, x[:1], vector, 1.0), what="the edit of one face",
                       atol=1e-4)
        vae.train()
        try:
            handed = bound.call(x, vector, 1.0)
        finally:
            vae.eval()
        c.expect_close(handed, edit_faces(vae, x, vector, 1.0), what="the edit by a model handed over in training mode",
                       atol=1e-4, hint="Use eval mode: BatchNorm's running statistics, and z = mu.")
    c.done()


def check_spectrum(fn, hidden: bool = False) -> None:
    """Visible (a decoder that shows the code itself): (N, S, C, H, W) with faces along the first axis and
    scales along the second, each entry decode(z + s v) for its own scale (not cumulative), the given
    scales in order. Hidden: the default scales, one face, a scale list with repeats."""
    __tracebackhide__ = True
    c = Check("spectrum", fn, hidden, blocked=REFERENCES)
    z, decode, _ = linear_world(c, n=3, dim=5)
    vector = torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0])
    scales = (-1.0, 0.0, 0.5, 2.0)
    out = c.call(decode, z, vector, scales)
    expected = spectrum(decode, z, vector, scales)                           # (3, 4, 1, 1, 5)
    c.expect_type(out, torch.Tensor, "the spectrum")
    if tuple(out.shape) == (4, 3, 1, 1, 5):
        c.fail("your spectrum has shape (S, N, C, H, W): put faces first and scales second, (N, S, C, H, W), so "
               "that row n is face n's spectrum (torch.stack(rows, dim=1)).")
    c.expect_tensor(out, shape=expected.shape, what="the spectrum of 3 faces at 4 scales",
                    hint="(N, S, C, H, W): one row per face, one column per scale.")
    cumulative = torch.stack([decode(z + torch.tensor(scales[:k + 1]).sum() * vector) for k in range(len(scales))], 1)
    if torch.allclose(out, cumulative, atol=1e-5):
        c.fail("your edits accumulate: each column starts from the previous one. Every column must start from "
               "z itself: decode(z + s * vector) for each s.")
    if torch.allclose(out[:, 1], decode(z), atol=1e-5) and not torch.allclose(out, expected, atol=1e-5):
        c.fail("the column for scale 0 is right but others are not: multiply the vector by each scale s.")
    c.expect_close(out, expected, what="the spectrum", atol=1e-5,
                   hint="For each s in scales: decode(z + s * vector); stack with dim=1.")
    if hidden:
        default = c.call(decode, z, vector)
        c.expect_close(default, spectrum(decode, z, vector), what="the spectrum at the default scales (-2..2 by 0.5)",
                       atol=1e-5)
        c.expect_close(c.call(decode, z[:1], vector, (2.0, 2.0, -2.0)), spectrum(decode, z[:1], vector, (2.0, 2.0, -2.0)),
                       what="one face at scales (2, 2, -2)", atol=1e-5)
    c.done()


def check_entanglement_matrix(fn, hidden: bool = False) -> None:
    """Visible (a linear world: the judge reads attribute k from code coordinate k, 4 attributes, 6-D
    codes): a (K, A) matrix for K vectors and A judged attributes; a clean vector flips only its own
    attribute (1 on the diagonal); a vector that also lowers an attribute counts those changes (changes,
    not presence); thresholds at 0.5. Hidden: a vector that changes only some faces, K = 1, a judge
    whose probabilities sit near 0.5."""
    __tracebackhide__ = True
    c = Check("entanglement_matrix", fn, hidden, blocked=REFERENCES)
    z, decode, judge = linear_world(c)
    z[:10, 3] = 0.9                                            # 10 faces already have attribute 3
    vectors = torch.tensor([[1.0, 0, 0, 0, 0, 0],              # adds attribute 0 only
                            [0, 1.0, 1.0, 0, 0, 0],            # adds attributes 1 and 2 (entangled)
                            [0, 0, 1.0, -1.0, 0, 0]])          # adds 2, removes 3 from the 10 that have it
    scale = 1.0
    out = c.call(decode, judge, z, vectors, scale)
    expected = entanglement_matrix(decode, judge, z, vectors, scale)
    c.expect_type(out, torch.Tensor, "the matrix")
    if tuple(out.shape) == (4, 3):
        c.fail("your matrix is (A, K): rows should be the vectors added (K = 3) and columns the judged attributes "
               "(A = 4), so row i tells what vector i changes.")
    c.expect_tensor(out, shape=(3, 4), what="the matrix for 3 vectors and 4 judged attributes")
    with torch.no_grad():
        before = (judge(decode(z)) > 0.5).float()
        presence = torch.stack([(judge(decode(z + scale * v)) > 0.5).float().mean(0) for v in vectors])
        signed = torch.stack([((judge(decode(z + scale * v)) > 0.5).float() - before).mean(0) for v in vectors])
        soft = torch.stack([(judge(decode(z + scale * v)) - judge(decode(z))).abs().mean(0) for v in vectors])
    if torch.allclose(out, presence, atol=1e-5):
        c.fail("you measured how often each attribute is present after the edit; measure how often it *changes*: "
               "compare the judgements after the edit with those before (on the decoded, unedited codes).")
    if torch.allclose(out, signed, atol=1e-5):
        c.fail("you averaged after - before, so a removal (-1) cancels an addition (+1): count changes, "
               "(after != before).float().mean(0).")
    if torch.allclose(out, soft, atol=1e-4):
        c.fail("you averaged differences of probabilities; the judge says an attribute is present when its "
               "probability is > 0.5: threshold first, then count changes.")
    c.expect_close(out, expected, what="the entanglement matrix", atol=1e-5,
                   hint="Row i: before = judge(decode(z)) > 0.5, after = judge(decode(z + scale * v_i)) > 0.5, "
                        "(before != after).float().mean(0).")
    if hidden:
        partial = torch.zeros(1, 6)
        partial[0, 0] = 0.3                                    # only faces with z_0 > 0.2 cross the threshold
        c.expect_close(c.call(decode, judge, z, partial, 1.0), entanglement_matrix(decode, judge, z, partial, 1.0),
                       what="the matrix of a vector that changes only some faces", atol=1e-5)
        c.expect_close(c.call(decode, judge, z, vectors, -0.5), entanglement_matrix(decode, judge, z, vectors, -0.5),
                       what="the matrix at scale -0.5", atol=1e-5, hint="Use the scale argument.")
    c.done()


def check_orthogonalise(fn, hidden: bool = False) -> None:
    """Visible: against one other direction (the classic projection), against two non-orthogonal ones (the
    result is orthogonal to both and equals the reference: project on their span, not one after the other),
    a vector already orthogonal stays itself, float output (D,). Hidden: 5 directions in 64-D, directions
    of very different lengths, a vector inside the span (result ~0)."""
    __tracebackhide__ = True
    c = Check("orthogonalise", fn, hidden, blocked=REFERENCES)
    v = torch.tensor([3.0, 4.0, 0.0])
    one = torch.tensor([[2.0, 0.0, 0.0]])
    out = c.call(v, one)
    c.expect_tensor(out, shape=(3,), what="the orthogonalised vector", hint="Return a vector like `vector`: (D,).")
    if torch.allclose(out, torch.tensor([-9.0, 4.0, 0.0]), atol=1e-4):
        c.fail("with others = [[2, 0, 0]] you get (-9, 4, 0): you projected on an unnormalised direction. "
               "The projection on u is (v . u / u . u) u - divide by |u|^2, or normalise u first.")
    if torch.allclose(out, torch.tensor([3.0, 0.0, 0.0]), atol=1e-4):
        c.fail("you returned the projection of the vector on the others; return what is left: vector - projection.")
    c.expect_close(out, torch.tensor([0.0, 4.0, 0.0]), what="(3, 4, 0) made orthogonal to (2, 0, 0)", atol=1e-4,
                   hint="v - (v . u / u . u) u.")
    two = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])              # not orthogonal to each other
    w = torch.tensor([2.0, 3.0, 5.0])
    out = c.call(w, two)
    sequential = w - (w @ two[0]) / (two[0] @ two[0]) * two[0]
    sequential = sequential - (sequential @ two[1]) / (two[1] @ two[1]) * two[1]
    if torch.allclose(out, sequential, atol=1e-4):
        c.fail("you projected off each direction in turn; when the directions are not orthogonal to each other "
               "the second step undoes part of the first. Project on their span at once (least squares, or "
               "Gram-Schmidt / QR on the others first).")
    c.expect(float((two @ out).abs().max()) < 1e-4,
             f"the result should be orthogonal to every row of `others`; its dot products are "
             f"{[round(float(d), 4) for d in two @ out]}.")
    c.expect_close(out, orthogonalise(w, two), what="(2, 3, 5) made orthogonal to (1, 0, 0) and (1, 1, 0)", atol=1e-4)
    g = c.rng
    others = torch.randn(2, 6, generator=g)
    free = torch.linalg.svd(others, full_matrices=True).Vh[-1] * 3       # orthogonal to both rows
    c.expect_close(c.call(free, others), free, what="a vector already orthogonal to the others", atol=1e-4,
                   hint="Nothing to remove: the result is the vector itself (its length too).")
    if hidden:
        many = torch.randn(5, 64, generator=g)
        v = torch.randn(64, generator=g)
        c.expect_close(c.call(v, many), orthogonalise(v, many), what="a 64-D vector off 5 directions", atol=1e-4)
        scaled = many * torch.tensor([100.0, 0.01, 1.0, 5.0, 0.2])[:, None]
        c.expect_close(c.call(v, scaled), orthogonalise(v, scaled), what="directions of very different lengths",
                       atol=1e-3, hint="Only the span matters, not the lengths of the directions.")
        inside = many[:2].sum(0)
        c.expect_close(c.call(inside, many), torch.zeros(64), what="a vector inside the span", atol=1e-3)
    c.done()
