"""slotvlm.metrics against scikit-learn's adjusted_rand_score and hand-made segmentations."""
import numpy as np
import pytest
import torch

from slotvlm import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference (the test extra)")
adjusted_rand_score = sklearn_metrics.adjusted_rand_score


def _random_labels(rng, b, shape, k):
    return rng.integers(0, k, size=(b, *shape))


@pytest.mark.parametrize("shape,kt,kp", [
    pytest.param((7, 9), 4, 5, id="7x9-k4-k5"),
    pytest.param((35, 35), 4, 4, id="35x35"),
    pytest.param((63,), 2, 7, id="N63-k7"),
    pytest.param((5, 5), 1, 3, id="one-true-cluster"),
])
def test_ari_matches_sklearn_on_hard_labels(shape, kt, kp):
    rng = np.random.default_rng(0)
    true = _random_labels(rng, 6, shape, kt)
    pred = _random_labels(rng, 6, shape, kp)
    # Make some predictions correlated with the truth so the values are not all ~0.
    pred[:3] = (true[:3] + (rng.uniform(size=true[:3].shape) < 0.2)) % max(kp, 2)
    got = metrics.adjusted_rand_index(true, pred).numpy()
    want = [adjusted_rand_score(t.ravel(), p.ravel()) for t, p in zip(true, pred)]
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_fg_ari_matches_sklearn_on_foreground_pixels():
    rng = np.random.default_rng(1)
    true = _random_labels(rng, 5, (16, 16), 4)
    pred_masks = torch.from_numpy(rng.uniform(size=(5, 6, 16, 16))).float()
    pred_hard = pred_masks.argmax(1)
    got = metrics.fg_ari(true, torch.nn.functional.one_hot(pred_hard, 6).permute(0, 3, 1, 2).float()).numpy()
    got_labels = metrics.fg_ari(true, pred_hard).numpy()
    want = []
    for t, p in zip(true, pred_hard.numpy()):
        fg = t != 0
        want.append(adjusted_rand_score(t[fg], p[fg]))
    np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(got_labels, want, atol=1e-10)


def test_one_hot_ground_truth_equals_labels():
    rng = np.random.default_rng(2)
    true = torch.from_numpy(_random_labels(rng, 3, (10, 10), 3))
    pred = torch.from_numpy(_random_labels(rng, 3, (10, 10), 4))
    one_hot = torch.nn.functional.one_hot(true, 3).permute(0, 3, 1, 2).double()
    torch.testing.assert_close(metrics.adjusted_rand_index(one_hot, pred), metrics.adjusted_rand_index(true, pred))


def _scene():
    # A 6×6 image: background 0 and three objects 1, 2, 3.
    t = np.zeros((6, 6), dtype=np.int64)
    t[0:2, 0:2] = 1
    t[0:3, 4:6] = 2
    t[4:6, 1:5] = 3
    return t


def test_perfect_and_permuted_segmentation_score_one():
    t = _scene()
    perm = np.array([3, 0, 1, 2])[t]  # same partition, other label ids
    for pred in (t, perm):
        assert metrics.fg_ari(t[None], pred[None]).item() == pytest.approx(1.0)
        assert metrics.adjusted_rand_index(t[None], pred[None]).item() == pytest.approx(1.0)
        assert metrics.mean_best_overlap(t[None], pred[None]).item() == pytest.approx(1.0)
        assert metrics.matched_miou(t[None], pred[None]).item() == pytest.approx(1.0)


def test_background_split_does_not_change_fg_ari():
    t = _scene()
    pred = t.copy()
    pred[(t == 0) & (np.arange(6)[None, :] < 3)] = 7  # background cut in two: FG-ARI ignores it
    assert metrics.fg_ari(t[None], pred[None]).item() == pytest.approx(1.0)
    assert metrics.adjusted_rand_index(t[None], pred[None]).item() < 1.0


def test_merged_objects():
    t = _scene()
    pred = np.where(t == 2, 1, t)  # objects 1 and 2 merged into one segment
    fg = t != 0
    want = adjusted_rand_score(t[fg], pred[fg])
    assert metrics.fg_ari(t[None], pred[None]).item() == pytest.approx(want)
    assert want < 1.0
    # Best overlaps: object 1 (4 px) IoU 4/10, object 2 (6 px) IoU 6/10, object 3 exact.
    assert metrics.mean_best_overlap(t[None], pred[None]).item() == pytest.approx((0.4 + 0.6 + 1.0) / 3)
    # Hungarian: the merged segment goes to object 2 (0.6); object 1 gets nothing else overlapping.
    assert metrics.matched_miou(t[None], pred[None]).item() == pytest.approx((0.0 + 0.6 + 1.0) / 3)


def test_split_object():
    t = _scene()
    pred = t.copy()
    pred[4:6, 3:5] = 9  # object 3 (8 px) split into two halves of 4 px
    fg = t != 0
    assert metrics.fg_ari(t[None], pred[None]).item() == pytest.approx(adjusted_rand_score(t[fg], pred[fg]))
    assert metrics.mean_best_overlap(t[None], pred[None]).item() == pytest.approx((1 + 1 + 0.5) / 3)
    assert metrics.matched_miou(t[None], pred[None]).item() == pytest.approx((1 + 1 + 0.5) / 3)


def test_all_background_image():
    t = np.zeros((1, 5, 5), dtype=np.int64)
    pred = np.zeros((1, 5, 5), dtype=np.int64)
    assert np.isnan(metrics.fg_ari(t, pred).item())  # nothing to score
    assert np.isnan(metrics.mean_best_overlap(t, pred).item())
    assert np.isnan(metrics.matched_miou(t, pred).item())
    assert metrics.adjusted_rand_index(t, pred).item() == pytest.approx(1.0)  # sklearn's convention
    assert adjusted_rand_score(t.ravel(), pred.ravel()) == pytest.approx(1.0)
    s = metrics.summarize(np.concatenate([t, _scene()[None, :5, :5]]), np.concatenate([pred, _scene()[None, :5, :5]]))
    assert s["fg_ari"] == pytest.approx(1.0)  # nan-mean skips the empty image


def test_soft_masks():
    t = _scene()[None]
    onehot = torch.nn.functional.one_hot(torch.from_numpy(t), 4).permute(0, 3, 1, 2).double()
    # Exactly one-hot masks give the hard score; near one-hot soft masks nearly so.
    assert metrics.fg_ari(t, onehot).item() == pytest.approx(1.0)
    soft = (onehot * 10).softmax(1)
    assert metrics.fg_ari(t, soft).item() == pytest.approx(1.0, abs=2e-3)
    blurred = (onehot * 2).softmax(1)
    assert metrics.fg_ari(t, blurred).item() < metrics.fg_ari(t, soft).item()
    assert metrics.mean_best_overlap(t, soft).item() == pytest.approx(1.0)  # argmax of soft masks


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="pred"):
        metrics.fg_ari(np.zeros((2, 4, 4), np.int64), np.zeros((2, 5, 5), np.int64))
    with pytest.raises(ValueError, match="true"):
        metrics.fg_ari(np.full((2, 4, 4), -1), np.zeros((2, 4, 4), np.int64))
    with pytest.raises(ValueError, match="foreground_only"):
        metrics.fg_ari(torch.zeros(2, 3, 4, 4), np.zeros((2, 4, 4), np.int64))
