"""slotvlm.data.scenes: masks partition the image, occlusion order, determinism, the split."""
import numpy as np
import pytest

from slotvlm.data import scenes
from slotvlm.data.scenes import TETROMINOES


@pytest.mark.parametrize("family", scenes.FAMILIES)
def test_masks_partition_the_image_and_match_the_colours(family):
    images, masks, amodal = scenes.generate(family, 70, seed=3, amodal=True)  # crosses a chunk boundary
    size = scenes.image_size(family)
    k = scenes.max_objects(family)
    assert images.shape == (70, size, size, 3) and images.dtype == np.uint8
    assert masks.shape == (70, size, size) and amodal.shape == (70, k, size, size)
    assert masks.min() >= 0 and masks.max() <= k
    for img, m in zip(images, masks):
        # Every pixel carries exactly one label, and all pixels of a label have one colour.
        for label in np.unique(m):
            colours = np.unique(img[m == label], axis=0)
            assert len(colours) == 1, (family, label, colours)
        assert (m > 0).any()


def test_tetrominoes_are_three_disjoint_valid_pieces_on_black():
    images, masks = scenes.generate("tetrominoes", 64, seed=0)
    shapes = {tuple(map(tuple, s)) for s in TETROMINOES}
    assert len(shapes) == 19
    for img, m in zip(images, masks):
        assert (img[m == 0] == 0).all()  # black background
        assert sorted(np.unique(m)) == [0, 1, 2, 3]
        for label in (1, 2, 3):
            blocks = m[::5, ::5] == label  # 7×7 block grid
            assert (m == label).sum() == 100 and blocks.sum() == 4
            rc = np.argwhere(blocks)
            assert tuple(map(tuple, rc - rc.min(0))) in {tuple(sorted(s)) for s in shapes}


def test_multi_dsprites_occlusion_order():
    _, masks, amodal = scenes.generate("multi_dsprites", 128, seed=1, amodal=True)
    counts = (amodal.reshape(128, 5, -1).any(-1)).sum(1)
    assert counts.min() >= 2 and counts.max() <= 5
    overlapping = 0
    for m, a in zip(masks, amodal):
        # The visible label is the last sprite drawn over the pixel (painter's order).
        top = np.where(a.any(0), a.shape[0] - np.argmax(a[::-1], axis=0), 0)
        np.testing.assert_array_equal(m, top)
        overlapping += int((a.sum(0) > 1).any())
    assert overlapping > 10  # occlusion actually happens


def test_determinism_offsets_and_split():
    for family in scenes.FAMILIES:
        a_img, a_m = scenes.generate(family, 100, seed=5)
        b_img, b_m = scenes.generate(family, 30, seed=5, start=50)  # same scenes, asked for differently
        np.testing.assert_array_equal(a_img[50:80], b_img)
        np.testing.assert_array_equal(a_m[50:80], b_m)
        c_img, _ = scenes.generate(family, 100, seed=5)
        np.testing.assert_array_equal(a_img, c_img)
        t_img, _ = scenes.generate(family, 100, seed=5, split="test")
        o_img, _ = scenes.generate(family, 100, seed=6)
        assert not np.array_equal(a_img, t_img) and not np.array_equal(a_img, o_img)


def test_bad_arguments():
    with pytest.raises(ValueError, match="family"):
        scenes.generate("clevr", 2)
    with pytest.raises(ValueError, match="split"):
        scenes.generate("tetrominoes", 2, split="val")
    with pytest.raises(ValueError, match="n must"):
        scenes.generate("tetrominoes", -1)
    assert scenes.generate("tetrominoes", 0)[0].shape == (0, 35, 35, 3)
