"""params.yaml -> typed, validated configuration objects: the ground floor of eatlib.

Each section is a frozen dataclass. Validation is strict: an unknown key, a missing required key or a value of the
wrong type or range raises :class:`ConfigError`, naming the key (as a dotted path) and what is allowed, before any
work starts. Budgets such as ``eps`` may be written as fractions (``8/255``): :func:`parse_eps` and
:func:`format_eps` are the one reader and writer of budgets.

This module imports no other eatlib module. The names a key may take (datasets, architectures, losses, defenses)
and the checks of their options live in :class:`Registry` tables here, filled by the modules that define those
names when they are imported; the attack spec check likewise. :func:`eatlib.load.load_params` imports them all,
then validates.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad parameter: the message names the key, the value and what is allowed."""


def parse_number(value: Any, key: str, error: type[ConfigError] = ConfigError) -> float:
    """A float from a number or a fraction string such as ``"8/255"``; ``error`` is the class raised."""
    if isinstance(value, bool):
        raise error(f"{key}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise error(f"{key}: expected a number or a fraction like '8/255', got {value!r}")


def parse_eps(value: Any, key: str = "eps", error: type[ConfigError] = ConfigError) -> float:
    """A perturbation budget: a finite number >= 0, written as ``0.03``, ``8/255`` or ``"8/255"``."""
    eps = parse_number(value, key, error)
    if not (math.isfinite(eps) and eps >= 0):
        raise error(f"{key}: got {value!r}; allowed: a finite number >= 0, e.g. 8/255 or '8/255'")
    return eps


def format_eps(eps: float | str) -> str:
    """``8/255`` for multiples of 1/255 (to 1e-9), else the float (``0.5``); a string is returned as written."""
    if isinstance(eps, str):
        return eps
    k = float(eps) * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-9 else f"{float(eps):g}"


def _check(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: got {value!r}; allowed: {allowed}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a YAML value to ``annotation`` (dataclasses, lists, dicts, unions, float/int/str/bool)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {options}")
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, key)
    if origin in (list, tuple):
        _check(isinstance(value, (list, tuple)), key, value, "a list")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        _check(isinstance(value, dict), key, value, "a mapping")
        _, item_type = typing.get_args(annotation) or (str, Any)
        return {str(k): _coerce(v, item_type, f"{key}.{k}") for k, v in value.items()}
    if annotation is float:
        return parse_number(value, key)
    if annotation is bool:
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if annotation is str:
        _check(isinstance(value, str), key, value, "a string")
        return value
    return value  # Any


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and missing required keys are errors)."""
    where = key or "params"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(fields)}")
    values = {}
    for name, spec in fields.items():
        dotted = f"{key}.{name}" if key else name
        if name in data:
            values[name] = _coerce(data[name], hints[name], dotted)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{dotted}: required key is missing")
    try:
        return cls(**values)
    except ConfigError as error:  # __post_init__ names the field; prefix the section's path
        raise ConfigError(f"{key}.{error}" if key else str(error)) from None


def to_dict(config: Any) -> Any:
    """Plain-data view of a config object (for JSON results and checkpoints)."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config


class Registry(Mapping):
    """The names a params key accepts, each with what checks its options (a callable ``check(options, key)``
    or an options dataclass). The module that defines the names (``filled_by``) fills the table when it is
    imported, so params does not import it at module level; a lookup in a table still empty imports it then
    (``TrainConfig()`` works in a fresh interpreter, with no cycle at import time)."""

    def __init__(self, what: str, filled_by: str):
        self.what, self.filled_by = what, filled_by
        self._entries: dict[str, Any] = {}

    def _filled(self) -> dict[str, Any]:
        if not self._entries:
            importlib.import_module(self.filled_by)
        return self._entries

    def register(self, name: str, entry: Any) -> Any:
        self._entries[name] = entry
        return entry

    def lookup(self, name: Any, key: str) -> Any:
        """The entry of ``name``; a :class:`ConfigError` naming ``key`` and the allowed names if there is none."""
        entries = self._filled()
        _check(isinstance(name, str) and name in entries, key, name, f"one of {sorted(entries)}")
        return entries[name]

    def __getitem__(self, name: str) -> Any:
        return self._filled()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._filled())

    def __len__(self) -> int:
        return len(self._filled())


