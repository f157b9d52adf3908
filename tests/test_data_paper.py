"""The paper datasets read their official layouts (tiny fake copies here) and explain a broken one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_layouts import FAKE_LAYOUTS, make_fake_cars196, make_fake_cub200, make_fake_inshop
from PIL import Image

from eatlib.data import DATASETS, DatasetLayoutError, build_transform, load_splits

PAPER_DATASETS = sorted(FAKE_LAYOUTS)


def test_every_paper_dataset_is_registered_and_faked():
    assert set(DATASETS) == {"glyphs", *PAPER_DATASETS}


@pytest.mark.parametrize("name", PAPER_DATASETS)
def test_fake_layout_loads_with_standard_splits(tmp_path, name):
    fake = FAKE_LAYOUTS[name](tmp_path, train_classes=4, test_classes=3, images_per_class=3)
    splits = load_splits(name, tmp_path, image_size=32, val_fraction=0.25, seed=0)

    assert (splits.train.num_classes, splits.val.num_classes, splits.test.num_classes) == (3, 1, 3)
    assert len(splits.train) + len(splits.val) == fake.train_images
    assert len(splits.test) == fake.test_images
    for ds in (splits.train, splits.val, splits.test):
        assert ds.labels.dtype == np.int64
        assert sorted(set(ds.labels.tolist())) == list(range(ds.num_classes))  # contiguous within the split
        assert np.bincount(ds.labels).tolist() == [3] * ds.num_classes
        image, label = ds[len(ds) - 1]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.0
        assert label == ds.labels[-1]
    names = [set(ds.class_names) for ds in (splits.train, splits.val, splits.test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])  # zero-shot: disjoint
    assert splits.train.roles is None and (splits.test.roles is None) == (name != "inshop")


def test_cub_and_cars_use_the_standard_class_ranges(tmp_path):
    make_fake_cub200(tmp_path, train_classes=4, test_classes=3)
    cub = load_splits("cub200", tmp_path, val_fraction=0.0)
    assert cub.train.class_names == [f"{c:03d}.Bird_{c}" for c in (1, 2, 3, 4)]
    assert cub.test.class_names == [f"{c:03d}.Bird_{c}" for c in (101, 102, 103)]
    assert len(cub.val) == 0

    make_fake_cars196(tmp_path, train_classes=4, test_classes=3)
    cars = load_splits("cars196", tmp_path, val_fraction=0.0)
    assert cars.test.class_names == [f"Make Model {c} 2012" for c in (99, 100, 101)]


def test_inshop_test_split_is_query_plus_gallery(tmp_path):
    fake = make_fake_inshop(tmp_path, train_classes=4, test_classes=3, images_per_class=3)
    splits = load_splits("inshop", tmp_path, val_fraction=0.25)
    assert splits.test.roles.tolist() == fake.test_roles
    assert (splits.test.roles == "query").sum() == 3 and (splits.test.roles == "gallery").sum() == 6


def test_val_classes_depend_on_seed_only(tmp_path):
    make_fake_cub200(tmp_path, train_classes=10, test_classes=2, images_per_class=2)
    val = [load_splits("cub200", tmp_path, val_fraction=0.3, seed=s).val.class_names for s in (0, 0, 1, 2)]
    assert val[0] == val[1] and len(val[0]) == 3
    assert val[0] != val[2] or val[0] != val[3]


@pytest.mark.parametrize("name", PAPER_DATASETS)
def test_missing_image_is_named_with_layout_and_download_page(tmp_path, name):
    fake = FAKE_LAYOUTS[name](tmp_path)
    victim = fake.images[len(fake.images) // 2]
    victim.unlink()
    with pytest.raises(DatasetLayoutError) as caught:
        load_splits(name, tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(victim) in message and caught.value.filename == str(victim)
    assert "Expected layout" in message and "https://" in message


@pytest.mark.parametrize("name", PAPER_DATASETS)
def test_missing_index_file_is_named(tmp_path, name):
    fake = FAKE_LAYOUTS[name](tmp_path)
    victim = fake.index_files[-1]
    victim.unlink()
    with pytest.raises(DatasetLayoutError, match="Expected layout") as caught:
        load_splits(name, tmp_path)
    assert str(victim) in str(caught.value)


def test_absent_dataset_folder_says_where_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="cvgl.stanford.edu"):
        load_splits("sop", tmp_path)


def test_damaged_index_line_is_reported_with_its_line_number(tmp_path):
    fake = make_fake_inshop(tmp_path)
    partition = fake.index_files[0]
    partition.write_text(partition.read_text() + "img/broken.jpg\n")
    with pytest.raises(ValueError, match=r"line \d+"):
        load_splits("inshop", tmp_path)


def test_unknown_names_and_options_are_errors(tmp_path):
    make_fake_cub200(tmp_path)
    with pytest.raises(TypeError, match="allowed"):
        load_splits("cub200", tmp_path, colour="blue")
    with pytest.raises(ValueError, match="available"):
        load_splits("imagenet", tmp_path)


@pytest.mark.parametrize("train", [True, False])
def test_paper_protocol_gives_224_crops_in_unit_range(train):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    out = build_transform(224, train=train)(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_paper_test_transform_is_resize_256_centre_crop():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    resized = image.resize((341, 256), Image.Resampling.BILINEAR)  # shorter side 256, aspect kept
    left, top = (341 - 224) // 2, 16
    expected = torch.from_numpy(np.array(resized.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1)
    got = build_transform(224, train=False)(image)
    assert (got * 255 - expected.float()).abs().mean() < 2.0  # same pixels up to resampling details


def test_small_protocol_resizes_whole_image_and_augments_only_train():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    test_transform = build_transform(32, train=False)
    assert test_transform(image).shape == (3, 32, 32)
    assert torch.equal(test_transform(image), test_transform(image))
    assert torch.equal(build_transform(32, train=True, augment=False)(image), test_transform(image))
    torch.manual_seed(0)
    train_transform = build_transform(32, train=True)
    outs = [train_transform(image) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError, match="allowed"):
        build_transform(32, train=True, protocol="huge")
