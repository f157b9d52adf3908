"""glyphs: deterministic, zero-shot class split, look-alikes removed, prepared file checked against options."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
import torch
from fontTools.ttLib import TTFont
from PIL import Image

from eatlib.data import GlyphsFileMismatchError, contact_sheet, generate_glyphs, load_splits, prepare_glyphs
from eatlib.data.glyph_alphabet import alphabet, candidate_letters, face_paths
from eatlib.data.glyphs import GlyphOptions

SMALL = dict(num_classes=12, images_per_class=5)


@pytest.fixture(scope="module")
def default_splits():
    return load_splits("glyphs", root="/nonexistent-so-generated-in-memory")


@pytest.fixture(scope="module")
def default_alphabet():
    return alphabet(GlyphOptions().lookalike_threshold)


def test_default_set_sizes_and_zero_shot_split(default_splits):
    train, val, test = default_splits.train, default_splits.val, default_splits.test
    assert (train.num_classes, val.num_classes, test.num_classes) == (90, 10, 100)
    assert (len(train), len(val), len(test)) == (3600, 400, 4000)
    names = [set(ds.class_names) for ds in (train, val, test)]
    assert len(names[0] | names[1] | names[2]) == 200
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_images_labels_types_and_ranges(default_splits):
    for ds in (default_splits.train, default_splits.val, default_splits.test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(ds), 3, 32, 32)
        assert ds.labels.dtype == np.int64
        assert np.bincount(ds.labels).tolist() == [40] * ds.num_classes  # contiguous 0..C-1, balanced
        image, label = ds[7]
        assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert label == ds.labels[7] and isinstance(label, int)
    images = default_splits.test.images.float()
    assert images.std(dim=(1, 2, 3)).min() > 5  # every image shows something, none is a flat colour
    assert len(torch.unique(images.mean(dim=(1, 2, 3)))) > 3900  # and they differ from one another


def test_classes_span_several_scripts_and_exist_in_every_face(default_splits, default_alphabet):
    code_points = default_alphabet[:200]
    scripts = {unicodedata.name(chr(cp)).split()[0] for cp in code_points}
    assert {"LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN"} <= scripts
    cmaps = [TTFont(path, lazy=True).getBestCmap() for path in face_paths()]
    assert len(cmaps) == 12 and all(cp in cmap for cp in code_points for cmap in cmaps)
    shown = {name.split()[0] for ds in (default_splits.train, default_splits.val, default_splits.test)
             for name in ds.class_names}  # fmt: skip
    assert shown == {chr(cp) for cp in code_points}


def test_lookalikes_are_dropped(default_alphabet):
    kept = set(default_alphabet)
    assert ord("A") in kept and ord("\u0391") not in kept and ord("\u0410") not in kept  # Latin/Greek/Cyrillic A
    assert ord("B") in kept and ord("\u0392") not in kept and ord("\u0412") not in kept
    assert len({ord("o"), ord("O")} & kept) == 1  # same shape once size is normalised away
    assert len({ord("l"), ord("I")} & kept) == 1
    assert len(kept) < len(candidate_letters()) - 100


def test_same_seed_gives_identical_arrays_other_seed_differs():
    first = generate_glyphs(GlyphOptions(seed=3, **SMALL))
    again = generate_glyphs(GlyphOptions(seed=3, **SMALL))
    other = generate_glyphs(GlyphOptions(seed=4, **SMALL))
    assert torch.equal(first.images, again.images)
    assert np.array_equal(first.is_test_class, again.is_test_class)
    assert not torch.equal(first.images, other.images)


def test_difficulty_knobs_change_the_images():
    plain = dict(rotation_deg=0.0, scale_range=(0.8, 0.8), shift=0.0, stroke_px=(0.0, 0.0), blur_px=(0.0, 0.0),
                 contrast_range=(1.0, 1.0), tint=0.0, noise_range=(0.0, 0.0))  # fmt: skip
    images = generate_glyphs(GlyphOptions(**SMALL, **plain)).images
    assert set(torch.unique(images[:, 0]).tolist()) >= {0, 255}  # black and white letters
    noisy = generate_glyphs(GlyphOptions(**SMALL, **{**plain, "noise_range": (0.1, 0.1)})).images
    assert (noisy.float() - images.float()).abs().mean() > 5


def test_val_split_options_and_image_size():
    splits = load_splits("glyphs", root="/nonexistent", val_fraction=0.0, image_size=48, **SMALL)
    assert len(splits.val) == 0 and splits.train.num_classes == 6 and splits.test.num_classes == 6
    assert splits.train.images.shape[1:] == (3, 48, 48)
    with pytest.raises(TypeError, match="allowed"):
        load_splits("glyphs", root="/nonexistent", font="Comic Sans")
    with pytest.raises(ValueError, match="scale_range"):
        load_splits("glyphs", root="/nonexistent", scale_range=(1.0, 0.5))


def test_prepared_file_round_trip_and_mismatch(tmp_path):
    path = prepare_glyphs(tmp_path / "glyphs.npz", seed=5, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["glyphs.npz"]  # the temp file was renamed, not left over
    from_file = load_splits("glyphs", root=tmp_path, seed=5, **SMALL)
    in_memory = load_splits("glyphs", root=tmp_path / "absent", seed=5, **SMALL)
    for a, b in zip((from_file.train, from_file.val, from_file.test), (in_memory.train, in_memory.val,
                                                                        in_memory.test), strict=True):  # fmt: skip
        assert torch.equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
        assert a.class_names == b.class_names
    with np.load(path, allow_pickle=False) as npz:
        assert npz["images"].dtype == np.uint8
    with pytest.raises(GlyphsFileMismatchError, match="images_per_class.*Re-run the data stage"):
        load_splits("glyphs", root=tmp_path, seed=5, num_classes=12, images_per_class=6)
    with pytest.raises(GlyphsFileMismatchError, match="seed"):
        load_splits("glyphs", root=tmp_path, seed=6, **SMALL)


def test_contact_sheet_is_a_png_grid(tmp_path, default_splits):
    path = contact_sheet(default_splits.test, tmp_path / "sheet.png", classes=4, per_class=3)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # images were drawn, not an empty canvas
