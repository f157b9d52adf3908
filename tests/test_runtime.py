"""eatlib.runtime: the allocator tunables reach every stage, keep a user's own, and change no result."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from eatlib.runtime import GLIBC_TUNABLES, allocator_tuned, tuned_environment

ROOT = Path(__file__).resolve().parents[1]

# A headline PGD on a BatchNorm-folded MobileNetV2 of the pipeline's shape, at a batch whose activations (about
# 12 MB a layer) glibc would mmap: the adversarial images and their embeddings, hashed bit for bit.
CHILD = """
import hashlib, sys, torch
from eatlib.attacks import HEADLINE, build_attack
from eatlib.models import build_model, fold_batchnorm
from eatlib.runtime import allocator_tuned
torch.manual_seed(0)
net = fold_batchnorm(build_model("mobilenet_v2", embedding_dim=32, image_size=32, width_mult=0.5, max_blocks=1,
                                 last_conv=True).eval())
images = torch.rand(64, 3, 32, 32)
with torch.no_grad():
    clean = net(images)
attack = build_attack({**HEADLINE, "steps": 3}, net, clean_embeddings=clean, labels=torch.arange(64) % 8, seed=1)
adversarial = attack(images, torch.arange(64))
with torch.no_grad():
    embedded = net(adversarial)
digest = hashlib.sha256(adversarial.contiguous().numpy().tobytes() + embedded.numpy().tobytes()).hexdigest()
print(allocator_tuned(), digest, float((adversarial - images).abs().max()))
"""


def _run_child(env: dict) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_the_tuned_allocator_gives_bit_for_bit_the_same_attack_as_glibcs_default():
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    default, tuned = _run_child(plain), _run_child(tuned_environment(plain))
    assert default[0] == "False" and tuned[0] == "True"  # each child saw the environment it was given
    assert float(default[2]) > 0  # the attack moved the images: the hash covers a real perturbation
    assert tuned[1] == default[1]


def test_tuned_environment_adds_the_tunables_and_keeps_a_users_own_value_for_the_same_name():
    assert tuned_environment({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": GLIBC_TUNABLES}
    env = tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.cpu.x86_ibt=on"})
    items = env["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.hugetlb=0" in items and "glibc.malloc.hugetlb=1" not in items
    assert "glibc.cpu.x86_ibt=on" in items and "glibc.malloc.mmap_max=0" in items
    assert allocator_tuned(env)
    assert not allocator_tuned({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert not allocator_tuned({})


def test_every_stage_and_every_make_target_start_with_the_same_tunables():
    nb = next(item["nb"] for item in yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"] if "nb" in item)
    assert nb.startswith(f"env GLIBC_TUNABLES={GLIBC_TUNABLES} papermill ")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^TUNED\s*:= GLIBC_TUNABLES={re.escape(GLIBC_TUNABLES)}$", makefile, flags=re.MULTILINE)
    assert re.search(r"^RUN\s*:=.*\$\(TUNED\)$", makefile, flags=re.MULTILINE)
    # Every stage's command goes through ${nb}: none calls papermill without the tunables.
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        command = (stage.get("do") or stage)["cmd"]
        assert "papermill" not in command.replace("${nb}", ""), name


def _engine():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import engine
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return engine


def test_the_engine_benchmark_splits_its_speedup_into_the_bf16_and_the_allocator_levers():
    def row(attack, train):
        return {"attack_images_per_s": {"before": attack[0], "after": attack[1]},
                "train_images_per_s": {"before": train[0], "after": train[1]},
                "attack_speedup": attack[1] / attack[0], "train_speedup": train[1] / train[0],
                "attack_bf16": True, "craft_bf16": True, "flops_fraction": 0.1, "folded_over_after": 1.2}
    default = {"_machine": {"threads": 2}, "resnet": row((100, 190), (200, 260))}
    tuned = {"_machine": {"threads": 2}, "resnet": row((110, 250), (210, 270))}
    combined = _engine().combine(default, tuned)["resnet"]
    # before: default allocator, float32 crafting; after: tuned allocator, the faster crafting
    assert combined["attack_images_per_s"] == {"before": 100, "after": 250}
    assert combined["train_images_per_s"] == {"before": 200, "after": 270}
    for kind in ("attack", "train"):
        levers = combined["levers"][kind]
        assert abs(levers["bf16"] * levers["malloc"] - combined[f"{kind}_speedup"]) < 1e-12
    assert abs(combined["levers"]["attack"]["malloc"] - 250 / 190) < 1e-12
