"""Parameter profiles: partial params files laid over params.yaml (e.g. ``params-paper.yaml``, the paper scale).

A profile holds only the keys it changes. Laying it over the params follows DVC's ``-S key=value``: a mapping is
entered key by key, anything else (a value, a list, or an empty mapping such as ``options: {}``) replaces what
was there. ``python -m eatlib.profiles params-paper.yaml`` prints the ``-S`` overrides that make ``dvc exp run``
do exactly that (what ``make paper`` runs); :func:`overlay` does the same in Python.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

import yaml


def overlay(params: Mapping, profile: Mapping, key: str = "") -> dict:
    """``params`` with ``profile`` laid over it (neither is modified). A key of ``profile`` missing from
    ``params`` is an error naming it: a profile changes existing parameters, it does not invent new ones."""
    merged = dict(params)
    for name, value in profile.items():
        dotted = f"{key}.{name}" if key else str(name)
        if name not in merged:
            raise KeyError(f"{dotted}: the profile sets a key that params.yaml does not have; fix its spelling "
                           "or add the key to params.yaml first")
        if isinstance(value, Mapping) and value and isinstance(merged[name], Mapping):
            merged[name] = overlay(merged[name], value, dotted)
        else:
            merged[name] = value
    return merged


def overrides(profile: Mapping, params: Mapping, key: str = "") -> list[str]:
    """The profile as DVC ``-S`` arguments that turn ``params`` into ``overlay(params, profile)``:
    ``["-S", "train.lr=0.0001", ...]``. DVC merges a mapping value into the one it replaces, so an empty mapping
    becomes deletions of the old keys (``-S ~models.resnet.options.width``). Values are JSON (a YAML subset DVC
    parses) without spaces, so that a shell may split the printed line safely."""
    args: list[str] = []
    for name, value in profile.items():
        dotted = f"{key}.{name}" if key else str(name)
        old = params.get(name) if isinstance(params, Mapping) else None
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if value:
                args += overrides(value, old, dotted)
            else:
                args += [arg for sub in old for arg in ("-S", f"~{dotted}.{sub}")]
            continue
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if any(c.isspace() for c in str(text)):
            raise ValueError(f"{dotted}: values with spaces cannot be passed as -S overrides, got {text!r}")
        args += ["-S", f"{dotted}={text}"]
    return args


def emptied_mappings(profile: Mapping, params: Mapping, key: str = "") -> list[str]:
    """Dotted keys of the non-empty mappings of ``params`` that ``profile`` empties (DVC deletes their keys)."""
    found = []
    for name, value in profile.items():
        dotted = f"{key}.{name}" if key else str(name)
        old = params.get(name) if isinstance(params, Mapping) else None
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            found += emptied_mappings(value, old, dotted) if value else ([dotted] if old else [])
    return found


def block_mappings(text: str, dotted_keys: list[str]) -> list[str]:
    """Those of ``dotted_keys`` that ``text`` (a YAML file) writes as block mappings rather than ``{flow}`` ones.
    DVC cannot delete every key of a commented block mapping ("YAML file structure is corrupted")."""
    root = yaml.compose(text)
    block = []
    for dotted in dotted_keys:
        node = root
        for part in dotted.split("."):
            node = next(value for key, value in node.value if key.value == part)
        if not node.flow_style:
            block.append(dotted)
    return block


def load_profile(path: str | Path) -> dict:
    profile = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(profile, Mapping):
        raise ValueError(f"{path}: a profile is a mapping of params.yaml keys to values, got {type(profile).__name__}")
    return dict(profile)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Print a profile as -S overrides for `dvc exp run`.")
    parser.add_argument("profile", help="a partial params file, e.g. params-paper.yaml")
    parser.add_argument("--params", default="params.yaml", help="checked: every key of the profile must exist here")
    args = parser.parse_args(argv)
    text = Path(args.params).read_text()
    profile, params = load_profile(args.profile), yaml.safe_load(text)
    try:
        overlay(params, profile)
    except KeyError as error:
        raise SystemExit(f"{args.profile}: {error.args[0]}") from None
    block = block_mappings(text, emptied_mappings(profile, params))
    if block:
        raise SystemExit(f"{args.params}: {', '.join(block)}: {args.profile} empties these mappings, which DVC can "
                         "only do when they are written in flow style on one line, e.g. `options: {a: 1, b: 2}`; "
                         "rewrite them so in params.yaml (comments may follow on the same line)")
    print(" ".join(overrides(profile, params)))


if __name__ == "__main__":
    main()
