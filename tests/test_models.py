"""eatlib.models: shapes, unit norms, configs, input checks, offline pretrained weights, ensembles, learning."""

import json
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from torch.optim.swa_utils import update_bn
from torchvision.models.mobilenetv2 import InvertedResidual

from eatlib.models import (
    ARCHITECTURES,
    EmbeddingNet,
    Ensemble,
    PretrainedWeightsUnavailable,
    build_model,
    model_from_config,
)
from eatlib.models.pretrained import IMAGENET_WEIGHTS

ARCHS = ["cnn4", "resnet18", "resnet50", "mobilenet_v2"]


def images(batch=4, size=32, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def small(arch, **options):
    """A cheap instance of each architecture for the structural tests."""
    if arch == "mobilenet_v2":
        options.setdefault("width_mult", 0.5)
    return build_model(arch, embedding_dim=16, **options)


# --- shapes, norms, configs ---------------------------------------------------------------------------------

def test_registry_lists_the_contract_architectures():
    assert set(ARCHS) <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
def test_32px_forward_gives_unit_norm_embeddings(arch):
    torch.manual_seed(0)
    model = small(arch).eval()
    with torch.no_grad():
        out = model(images())
    assert out.shape == (4, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)
    assert model.embedding_dim == 16
    assert isinstance(model, EmbeddingNet)


def test_resnet18_at_224px_uses_the_imagenet_stem():
    model = build_model("resnet18", image_size=224).eval()
    assert model.config["stem"] == "imagenet"
    with torch.no_grad():
        out = model(images(batch=1, size=224))
    assert out.shape == (1, 128)
    assert out.norm().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_config_is_plain_and_rebuilds_the_same_architecture(arch):
    model = small(arch)
    config = json.loads(json.dumps(model.config))  # plain values only
    rebuilt = build_model(**config)
    assert rebuilt.config == model.config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert str(rebuilt) == str(model)  # same modules, strides included


def test_config_records_resolved_options():
    assert build_model("resnet18", image_size=32).config["stem"] != "auto"
    assert build_model("resnet18", image_size=32, stem="cifar").config["stem"] == "cifar"
    config = build_model("mobilenet_v2", width_mult=0.5).config
    assert config["width_mult"] == 0.5 and config["stem"] == "small"
    assert build_model("cnn4", width=8).config["width"] == 8
    assert build_model("resnet18").config["width"] == 64


def test_mobilenet_max_blocks_keeps_one_block_per_stage_with_the_stock_widths_and_strides():
    stock, shallow = small("mobilenet_v2"), small("mobilenet_v2", max_blocks=1)
    blocks = lambda m: [b for b in m.backbone.features if isinstance(b, InvertedResidual)]  # noqa: E731
    assert len(blocks(stock)) == 17 and len(blocks(shallow)) == 7
    assert shallow.config["max_blocks"] == 1 and stock.config["max_blocks"] is None
    stage_ends = [0, 2, 5, 9, 12, 15, 16]  # torchvision's 1, 2, 3, 4, 3, 3, 1 blocks per stage
    assert [b.out_channels for b in blocks(shallow)] == [blocks(stock)[i].out_channels for i in stage_ends]
    x = images()
    assert shallow.backbone.features(x).shape[-2:] == stock.backbone.features(x).shape[-2:]  # same total stride


def test_narrow_resnet_keeps_torchvision_depth_and_names_and_scales_every_stage():
    stock, narrow = build_model("resnet18"), build_model("resnet18", width=16)
    assert narrow.head.in_features == 8 * 16 and stock.head.in_features == 512
    assert [k for k in narrow.state_dict()] == [k for k in stock.state_dict()]  # same modules, same names
    widths = [narrow.backbone.resnet.conv1.out_channels] + [
        getattr(narrow.backbone.resnet, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)]
    assert widths == [16, 16, 32, 64, 128]
    assert build_model("resnet50", width=16).head.in_features == 32 * 16
    assert narrow(images()).shape == (len(images()), narrow.embedding_dim)


def test_model_from_config_restores_weights_of_nets_and_ensembles():
    torch.manual_seed(0)
    ensemble = Ensemble([small("cnn4"), small("cnn4", width=8)], aggregate="concat").eval()
    rebuilt = model_from_config(json.loads(json.dumps(ensemble.config)))
    rebuilt.load_state_dict(ensemble.state_dict())
    rebuilt.eval()
    x = images()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), ensemble(x))
    single = model_from_config(ensemble.members[0].config)
    assert isinstance(single, EmbeddingNet) and single.config == ensemble.members[0].config


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="unknown option.*widht"):
        build_model("cnn4", widht=8)
    with pytest.raises(ValueError, match="stem"):
        build_model("resnet18", stem="huge")
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("cnn4", pretrained=True)
    with pytest.raises(ValueError, match="width_mult=1.0"):
        build_model("mobilenet_v2", width_mult=0.5, pretrained=True)
    with pytest.raises(ValueError, match="only at full depth"):
        build_model("mobilenet_v2", max_blocks=1, pretrained=True)
    with pytest.raises(ValueError, match="only at width=64"):
        build_model("resnet18", width=16, pretrained=True)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        build_model("resnet18", width=0)