DATASETS = Registry("datasets", "eatlib.data")  # name -> check(options, key) of data.options (eatlib.data)
ARCHITECTURES = Registry("architectures", "eatlib.models")  # arch -> check(options, key) of models.<m>.options
LOSSES = Registry("losses", "eatlib.losses")  # name -> check(options, key) of train.loss.options (eatlib.losses)
TRAINING_DEFENSES = Registry("training defenses", "eatlib.defenses")  # name -> options dataclass (eatlib.defenses)
INFERENCE_DEFENSES = Registry("inference defenses", "eatlib.defenses")  # name -> options dataclass (eatlib.defenses)
ATTACK_SPECS = Registry("attack spec checks", "eatlib.attacks")  # "spec" -> eatlib.attacks.validate_spec


def check_keywords(function: Callable, options: Mapping, key: str, *, skip: tuple[str, ...] = ()) -> None:
    """Check ``options`` against the keyword parameters of ``function`` (less ``skip``, which its caller sets):
    an unknown name, or a value that does not match the parameter's annotation, is a :class:`ConfigError`
    naming ``key.<option>`` and what is allowed. The values are not converted: they reach ``function`` as
    written."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{key}: expected a mapping of options, got {options!r}")
    parameters = {name: p for name, p in inspect.signature(function).parameters.items()
                  if name not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(options) - set(parameters))
    _check(not unknown, key, unknown, f"options {sorted(parameters)}")
    hints = typing.get_type_hints(function)
    for name, value in options.items():
        if name in hints:
            _check(_matches(value, hints[name]), f"{key}.{name}", value, _describe(hints[name]))


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits ``annotation`` as written (an int fits float; a bool fits only bool)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    return True  # Any, or a type YAML cannot spell: the callee checks it


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if origin is typing.Literal:
        return f"one of {list(typing.get_args(annotation))}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(annotation, "a list" if origin in (list, tuple) else str(annotation))


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, at which resolution, and where it lives."""

    name: str = "glyphs"
    root: str = "data"  # the paper datasets, placed by the user (tracked by data.dvc)
    prepared: str = "results/data"  # where the data stage writes prepared datasets (glyphs.npz)
    image_size: int = 32
    val_fraction: float = 0.1  # fraction of the training classes held out for validation (never test classes)
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific (glyphs: num_classes, ...)

    def __post_init__(self):
        check_options = DATASETS.lookup(self.name, "name")
        _check(self.image_size >= 16, "image_size", self.image_size, "an integer >= 16")
        _check(0 <= self.val_fraction < 1, "val_fraction", self.val_fraction, "0 <= value < 1")
        check_options(self.options, "options")

    def dataset_root(self) -> Path:
        """Generated datasets are read from ``prepared``; downloaded ones from ``root/<name>``."""
        return Path(self.prepared if self.name == "glyphs" else self.root)


@dataclass(frozen=True)
class ModelConfig:
    """One architecture: backbone name, embedding size and backbone options."""

    arch: str
    embedding_dim: int = 128
    pretrained: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    # Craft perturbations (attacks and adversarial training) under bf16 autocast, on CPU too. Measured per family
    # by benchmarks/engine.py (ResNet-18 about 1.9x; MobileNetV2 little: its strided depthwise convolutions stay
    # fp32, eatlib.attacks.eot). Scores, clean embeddings and weight updates stay fp32.
    craft_bf16: bool = False
    # Craft adversarial-training examples against a BatchNorm-folded copy of the network, refreshed every batch
    # (eatlib.models.RefreshedFold): the same network up to float rounding, fewer passes over memory
    # (benchmarks/engine.py: MobileNetV2 about 1.2x per step, ResNet little). Attacks at evaluation fold anyway.
    craft_folded: bool = False

    def __post_init__(self):
        check_options = ARCHITECTURES.lookup(self.arch, "arch")
        _check(self.embedding_dim >= 2, "embedding_dim", self.embedding_dim, "an integer >= 2")
        check_options(self.options, "options")


