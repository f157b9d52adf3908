"""Sanity checks of an attack evaluation (is the reported robustness an attack failure?), and their table.

Each check turns attack results into ``{"check", "passed", "value", "threshold", "detail"}`` (``passed`` is
``None`` when the check could not be run, e.g. a sweep without the large eps). The checks (issue 12):

- ``convergence``: doubling the steps (queries) of the strongest attack changes the worst-case AMI by < 0.01;
- ``monotone``: robust AMI does not increase with eps over the sweep (up to k-means noise, ``tolerance``);
- ``chance``: at eps 64/255 AMI falls below 0.05 (an attack with room to spare reaches chance);
- ``noise``: uniform noise of the same eps changes AMI by < 0.02 (the attack, not the perturbation, hurts);
- ``gradient_free``: the gradient-free attack is not stronger than the white-box ones by more than 0.02 AMI,
  else the defense is flagged as masking gradients;
- ``transfer``: white-box beats transfer (lower AMI than every transfer attack, up to ``tolerance``).

:func:`sanity_checks` runs them all from :func:`eatlib.strong.evaluate_strong` results plus the extra runs;
:func:`sanity_table` writes ``results/tables/sanity.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from eatlib.params import format_eps

METRIC = "ami"
CONVERGENCE_TOL = 0.01
MONOTONE_TOL = 0.01  # k-means noise: a flat AMI near chance wobbles by about this much
CHANCE_AMI, CHANCE_EPS = 0.05, 64 / 255
NOISE_TOL = 0.02
GRADIENT_FREE_TOL = 0.02
GRADIENT_FREE = ("square",)
NO_GRADIENT = ("square", "noise")
MASKING = "masking gradients"


def _check(name: str, passed: bool | None, value: float | None, threshold: float, detail: str) -> dict:
    return {"check": name, "passed": passed, "value": value, "threshold": threshold, "detail": detail}


def white_box(results: Mapping) -> dict[str, float]:
    """AMI of each white-box gradient attack of a strong-protocol result (no transfer source, not Square/noise)."""
    return {name: a[METRIC] for name, a in results["attacks"].items()
            if a.get("source") is None and a["spec"]["optimizer"] not in NO_GRADIENT}


def gradient_free(results: Mapping) -> dict[str, float]:
    """AMI of each gradient-free (Square) attack crafted on the attacked model."""
    return {name: a[METRIC] for name, a in results["attacks"].items()
            if a.get("source") is None and a["spec"]["optimizer"] in GRADIENT_FREE}


def transfer(results: Mapping) -> dict[str, float]:
    """AMI of each transfer attack (crafted on a source model)."""
    return {name: a[METRIC] for name, a in results["attacks"].items() if a.get("source") is not None}


def strongest_attack(results: Mapping) -> str:
    """The white-box attack with the lowest AMI: the one :func:`convergence` doubles."""
    scores = white_box(results)
    if not scores:
        raise ValueError("no white-box gradient attack in the results: convergence needs one")
    return min(scores, key=scores.get)


def double_budget(spec: Mapping) -> dict:
    """A copy of ``spec`` with twice the steps (Square: queries), named ``<name>x2``, for :func:`convergence`."""
    key = "queries" if "queries" in spec else "steps"
    if key not in spec:
        raise ValueError(f"attack {spec.get('name')!r} has no steps or queries to double")
    return {**spec, key: 2 * spec[key], "name": f"{spec['name']}x2"}


def convergence(worst_ami: float, doubled_ami: float, *, tol: float = CONVERGENCE_TOL) -> dict:
    """Worst-case AMI before, and after adding the strongest attack run with doubled steps (``doubled_ami``)."""
    change = worst_ami - min(worst_ami, doubled_ami)
    return _check("convergence", change < tol, change, tol,
                  f"worst AMI {worst_ami:.3f} -> {min(worst_ami, doubled_ami):.3f} with the strongest attack x2")


def sweep_points(results: Mapping, metric: str = METRIC) -> dict[float, float]:
    """``{eps: metric}`` of an eps-sweep result (:func:`eatlib.evaluate.evaluate_eps_sweep`), sorted by eps."""
    points = {a["spec"]["eps"]: a[metric] for a in results["attacks"].values()}
    return dict(sorted(points.items()))


def monotone(points: Mapping[float, float], *, tol: float = MONOTONE_TOL) -> dict:
    """AMI never rises by ``tol`` or more from one eps of the sweep to the next larger one."""
    ordered = sorted(points.items())
    if len(ordered) < 2:
        return _check("monotone", None, None, tol, "needs a sweep of at least two eps")
    rise = max(b - a for (_, a), (_, b) in zip(ordered, ordered[1:], strict=False))
    where = ", ".join(f"{format_eps(e)}: {v:.3f}" for e, v in ordered)
    return _check("monotone", rise < tol, max(rise, 0.0), tol, f"AMI over eps {where}")


def chance(points: Mapping[float, float], *, eps: float = CHANCE_EPS, threshold: float = CHANCE_AMI) -> dict:
    """At ``eps`` (64/255) the AMI is below ``threshold`` (0.05)."""
    value = next((v for e, v in points.items() if abs(e - eps) < 1e-9), None)
    if value is None:
        return _check("chance", None, None, threshold, f"the sweep has no eps {format_eps(eps)}")
    return _check("chance", value < threshold, value, threshold, f"AMI {value:.3f} at eps {format_eps(eps)}")


def noise(clean_ami: float | Sequence[float], noise_ami: float | Sequence[float], *, tol: float = NOISE_TOL) -> dict:
    """Uniform noise of the attack's eps changes the AMI by less than ``tol``. Either AMI may be a sequence
    (one per k-means seed), compared by its mean: one k-means on a few hundred points moves AMI by about 0.03,
    more than the tolerance, so small sets need several seeds."""
    clean_ami, noise_ami = float(np.mean(clean_ami)), float(np.mean(noise_ami))
    change = abs(clean_ami - noise_ami)
    return _check("noise", change < tol, change, tol, f"clean AMI {clean_ami:.3f}, noise {noise_ami:.3f}")


def gradient_free_check(white_box_ami: float, gradient_free_ami: float, *, tol: float = GRADIENT_FREE_TOL) -> dict:
    """The gradient-free attack's AMI is not below the white-box worst case by ``tol`` or more; failing flags
    gradient masking."""
    gap = white_box_ami - gradient_free_ami
    return _check("gradient_free", gap < tol, gap, tol,
                  f"white-box AMI {white_box_ami:.3f}, gradient-free {gradient_free_ami:.3f}"
                  + ("" if gap < tol else f": {MASKING}"))


def transfer_check(white_box_ami: float, transfer_amis: Mapping[str, float], *, tol: float = 0.0) -> dict:
    """The white-box worst case is at least as strong (AMI as low, up to ``tol``) as every transfer attack."""
    if not transfer_amis:
        return _check("transfer", None, None, tol, "no transfer attack")
    best = min(transfer_amis, key=transfer_amis.get)
    gap = white_box_ami - transfer_amis[best]
    return _check("transfer", gap <= tol, gap, tol,
                  f"white-box AMI {white_box_ami:.3f}, best transfer {best} {transfer_amis[best]:.3f}")


def sanity_checks(
    results: Mapping,
    *,
    doubled: Mapping | None = None,
    sweep: Mapping | None = None,
    noise_results: Mapping | None = None,
    clean_ami: float | Sequence[float] | None = None,
) -> list[dict]:
    """Every check from a strong-protocol result (:func:`eatlib.strong.evaluate_strong`) and the extra runs:
    ``doubled`` the scores (a dict with ``"ami"``) of :func:`double_budget` of :func:`strongest_attack`,
    ``sweep`` an eps-sweep result, ``noise_results`` the scores of uniform noise at the attack eps (its
    ``"ami"`` may be a list over k-means seeds, then pass ``clean_ami`` likewise; default: the results' clean
    AMI). A check whose input is missing is reported as not run."""
    worst = results["worst"][METRIC]
    wb = white_box(results)
    wb_worst = min(wb.values()) if wb else None
    checks = [convergence(worst, doubled[METRIC]) if doubled is not None else
              _check("convergence", None, None, CONVERGENCE_TOL, "no doubled run")]
    points = sweep_points(sweep) if sweep is not None else {}
    checks += [monotone(points), chance(points)]
    clean_ami = results["clean"][METRIC] if clean_ami is None else clean_ami
    checks.append(noise(clean_ami, noise_results[METRIC]) if noise_results is not None else
                  _check("noise", None, None, NOISE_TOL, "no noise run"))
    free = gradient_free(results)
    if free and wb_worst is not None:
        checks.append(gradient_free_check(wb_worst, min(free.values())))
    else:
        checks.append(_check("gradient_free", None, None, GRADIENT_FREE_TOL, "needs a white-box and a Square attack"))
    checks.append(transfer_check(wb_worst, transfer(results)) if wb_worst is not None else
                  _check("transfer", None, None, 0.0, "no white-box attack"))
    return checks


def masking_gradients(checks: list[dict]) -> bool:
    """Whether the gradient-free check failed (the defense is flagged as masking gradients)."""
    return any(c["check"] == "gradient_free" and c["passed"] is False for c in checks)


def _cell(check: dict) -> str:
    if check["passed"] is None:
        return "n/a"
    return f"{'pass' if check['passed'] else 'FAIL'} ({check['value']:.3f})"


def describe_spec(spec: Mapping) -> str:
    """``name: optimizer norm eps=.. key=value ...`` with every hyper-parameter of a validated spec."""
    skip = {"name", "optimizer", "norm", "eps"}
    options = " ".join(f"{k}={v}" for k, v in spec.items() if k not in skip and v is not None)
    return f"{spec['name']}: {spec['optimizer']} {spec['norm']} eps={format_eps(spec['eps'])} {options}".strip()


def sanity_table(rows: Mapping[str, list[dict]], specs: list[Mapping], *, title: str = "Sanity checks") -> str:
    """Markdown: one row per model (``rows``: model name -> :func:`sanity_checks`), one column per check
    (pass/FAIL with the measured value), a flag column; the caption lists thresholds and every attack
    hyper-parameter (``specs``: the strong ensemble, as recorded in its results' ``hyperparameters``)."""
    names = [c["check"] for c in next(iter(rows.values()))]
    lines = [f"### {title}", "", "| model | " + " | ".join(names) + " | flag |",
             "|---|" + "---|" * (len(names) + 1)]
    for model, checks in rows.items():
        by_name = {c["check"]: c for c in checks}
        flag = MASKING if masking_gradients(checks) else ""
        lines.append(f"| {model} | " + " | ".join(_cell(by_name[n]) for n in names) + f" | {flag} |")
    thresholds = (f"convergence: worst AMI change < {CONVERGENCE_TOL} with the strongest attack's steps doubled; "
                  f"monotone: AMI rises < {MONOTONE_TOL} between sweep eps; chance: AMI < {CHANCE_AMI} at eps "
                  f"{format_eps(CHANCE_EPS)}; noise: uniform noise changes AMI < {NOISE_TOL}; gradient_free: Square "
                  f"not below white-box AMI by >= {GRADIENT_FREE_TOL} (else '{MASKING}'); transfer: white-box AMI "
                  "<= every transfer attack's. Values in parentheses are the measured quantities.")
    attacks = "; ".join(describe_spec(s) for s in specs)
    lines += ["", f"*Caption.* {thresholds} Attacks: {attacks}.", ""]
    return "\n".join(lines)