# --- inputs -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "bad, why",
    [
        (images() * 255, "0-255 pixels"),
        ((images() - 0.45) / 0.22, "already normalised"),
        (images() + 0.01, "unclamped after a perturbation"),
    ],
)
def test_inputs_outside_pixel_range_are_rejected(bad, why):
    model = small("cnn4")
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space"):
        model(bad)


def test_inputs_at_the_range_edges_and_wrong_shapes():
    model = small("cnn4").eval()
    edges = torch.zeros(2, 3, 32, 32)
    edges[1] = 1.0
    assert model(edges).shape == (2, 16)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(2, 1, 32, 32))


def test_normalisation_constants_are_buffers_that_stay_out_of_checkpoints():
    model = small("cnn4")
    assert {"mean", "std"} <= {name for name, _ in model.named_buffers()}
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()


# --- pretrained weights without network -------------------------------------------------------------------------

def refuse_download(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable (test)")


def test_pretrained_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse_download)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model("resnet18", pretrained=True)
    message = str(info.value)
    assert "could not fetch" in message
    assert IMAGENET_WEIGHTS["resnet18"].url in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message


def test_pretrained_weights_placed_in_the_hub_cache_are_used_offline(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse_download)
    stand_in = resnet18(weights=None).state_dict()  # any state dict of the right layout stands in for ImageNet's
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(stand_in, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model("resnet18", pretrained=True, image_size=224)
    trunk = model.backbone.resnet
    assert torch.equal(trunk.layer3[0].conv1.weight, stand_in["layer3.0.conv1.weight"])
    assert torch.equal(trunk.conv1.weight, stand_in["conv1.weight"])
    assert model.config["pretrained"] is True


# --- ensembles --------------------------------------------------------------------------------------------------

def three_members(dims=(16, 16, 16)):
    torch.manual_seed(0)
    return [build_model("cnn4", embedding_dim=d, width=8).eval() for d in dims]


def test_ensemble_concat_mean_and_single_member():
    members = three_members()
    x = images()
    with torch.no_grad():
        parts = [m(x) for m in members]
        concat = Ensemble(members, aggregate="concat")(x)
        mean = Ensemble(members, aggregate="mean")(x)
        second = Ensemble(members, aggregate=1)(x)
    assert torch.allclose(concat, F.normalize(torch.cat(parts, dim=1), dim=1), atol=1e-6)
    assert torch.allclose(mean, F.normalize(sum(parts) / 3, dim=1), atol=1e-6)
    assert torch.allclose(second, parts[1])
    assert concat.shape == (4, 48) and mean.shape == (4, 16) and second.shape == (4, 16)
    assert torch.allclose(concat.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(mean.norm(dim=1), torch.ones(4), atol=1e-5)
    assert Ensemble(members, aggregate="concat").embedding_dim == 48
    assert Ensemble(members, aggregate="mean").embedding_dim == 16


def test_ensemble_configuration_errors():
    members = three_members(dims=(16, 16, 8))
    assert Ensemble(members, aggregate="concat").embedding_dim == 40
    assert Ensemble(members, aggregate=2).embedding_dim == 8
    with pytest.raises(ValueError, match="one embedding size"):
        Ensemble(members, aggregate="mean")
    with pytest.raises(ValueError, match="member index"):
        Ensemble(members, aggregate=3)
    with pytest.raises(ValueError, match="aggregate must be"):
        Ensemble(members, aggregate="max")
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


@pytest.mark.parametrize("aggregate", ["concat", "mean", 0])
def test_ensemble_never_changes_member_modes(aggregate):
    members = three_members()
    members[0].train()  # mixed modes, as a training loop may leave them
    ensemble = Ensemble(members, aggregate=aggregate)
    frozen_stats = members[1].backbone[1].running_mean.clone()
    ensemble(images(batch=8)).sum().backward()
    assert [m.training for m in members] == [True, False, False]
    assert torch.equal(members[1].backbone[1].running_mean, frozen_stats)  # eval member: BN statistics untouched


@pytest.mark.parametrize("aggregate", ["concat", "mean"])
def test_ensemble_gradients_reach_the_input(aggregate):
    members = three_members()
    x = images().requires_grad_()
    target = torch.randn(4, 48 if aggregate == "concat" else 16, generator=torch.Generator().manual_seed(1))
    (Ensemble(members, aggregate=aggregate)(x) * target).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    parts = [m(x_ref) for m in members]
    combined = torch.cat(parts, dim=1) if aggregate == "concat" else sum(parts) / 3
    (F.normalize(combined, dim=1) * target).sum().backward()
    assert x.grad.abs().sum() > 0
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)


# --- every backbone learns --------------------------------------------------------------------------------------

def pattern_classes(n_classes=8, per_class=8, size=32, seed=0):
    """Classes = fixed random 4x4 binary layouts (8px cells); every image gets its own random foreground and
    background colours, a shift of up to 3px and pixel noise, so colour says nothing about the class (an untrained
    network clusters by colour) and only the layout does."""
    gen = torch.Generator().manual_seed(seed)
    layouts = torch.rand(n_classes, 1, 4, 4, generator=gen) > 0.5
    layouts[:, 0, 0, 0] = True  # no empty layout
    masks = F.interpolate(layouts.float(), size=size, mode="nearest")  # [C, 1, S, S]
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    fg = torch.rand(len(labels), 3, 1, 1, generator=gen)
    bg = (fg + 0.3 + 0.4 * torch.rand(len(labels), 3, 1, 1, generator=gen)) % 1.0
    x = masks[labels] * fg + (1 - masks[labels]) * bg
    shifts = torch.randint(-3, 4, (len(labels), 2), generator=gen)
    x = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2)) for img, (dy, dx) in zip(x, shifts, strict=True)])
    x = x + 0.05 * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1), labels


