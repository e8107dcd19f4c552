"""Image metrics against scikit-image and their defining properties; the edit metrics refereed by the
shipped judges on cases whose answer is known."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from faceedu import metrics


def _pair(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, size, size, generator=g)
    y = (x + 0.1 * torch.randn(3, 3, size, size, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("source", ["losses", "fallback"])
def test_ssim_matches_scikit_image(source, monkeypatch):
    from skimage.metrics import structural_similarity

    if source == "fallback":
        monkeypatch.setitem(sys.modules, "faceedu.losses", None)  # as if faceedu.losses did not exist
    x, y = _pair()
    ours = metrics.ssim(x, y)
    for i in range(len(x)):
        reference = structural_similarity(x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy(), channel_axis=2,
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert abs(float(ours[i]) - reference) < 1e-4


def test_psnr_l1_l2_match_numpy_and_skimage():
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _pair(1)
    for i in range(len(x)):
        assert abs(float(metrics.psnr(x, y)[i]) - peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=1)) < 1e-3
    assert torch.allclose(metrics.l1(x, y), (x - y).abs().mean(dim=(1, 2, 3)))
    assert torch.allclose(metrics.l2(x, y), ((x - y) ** 2).mean(dim=(1, 2, 3)))


def test_identical_images_score_perfectly():
    x, _ = _pair(2)
    scores = metrics.image_metrics(x, x, mask=torch.ones(3, 1, 64, 64))
    for name in ("ssim", "ms_ssim", "ssim_masked", "ms_ssim_masked"):
        assert abs(scores[name] - 1) < 1e-5, name
    assert scores["l1"] == 0 and scores["l2_masked"] == 0 and scores["psnr"] == 100


def test_masked_metrics_ignore_what_lies_outside_the_mask():
    x, _ = _pair(3)
    y = x.clone()
    y[..., :, 40:] = torch.rand_like(y[..., :, 40:])  # damage only the right part
    mask = torch.zeros(3, 1, 64, 64)
    mask[..., :, :24] = 1  # a face on the left, further than half an SSIM window from the damage
    scores = metrics.image_metrics(x, y, mask)
    assert scores["l1_masked"] == 0 and abs(scores["ssim_masked"] - 1) < 1e-5 and abs(scores["ms_ssim_masked"] - 1) < 1e-3
    assert scores["l1"] > 0.05 and scores["ssim"] < 0.9 and scores["ms_ssim"] < 0.95


def test_ms_ssim_falls_with_noise():
    x, _ = _pair(4)
    values = [float(metrics.ms_ssim(x, (x + s * torch.randn_like(x)).clamp(0, 1)).mean()) for s in (0.02, 0.1, 0.3)]
    assert 1 > values[0] > values[1] > values[2] > 0


def test_format_table_is_readable():
    text = metrics.format_table([{"model": "vae", "ssim": 0.81234}, {"model": "fader", "ssim": 0.7}])
    lines = text.splitlines()
    assert lines[0].split() == ["model", "ssim"] and "0.8123" in lines[2] and len(lines) == 4


# --- edit metrics, refereed by the shipped judges --------------------------------------------------------

@pytest.fixture(scope="module")
def faces(synth_root):
    from faceedu.train.judge import face_split

    images, attr, identity, names = face_split(synth_root, "test", limit=200)
    return images.float() / 255, attr, identity, names


def test_no_edit_preserves_everything(faces):
    from faceedu.models.judges import load_judges

    judges = load_judges()
    images, attr, _, names = faces
    report = metrics.edit_report(judges, images, images, "Eyeglasses", attr[:, names.index("Eyeglasses")])
    assert report["attribute_preservation"] == 1.0
    assert report["identity_mean_cosine"] > 0.999 and report["identity_same_person_rate"] == 1.0
    assert report["edit_success_rate"] > 0.9  # the judge reads the true glasses label
    assert abs(report["ssim"] - 1) < 1e-5


def test_swapping_people_is_caught(faces):
    from faceedu.models.judges import load_judges

    judges = load_judges()
    images, _, identity, _ = faces
    other = torch.roll(images, 1, 0)
    different = identity != torch.roll(identity, 1, 0)
    result = metrics.identity_similarity(judges.identity, images[different], other[different])
    assert result["same_person_rate"] < 0.2
    ranked = metrics.identity_retrieval(judges.identity, images, images.flip(-1))
    assert ranked["top1"] > 0.5 and ranked["relative_distance"] < 0.5


def test_expression_transfer_rate_on_real_labels(synth_root):
    from faceedu.models.judges import load_judges
    from faceedu.train.judge import jaffe_split

    judge = load_judges().expression
    images, labels, codes = jaffe_split(synth_root, "test")
    happy = images[labels == codes.index("HA")]
    assert metrics.expression_transfer_rate(judge, happy, "HA") > 0.9
    assert metrics.expression_transfer_rate(judge, happy, "SA") < 0.1


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_for_the_same_set():
    import numpy as np
    import scipy.linalg

    from faceedu.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g)
    b = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g) * 0.5 + 1
    A, B = a.double().numpy(), b.double().numpy()
    ca, cb = np.cov(A.T), np.cov(B.T)
    expected = ((A.mean(0) - B.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-9
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, b[:, :5])


def test_generation_report_flags_a_collapsed_generator():
    from faceedu.metrics import generation_report
    from faceedu.models.judges import load_judges

    judge = load_judges(kinds=["attributes"]).attributes
    g = torch.Generator().manual_seed(0)
    real = torch.rand(64, 3, 64, 64, generator=g)
    collapsed = real[:1].expand(32, -1, -1, -1) + 0.001 * torch.rand(32, 3, 64, 64, generator=g)
    report = generation_report(judge, real, collapsed)
    assert report["diversity_ratio"] < 0.1
    assert report["frechet"] > report["frechet_floor"]
    assert report["coverage"] < 0.25 * report["coverage_real"], report   # one point sits in about k of 32 balls


def test_density_and_coverage_count_neighbourhoods_as_naeem_et_al_define_them():
    """Against a loop over every real ball (the paper's definition, eq. 3-4), and on the cases that tell
    fidelity from diversity: fakes drawn like the real ones, fakes collapsed on a few real points, fakes
    spread off the data."""
    from faceedu.metrics import density_coverage

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(60, 4, generator=g), torch.randn(45, 4, generator=g) * 1.3 + 0.2
    k = 3
    radii = [sorted(float((r - other).norm()) for other in real)[k] for r in real]   # [0] is the point itself
    inside = [[float((f - r).norm()) < radius for f in fake] for r, radius in zip(real, radii)]
    got = density_coverage(real, fake, k=k)
    assert got["density"] == pytest.approx(sum(map(sum, inside)) / (k * len(fake)))
    assert got["coverage"] == pytest.approx(sum(map(any, inside)) / len(real))

    real = torch.randn(2000, 8, generator=g)
    alike = density_coverage(real[:1000], real[1000:])
    assert 0.85 < alike["density"] < 1.15 and alike["coverage"] > 0.9, alike     # 1 - 2**-5 for large N
    few = density_coverage(real[:1000], real[:10].repeat(100, 1) + 1e-3 * torch.randn(1000, 8, generator=g))
    assert few["coverage"] < 0.1 and few["density"] > 0.5, few       # real-looking, few modes: ~10 k of 1000 balls
    off = density_coverage(real[:1000], torch.randn(1000, 8, generator=g) + 4)
    assert off["density"] < 0.05 and off["coverage"] < 0.1, off                  # spread, but not faces
    with pytest.raises(ValueError, match="more than 5"):
        density_coverage(real[:5], real)