@dataclass(frozen=True)
class LossConfig:
    name: str = "proxy_anchor"
    proxy_lr_multiplier: float = 100.0  # proxies learn this many times faster than the network
    options: dict[str, Any] = field(default_factory=lambda: {"margin": 0.1, "alpha": 32.0})

    def __post_init__(self):
        check_options = LOSSES.lookup(self.name, "name")
        _check(self.proxy_lr_multiplier > 0, "proxy_lr_multiplier", self.proxy_lr_multiplier, "> 0")
        check_options(self.options, "options")


@dataclass(frozen=True)
class AugmentConfig:
    """Per-image random affine augmentation of in-memory training batches (eatlib.data.augment)."""

    shift: float = 0.0  # max translation, as a fraction of the image side
    rotation_deg: float = 0.0  # max rotation either way
    scale: tuple[float, float] = (1.0, 1.0)  # zoom factor range

    def __post_init__(self):
        _check(0 <= self.shift <= 0.5, "shift", self.shift, "a fraction of the image side in [0, 0.5]")
        _check(0 <= self.rotation_deg <= 180, "rotation_deg", self.rotation_deg, "degrees in [0, 180]")
        _check(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1], "scale", list(self.scale),
               "[low, high] with 0 < low <= high")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation schedule shared by every defense."""

    epochs: int = 20
    batch_size: int = 120
    samples_per_class: int = 4  # class-balanced batches: batch_size / samples_per_class classes per batch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0  # linear warm-up of the learning rate, in (fractions of) epochs
    lr_milestones: list[int] = field(default_factory=list)  # epochs at which the rate is multiplied by lr_gamma
    lr_gamma: float = 0.1
    freeze_bn: bool = False  # keep BatchNorm statistics fixed (usual with ImageNet-pretrained backbones)
    amp: bool = True  # bf16 autocast, used only on CUDA
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    eval_batch_size: int = 256
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # off unless asked (glyphs: on in params.yaml)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self):
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.samples_per_class >= 1, "samples_per_class", self.samples_per_class, ">= 1")
        _check(
            self.batch_size >= 2 * self.samples_per_class and self.batch_size % self.samples_per_class == 0,
            "batch_size",
            self.batch_size,
            f"a multiple of samples_per_class ({self.samples_per_class}) covering at least 2 classes",
        )
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, ">= 0")
        _check(0 < self.lr_gamma <= 1, "lr_gamma", self.lr_gamma, "0 < value <= 1")
        _check(
            all(0 < m <= self.epochs for m in self.lr_milestones)
            and list(self.lr_milestones) == sorted(self.lr_milestones),
            "lr_milestones",
            self.lr_milestones,
            f"increasing epochs between 1 and epochs ({self.epochs})",
        )
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


@dataclass(frozen=True)
class EvaluationConfig:
    """Clean evaluation: one seeded k-means (k = number of test classes) and cosine neighbours."""

    batch_size: int = 256
    recall_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])

    def __post_init__(self):
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(all(k >= 1 for k in self.recall_ks) and self.recall_ks, "recall_ks", self.recall_ks, "integers >= 1")


PROTOCOLS = ("standard", "strong")
TRANSFER_SOURCES = ("standard", "pgd_at")  # the strong protocol's transfer attacks are crafted on these models


@dataclass(frozen=True)
class AttackConfig:
    """The robustness evaluation: a headline attack, a suite for the worst case, and an eps sweep."""

    headline: dict[str, Any]  # an attack spec (eatlib.attacks.spec); heads every table
    suite: list[dict[str, Any]] = field(default_factory=list)  # worst case = min over headline + suite
    sweep_eps: list[float] = field(default_factory=lambda: [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255])
    subset: int | None = None  # attack a seeded random subset of this many test images; null = all of them
    batch_size: int = 250
    eot_samples: int = 8  # gradient samples per step against randomised inference defenses (EOT)
    eot_sweep: bool = False  # also run the eps sweep against randomised defenses (costs eot_samples x the sweep)
    # standard: the worst case is the per-metric minimum over headline + suite. strong: also the `strong` attacks
    # (eatlib.strong), and per image the perturbation with the highest margin over all of them, clustered once.
    protocol: str = "standard"
    strong: list[dict[str, Any]] = field(default_factory=list)
    kmeans_seeds: int = 5  # evaluation noise: k-means restarts with other seeds (eatlib.noise)
    bootstrap: int = 200  # evaluation noise: bootstrap replicates over test classes

    def __post_init__(self):
        _check(self.protocol in PROTOCOLS, "protocol", self.protocol, f"one of {list(PROTOCOLS)}")
        _check(self.protocol == "standard" or bool(self.strong), "strong", self.strong,
               "a non-empty list of attack specs when protocol is strong")
        _check(self.kmeans_seeds >= 1, "kmeans_seeds", self.kmeans_seeds, ">= 1")
        _check(self.bootstrap >= 0, "bootstrap", self.bootstrap, ">= 0 (0: no class bootstrap)")
        validate_spec = ATTACK_SPECS.lookup("spec", "headline")
        specs = []
        for key, spec in [("headline", self.headline), *((f"suite[{i}]", s) for i, s in enumerate(self.suite))]:
            try:
                specs.append(validate_spec(spec))
            except ConfigError as error:  # the spec's own errors name the key inside the spec
                raise ConfigError(f"{key}: {error}") from None
        names = [spec["name"] for spec in specs]
        _check(len(set(names)) == len(names), "suite", names, "attacks with distinct names")
        strong_names = [specs[0]["name"]]  # the strong protocol runs the headline beside its own attacks
        for i, spec in enumerate(self.strong):
            _check(isinstance(spec, dict), f"strong[{i}]", spec, "an attack spec mapping")
            source = spec.get("source")
            _check(source in (None, *TRANSFER_SOURCES), f"strong[{i}].source", source,
                   f"null (white-box) or a transfer source: {list(TRANSFER_SOURCES)}")
            try:
                checked = validate_spec({k: v for k, v in spec.items() if k != "source"})
            except ConfigError as error:
                raise ConfigError(f"strong[{i}]: {error}") from None
            # The combined set keeps one perturbation per image: every attack must share the headline's budget.
            _check(checked["norm"] == specs[0]["norm"] and math.isclose(checked["eps"], specs[0]["eps"]),
                   f"strong[{i}]", {"norm": checked["norm"], "eps": checked["eps"]},
                   f"the headline's norm ({specs[0]['norm']}) and eps ({specs[0]['eps']:.6g}): the combined set is "
                   "one threat model")
            strong_names.append(checked["name"])
        _check(len(set(strong_names)) == len(strong_names) and "combined" not in strong_names, "strong", strong_names,
               "attacks with distinct names, none named like the headline or 'combined' (the combined set)")
        _check(all(0 < e for e in self.sweep_eps), "sweep_eps", self.sweep_eps, "budgets > 0")
        _check(self.subset is None or self.subset >= 2, "subset", self.subset, "null (all) or >= 2 images")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.eot_samples >= 1, "eot_samples", self.eot_samples, ">= 1")

    def specs(self) -> list[dict]:
        """Headline first, then the suite, validated (defaults filled in)."""
        validate_spec = ATTACK_SPECS.lookup("spec", "attacks")
        return [validate_spec(spec) for spec in [self.headline, *self.suite]]


@dataclass(frozen=True)
class PipelineConfig:
    """What the DVC pipeline runs: its train and attack stages are a matrix over these lists.

    The comparison set (``compared``, plus PGD-AT given EAT's forward-backward budget, ``pgd_at_matched``) is
    trained and attacked once per training seed of ``seeds``; ``single_seed`` defenses once, with the top-level
    ``seed``. The data (generation, splits, attacked subset) follow the top-level ``seed`` only, so every seed
    sees the same images: initialisation draws, batch order, augmentation, attack starts and k-means vary.
    """

    archs: list[str]
    seeds: list[int] | None = None  # None: the top-level seed only
    compared: list[str] = field(default_factory=lambda: ["standard", "pgd_at", "eat"])
    single_seed: list[str] = field(default_factory=list)
    inference_defenses: list[str] = field(default_factory=list)  # wrap the trained `standard` model of `seed`

    def __post_init__(self):
        _check(self.seeds is None or bool(self.seeds) and all(isinstance(s, int) and s >= 0 for s in self.seeds)
               and len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "distinct integers >= 0")
        _check(all(d in self.compared for d in ("standard", "pgd_at", "eat")), "compared", self.compared,
               "a list that includes standard (the undefended baseline), pgd_at and eat (the verdict compares "
               "EAT with PGD-AT at equal epochs and at EAT's compute)")
        both = sorted(set(self.compared) & set(self.single_seed))
        _check(not both, "single_seed", both, "defenses not already in pipeline.compared")
        for key, names, registry in (("compared", self.compared, TRAINING_DEFENSES),
                                     ("single_seed", self.single_seed, TRAINING_DEFENSES),
                                     ("inference_defenses", self.inference_defenses, INFERENCE_DEFENSES)):
            for i, name in enumerate(names):
                registry.lookup(name, f"{key}[{i}]")

    @property
    def trained_defenses(self) -> list[str]:
        """Every trained model the pipeline makes, in table order: the comparison set with PGD-AT at EAT's compute
        right after PGD-AT, then the single-seed defenses."""
        order = []
        for name in self.compared:
            order += [name, MATCHED] if name == "pgd_at" else [name]
        return order + list(self.single_seed)

    def seeds_of(self, defense: str, main_seed: int) -> list[int]:
        """The training seeds ``defense`` is run with."""
        return list(self.seeds) if defense in self.compared or defense == MATCHED else [main_seed]


MATCHED = "pgd_at_matched"  # PGD-AT trained until it has spent EAT's forward-backward images of the same seed


@dataclass(frozen=True)
class AblationVariant:
    """One row of the ablation table: a defense with some options changed, trained and attacked on
    ``ablation.arch``."""

    defense: str = "eat"
    options: dict[str, Any] = field(default_factory=dict)  # merged over defenses.<defense>
    # Train for as many forward-backward images as this main-run defense used (a compute-matched baseline).
    match_compute: str | None = None

    def __post_init__(self):
        TRAINING_DEFENSES.lookup(self.defense, "defense")
        if self.match_compute is not None:
            TRAINING_DEFENSES.lookup(self.match_compute, "match_compute")


@dataclass(frozen=True)
class AblationConfig:
    arch: str
    variants: dict[str, AblationVariant] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadingsConfig:
    """Readings of EAT other than ``defenses.eat``, each trained over ``seeds`` on ``arch`` and compared with the
    comparison set of the same seeds (the ``reading`` and ``readings`` stages; `make verdict-grid`, outside
    `make repro`). A variant is a mapping of ``defenses.eat`` keys to change (e.g. ``{transfer: others}``)."""

    arch: str
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Readings that PGD-AT is also given the compute of, seed by seed (stage reading-matched): equal compute for
    # a reading that costs more than the default EAT.
    matched: list[str] = field(default_factory=list)

    def __post_init__(self):
        _check(bool(self.seeds) and all(isinstance(s, int) and s >= 0 for s in self.seeds)
               and len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "distinct integers >= 0")
        unknown = [name for name in self.matched if name not in self.variants]
        _check(not unknown and len(set(self.matched)) == len(self.matched), "matched", self.matched,
               f"distinct names of readings.variants {sorted(self.variants)}")
        taken = {*TRAINING_DEFENSES, *INFERENCE_DEFENSES, MATCHED, "nan", "inf"}
        for name in self.variants:
            _check(re.fullmatch(r"[a-z][a-z0-9_]*", name) is not None and name not in taken,
                   "variants", name, "names of lower-case letters, digits and _, starting with a letter, that are "
                   "not a defense's name (they name files and DVC stages, and stand in a defense's place)")


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""

    data: DataConfig
    models: dict[str, ModelConfig]  # the architecture families compared (key = short name used in paths)
    pipeline: PipelineConfig
    attacks: AttackConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    # The clean model every trained defense starts from: `train`'s settings with these changed (null: every
    # defense trains from the backbone's own initialisation).
    pretrain: dict[str, Any] | None = None
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    defenses: dict[str, Any] = field(default_factory=dict)  # one subsection of options per defense
    ablation: AblationConfig | None = None
    readings: ReadingsConfig | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        if self.pipeline.seeds is None:
            object.__setattr__(self.pipeline, "seeds", [self.seed])
        _check(self.seed in self.pipeline.seeds, "pipeline.seeds", self.pipeline.seeds,
               f"a list that includes the top-level seed ({self.seed}): the single-seed and inference defenses "
               "use its models")
        _check(self.device in DEVICES or self.device.startswith("cuda:"), "device", self.device, f"{DEVICES}")
        _check(bool(self.models), "models", self.models, "at least one architecture")
        missing = [a for a in self.pipeline.archs if a not in self.models]
        _check(not missing, "pipeline.archs", missing, f"keys of models: {sorted(self.models)}")
        # Validate every defense's options now, so a typo fails before hours of training.
        parsed = {name: parse_options(name, value, _defense_registry(name)) for name, value in self.defenses.items()}
        object.__setattr__(self, "defenses", parsed)
        if self.pretrain is not None:
            self.pretrain_config()  # validates the merged schedule
        if self.ablation is not None:
            _check(self.ablation.arch in self.models, "ablation.arch", self.ablation.arch,
                   f"keys of models: {sorted(self.models)}")
            for name, variant in self.ablation.variants.items():
                self.variant_options(name)  # validates the merged options
                _check(variant.match_compute is None or variant.match_compute in self.pipeline.trained_defenses,
                       f"ablation.variants.{name}.match_compute", variant.match_compute,
                       "a defense of pipeline.trained_defenses (its main run sets the budget)")
        if self.readings is not None:
            _check(self.readings.arch in self.models, "readings.arch", self.readings.arch,
                   f"keys of models: {sorted(self.models)}")
            for name in self.readings.variants:
                self.reading_options(name)  # validates the merged options

    def defense_options(self, name: str) -> Any:
        """The validated options of defense ``name`` (its defaults when params.yaml has no subsection for it)."""
        if name in self.defenses:
            return self.defenses[name]
        return parse_options(name, None, _defense_registry(name))

    def variant_options(self, name: str) -> Any:
        """The options of ablation variant ``name``: its overrides merged over ``defenses.<defense>``."""
        if self.ablation is None or name not in self.ablation.variants:
            defined = sorted(self.ablation.variants) if self.ablation else []
            raise ConfigError(f"ablation.variants: no variant named {name!r}; defined: {defined}")
        variant = self.ablation.variants[name]
        merged = _merge(to_dict(self.defense_options(variant.defense)), variant.options)
        return parse_options(variant.defense, merged, TRAINING_DEFENSES, f"ablation.variants.{name}.options")

    def attack_runs(self) -> set[tuple[str, str, int]]:
        """Every ``(arch, defense, training seed)`` whose attack document this params file makes
        (``results/metrics/<arch>/<defense>/seed<k>.json``): what the tables and the verdict read. Documents on
        disk outside this set are left over from an earlier params file (DVC does not delete the outputs of
        stages that no longer exist)."""
        pipeline = self.pipeline
        runs = {(arch, defense, seed) for arch in pipeline.archs for defense in pipeline.trained_defenses
                for seed in pipeline.seeds_of(defense, self.seed)}
        return runs | {(arch, defense, self.seed) for arch in pipeline.archs for defense in pipeline.inference_defenses}

    def check_readings(self) -> None:
        """What the reading stages need beyond valid options (checked when they run, so that `make repro` on
        fewer seeds or architectures is not refused for readings it does not run): the comparison set's models of
        ``readings.arch`` and of every seed of ``readings.seeds``."""
        readings = self.readings
        _check(readings is not None, "readings", None, "a readings section (see params.yaml; `variants: {}` runs none)")
        _check(readings.arch in self.pipeline.archs, "readings.arch", readings.arch,
               f"one of pipeline.archs {self.pipeline.archs} (its comparison set is the readings' rivals)")
        outside = sorted(set(readings.seeds) - set(self.pipeline.seeds))
        _check(not outside, "readings.seeds", outside, f"seeds of pipeline.seeds {self.pipeline.seeds} (each reading "
               "is paired with the comparison set's models of its seed), or add them to pipeline.seeds")

    def reading_options(self, name: str) -> Any:
        """The EAT options of reading ``name``: its overrides merged over ``defenses.eat``."""
        if self.readings is None or name not in self.readings.variants:
            defined = sorted(self.readings.variants) if self.readings else []
            raise ConfigError(f"readings.variants: no reading named {name!r}; defined: {defined}")
        merged = _merge(to_dict(self.defense_options("eat")), self.readings.variants[name])
        return parse_options("eat", merged, TRAINING_DEFENSES, f"readings.variants.{name}")

    def pretrain_config(self) -> TrainConfig:
        """The schedule of the pretrain stage: ``train`` with ``pretrain``'s keys changed."""
        if self.pretrain is None:
            raise ConfigError("pretrain: null, so there is no pretraining stage; set e.g. pretrain: {epochs: 20}")
        keys = sorted(f.name for f in dataclasses.fields(TrainConfig))
        unknown = sorted(set(self.pretrain) - set(keys))
        _check(not unknown, "pretrain", unknown, f"keys of train: {keys}")
        return from_dict(TrainConfig, _merge(to_dict(self.train), self.pretrain), "pretrain")

    def model(self, name: str) -> ModelConfig:
        if name not in self.models:
            raise ConfigError(f"models: no architecture named {name!r}; defined: {sorted(self.models)}")
        return self.models[name]


def parse_options(name: str, options: Any, registry: Registry, key: str | None = None) -> Any:
    """The validated options object of defense ``name`` (a key of ``registry``): ``options`` may already be one,
    or a mapping (a ``params.yaml`` subsection, at ``key``, by default ``defenses.<name>``; ``None`` means all
    defaults)."""
    cls = registry.lookup(name, "defenses")
    key = key or f"defenses.{name}"
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        if not isinstance(options, cls):
            raise ConfigError(f"{key}: expected {cls.__name__} options, got {type(options).__name__}")
        return options
    return from_dict(cls, options, key)


def _defense_registry(name: str) -> Registry:
    """The registry that holds defense ``name`` (training or inference)."""
    if name in INFERENCE_DEFENSES:
        return INFERENCE_DEFENSES
    if name in TRAINING_DEFENSES or not (TRAINING_DEFENSES or INFERENCE_DEFENSES):
        return TRAINING_DEFENSES  # its lookup says what is missing
    known = sorted([*TRAINING_DEFENSES, *INFERENCE_DEFENSES])
    raise ConfigError(f"defenses: got {name!r}; allowed: subsections named after defenses: {known}")