def training_class_nmi(model, x, y, *, refresh_batchnorm=False):
    if refresh_batchnorm:
        # BN statistics of the final weights (torch's own utility), not the running averages of the last ~10
        # steps: after a few dozen Adam steps the deep nets' running averages lag their weights.
        update_bn([x], model)
    with torch.no_grad():
        z = model.eval()(x)
    clusters = KMeans(n_clusters=int(y.max()) + 1, n_init=3, random_state=0).fit_predict(z.double().numpy())
    return normalized_mutual_info_score(y.numpy(), clusters)


LEARNING_SETUPS = {  # arch -> (options, steps): a few seconds each on a 2-core CPU
    "cnn4": ({}, 30),
    "resnet18": ({}, 12),
    "resnet50": ({}, 8),
    "mobilenet_v2": ({"width_mult": 0.5}, 30),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_each_backbone_learns_at_32px(arch):
    """Proxy-Anchor (alpha 32, proxies at 100x lr) + AdamW 1e-3: the loss falls clearly and training-class NMI
    ends well above an untrained copy's (both in eval mode)."""
    options, steps = LEARNING_SETUPS[arch]
    x, y = pattern_classes()
    torch.manual_seed(0)
    model = build_model(arch, embedding_dim=32, **options)
    untrained_nmi = training_class_nmi(model, x, y)
    loss_fn = ProxyAnchorLoss(8, 32, margin=0.1, alpha=32)
    optimizer = torch.optim.AdamW(
        [{"params": model.parameters(), "lr": 1e-3}, {"params": loss_fn.parameters(), "lr": 1e-1}]
    )
    gen = np.random.default_rng(0)
    losses = []
    model.train()
    for _ in range(steps):
        batch = torch.from_numpy(np.concatenate([gen.choice(8, 4, replace=False) + 8 * c for c in range(8)]))
        loss = loss_fn(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    trained_nmi = training_class_nmi(model, x, y, refresh_batchnorm=True)
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses
    assert trained_nmi > untrained_nmi + 0.2, (untrained_nmi, trained_nmi)
