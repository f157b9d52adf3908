"""Every trained defense starts from the pretrain stage's clean network (each ensemble member too)."""

import torch

from eatlib.models import Ensemble, build_model
from eatlib.persistence import save_model
from eatlib.pipeline import initialize_from


def test_initialize_from_loads_the_network_into_a_model_and_into_every_member(tmp_path):
    torch.manual_seed(0)
    source = build_model("cnn4", embedding_dim=8, width=4)
    save_model(source, tmp_path / "pretrained.pt")
    x = torch.rand(3, 3, 32, 32)
    single = build_model("cnn4", embedding_dim=8, width=4)
    ensemble = Ensemble([build_model("cnn4", embedding_dim=8, width=4) for _ in range(3)])
    with torch.no_grad():
        assert not torch.allclose(single.eval()(x), source.eval()(x))
        record = initialize_from(single, tmp_path / "pretrained.pt")
        initialize_from(ensemble, tmp_path / "pretrained.pt")
        expected = source(x)
        torch.testing.assert_close(single.eval()(x), expected)
        for member in ensemble.members:
            torch.testing.assert_close(member.eval()(x), expected)
    assert record["path"].endswith("pretrained.pt") and len(record["sha256"]) == 64
