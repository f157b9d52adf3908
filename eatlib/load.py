"""``load_params``: params.yaml -> :class:`eatlib.params.Params`, with every name it may use registered.

:mod:`eatlib.params` validates names and options against registries that the modules defining them fill when
imported (datasets, architectures, losses, defenses, attack specs). This module sits above all of them: it
imports each one, so that loading through it always validates the whole file.
"""

from __future__ import annotations

from pathlib import Path

import eatlib.attacks  # noqa: F401  (registers the attack spec check)
import eatlib.data  # noqa: F401  (registers the datasets and their options)
import eatlib.defenses  # noqa: F401  (registers the defenses' option types)
import eatlib.losses  # noqa: F401  (registers the losses and their options)
import eatlib.models  # noqa: F401  (registers the architectures and their options)
from eatlib.params import Params, from_dict, load_yaml


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml: a bad value is a :class:`eatlib.params.ConfigError` naming its key."""
    return from_dict(Params, load_yaml(path))


__all__ = ["load_params"]
