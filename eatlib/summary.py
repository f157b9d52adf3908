"""The compact summary of an attack document: the few numbers DVC shows (``dvc metrics show``, ``dvc exp show``).

The full document (``results/metrics/<arch>/<defense>/seed<k>.json``, ``results/ablation/<variant>.json``) carries every
attack, spec, timing and config; registered as DVC metrics it makes a table of hundreds of columns. The summary keeps
clean, headline-attack and worst-case AMI, ARI and Recall@1, and what the run cost, under flat keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

from eatlib import checkpoint
from eatlib.layout import seed_of

# Short keys, because `dvc metrics show` makes one column per key and sorts them: ami, ami_atk, ami_min, ari, ...
SCORES = {"ami": "ami", "ari": "ari", "r@1": "recall@1"}  # summary name -> key of the document's score dicts
DIGITS = 3  # the differences between defenses are in the second decimal; more digits only widen the table


class SummaryError(ValueError):
    """An attack document without a section or key the summary needs."""


def summarize(document: dict) -> dict[str, float | int]:
    """Flat, rounded summary of an attack stage's document (see :func:`eatlib.pipeline.attack`)::

        {"ami", "ari", "r@1",                    clean
         "ami_atk", "ari_atk", "r@1_atk",        under the headline attack (the suite's first, ``headline``)
         "ami_min", "ari_min", "r@1_min",        worst case: per-metric minimum over the suite (``worst``)
         "train_min", "fb_images", "attack_s"}   the deployed model's training wall time (minutes) and
                                                 forward-backward images; the attack stage's wall time (s)
    """
    headline = _get(document, "headline")
    sections = {"": ("clean",), "_atk": ("attacks", headline), "_min": ("worst",)}  # key suffix -> document path
    summary: dict[str, float | int] = {}
    for suffix, path in sections.items():
        for name, key in SCORES.items():
            summary[f"{name}{suffix}"] = round(float(_get(document, *path, key)), DIGITS)
    summary["train_min"] = round(float(_get(document, "cost", "train_seconds")) / 60, 2)
    summary["fb_images"] = int(_get(document, "cost", "forward_backward_images"))
    summary["attack_s"] = round(float(_get(document, "seconds")))
    return summary


def summary_path(document_path: str | Path, results: str | Path = "results") -> Path:
    """Where the summary of ``document_path`` goes: ``results/summary/<arch>/<defense>/seed<k>.json`` for
    ``results/metrics/<arch>/<defense>/seed<k>.json`` (the same as :func:`eatlib.layout.summary_path`) and
    ``results/summary/ablation/<variant>.json`` for ``results/ablation/<variant>.json``. Outside those folders,
    so that the report's readers (which read every JSON file there) never meet a summary."""
    path, results = Path(document_path), Path(results)
    try:
        relative = path.relative_to(results)
    except ValueError:
        relative = None
    if (relative is not None and relative.parts[0] == "metrics" and len(relative.parts) == 4
            and seed_of(relative) is not None and relative.suffix == ".json"):
        return results / "summary" / Path(*relative.parts[1:])
    if relative is not None and relative.parts[0] == "ablation" and len(relative.parts) == 2:
        return results / "summary" / "ablation" / relative.name
    raise SummaryError(f"{path}: not an attack document; expected {results}/metrics/<arch>/<defense>/seed<k>.json "
                       f"or {results}/ablation/<variant>.json")


def write_summary(document_path: str | Path, results: str | Path = "results", *,
                  out_path: str | Path | None = None) -> Path:
    """Summarise the attack document at ``document_path`` into ``out_path`` (default :func:`summary_path`, which
    takes the seed from the document's file name); returns that path."""
    out = Path(out_path) if out_path is not None else summary_path(document_path, results)
    checkpoint.write_json(summarize(checkpoint.read_json(document_path)), out)
    return out


def _get(mapping: dict, *keys: str):
    value = mapping
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            dotted = ".".join(keys[: depth + 1])
            raise SummaryError(f"attack document has no {dotted!r}; write it with eatlib.pipeline.attack")
        value = value[key]
    return value


if __name__ == "__main__":  # python -m eatlib.summary results/metrics/*/*/seed*.json results/ablation/*.json
    for document in sys.argv[1:]:
        print(write_summary(document))
