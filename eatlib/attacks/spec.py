"""Attack specs: plain dicts that name an attack completely, validated, and carried into the results JSON.

Example (the headline attack)::

    {"name": "pgd_centroid_random", "optimizer": "pgd", "norm": "linf", "eps": 8/255, "alpha": 2/255,
     "steps": 20, "objective": "centroid", "target": "random", "restarts": 1}

:func:`validate_spec` fills the defaults, turns strings such as ``"8/255"`` into floats and rejects unknown
keys and bad values with an error naming the key and what is allowed. Which keys are allowed depends on the
optimiser and the objective (``decay`` only for ``mifgsm``, ``target`` only for ``centroid``, ...), so a key
that would be silently ignored is an error too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from eatlib import params
from eatlib.attacks.objectives import OBJECTIVES
from eatlib.attacks.optimizers import OPTIMIZERS
from eatlib.params import ConfigError, format_eps, parse_eps

# key -> (default, kind, allowed values or None). kind: "str", "eps", "pos", "nonneg", "int", "bool", "kappa".
# The optimiser's and the objective's own keys are their classes' ``spec_keys``; their names are the registries'.
_COMMON = {
    "name": (None, "name", None),
    "optimizer": ("pgd", "str", OPTIMIZERS),  # the registries themselves: a name registered later is allowed too
    "objective": ("centroid", "str", OBJECTIVES),
    "norm": ("linf", "str", ("linf", "l2")),
    "eps": (None, "eps", None),  # None: 8/255 for linf, 0.5 for l2
    "restarts": (1, "int", None),
    "eot": (1, "int", None),
}

# Random targets: toward the nearest other centre, whole clusters move onto their neighbours and stay pure, so
# NMI keeps half its margin over chance; the suite keeps the nearest target too (the stronger one against some
# adversarially trained models) and the worst case takes both.
HEADLINE = {
    "name": "pgd_centroid_random", "optimizer": "pgd", "norm": "linf", "eps": 8 / 255, "alpha": 2 / 255,
    "steps": 20, "objective": "centroid", "target": "random", "restarts": 1,
}
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
SWEEP_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)


class SpecError(ConfigError):
    """An attack spec with an unknown key or a bad value."""


def allowed_keys(optimizer: str, objective: str) -> list[str]:
    """The keys a spec with this optimiser and objective may hold."""
    return [*_COMMON, *OPTIMIZERS[optimizer].spec_keys, *OBJECTIVES[objective].spec_keys]


def validate_spec(spec: Mapping) -> dict:
    """A complete, normalised copy of ``spec`` (defaults filled, eps as floats, ``name`` derived if absent)."""
    if not isinstance(spec, Mapping):
        raise SpecError(f"an attack spec must be a dict, got {type(spec).__name__}")
    out = {"optimizer": _check("optimizer", spec.get("optimizer", "pgd"), *_COMMON["optimizer"][1:]),
           "objective": _check("objective", spec.get("objective", "centroid"), *_COMMON["objective"][1:])}
    table = {**_COMMON, **OPTIMIZERS[out["optimizer"]].spec_keys, **OBJECTIVES[out["objective"]].spec_keys}
    unknown = sorted(set(spec) - set(table))
    if unknown:
        raise SpecError(
            f"unknown attack spec key(s) {unknown} for optimizer {out['optimizer']!r} with objective "
            f"{out['objective']!r}; allowed keys: {sorted(table)}"
        )
    for key, (default, kind, choices) in table.items():
        if key in out:
            continue
        value = spec.get(key, default)
        out[key] = value if value is None else _check(key, value, kind, choices)
    norms = OPTIMIZERS[out["optimizer"]].norms
    if out["norm"] not in norms and "norm" not in spec:
        out["norm"] = norms[0]
    if out["norm"] not in norms:
        raise SpecError(f"key 'norm': optimizer {out['optimizer']!r} supports {list(norms)}, got {out['norm']!r}")
    if out["eps"] is None:
        out["eps"] = DEFAULT_EPS[out["norm"]]
    for key in ("restarts", "eot", "steps", "queries", "targets"):
        if key in out and out[key] < 1:
            raise SpecError(f"key {key!r} must be an integer >= 1, got {out[key]}")
    if out["objective"] == "centroid":
        if out["candidates"] < 1 or (out["target"] == "random" and out["candidates"] != 1):
            raise SpecError(
                f"key 'candidates' must be an integer >= 1 (1 with target 'random'), got {out['candidates']}"
            )
        if out["push"] > 1:
            raise SpecError(f"key 'push' must be a number in [0, 1], got {out['push']}")
    for key in ("momentum", "rho", "p_init"):  # APGD's momentum and checkpoint fraction, Square's window area
        if key in out and not 0 <= out[key] <= 1:
            raise SpecError(f"key {key!r} must be a number in [0, 1], got {out[key]}")
    if out.get("n_clusters") is not None and out["n_clusters"] < 2:
        raise SpecError(f"key 'n_clusters' must be an integer >= 2 or null, got {out['n_clusters']}")
    if out["name"] is None:
        out["name"] = default_name(out)
    return out


def default_name(spec: Mapping) -> str:
    """``optimizer-norm-objective[-target]-eps<k>/255``, e.g. ``pgd-linf-centroid-nearest-eps8/255``."""
    parts = [spec["optimizer"], spec["norm"], spec["objective"]]
    if spec.get("target"):
        parts.append(spec["target"] + (f"{spec['candidates']}" if spec.get("candidates", 1) > 1 else ""))
    if spec.get("targets"):
        parts.append(f"top{spec['targets']}")
    return "-".join(parts) + f"-eps{format_eps(spec['eps'])}"


def eps_sweep(spec: Mapping, eps_values: Iterable = SWEEP_EPS) -> list[dict]:
    """Copies of ``spec`` at each eps; a given ``alpha`` keeps its ratio to eps. Names get ``@eps``."""
    base = validate_spec(spec)
    out = []
    for eps in eps_values:
        eps = parse_eps(eps, "key 'eps'", SpecError)
        item = {**base, "eps": eps, "name": f"{base['name']}@{format_eps(eps)}"}
        if base.get("alpha") is not None and base["eps"] > 0:
            item["alpha"] = base["alpha"] * eps / base["eps"]
        out.append(validate_spec(item))
    return out


def validate_suite(suite: Iterable[Mapping]) -> list[dict]:
    """Validate every spec of a suite; names must be unique (they key the results)."""
    specs = [validate_spec(s) for s in suite]
    if not specs:
        raise SpecError("an attack suite needs at least one spec")
    names = [s["name"] for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"attack names must be unique within a suite; repeated: {duplicates} (set 'name')")
    return specs


def _check(key, value, kind, choices):
    if kind == "eps":
        return parse_eps(value, f"key {key!r}", SpecError)
    if kind == "name":
        if not isinstance(value, str) or not value:
            raise SpecError(f"key 'name' must be a non-empty string, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str) or value not in choices:
            raise SpecError(f"key {key!r} must be one of {list(choices)}, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SpecError(f"key {key!r} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"key {key!r} must be an integer, got {value!r}")
        return value
    if isinstance(value, str):
        value = parse_eps(value, f"key {key!r}", SpecError)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SpecError(f"key {key!r} must be a number, got {value!r}")
    if kind == "pos" and not (value > 0 and math.isfinite(value)):
        raise SpecError(f"key {key!r} must be a finite number > 0, got {value!r}")
    if kind == "nonneg" and not (value >= 0 and math.isfinite(value)):
        raise SpecError(f"key {key!r} must be a finite number >= 0, got {value!r}")
    return float(value)


params.ATTACK_SPECS.register("spec", validate_spec)  # params validates attacks.headline and attacks.suite by it
