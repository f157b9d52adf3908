"""The ``defenses:`` section of params.yaml: one subsection per registered defense, each its options dataclass.

``from_dict(DefensesConfig, params["defenses"], "defenses")`` validates it strictly (a misspelt defense or option
is an error naming the key); a subsection left out takes that defense's defaults. ``options_of(name)`` hands a
defense's options to :func:`eatlib.defenses.build_training` / :func:`eatlib.defenses.build_inference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from eatlib.config import ConfigError
from eatlib.defenses.adp import ADPOptions
from eatlib.defenses.bart import BaRTOptions
from eatlib.defenses.eat import EATOptions
from eatlib.defenses.iat import IATOptions
from eatlib.defenses.input_transform import InputTransformOptions
from eatlib.defenses.mixup_inference import MixupInferenceOptions
from eatlib.defenses.pgd_at import PGDATOptions
from eatlib.defenses.randomization import RandomizationOptions
from eatlib.defenses.standard import StandardOptions
from eatlib.defenses.trades import TRADESOptions


@dataclass(frozen=True)
class DefensesConfig:
    # training defenses
    standard: StandardOptions = field(default_factory=StandardOptions)
    pgd_at: PGDATOptions = field(default_factory=PGDATOptions)
    trades: TRADESOptions = field(default_factory=TRADESOptions)
    iat: IATOptions = field(default_factory=IATOptions)
    adp: ADPOptions = field(default_factory=ADPOptions)
    eat: EATOptions = field(default_factory=EATOptions)
    # inference-time defenses (wrapped around a trained standard model)
    input_transform: InputTransformOptions = field(default_factory=InputTransformOptions)
    randomization: RandomizationOptions = field(default_factory=RandomizationOptions)
    bart: BaRTOptions = field(default_factory=BaRTOptions)
    mixup_inference: MixupInferenceOptions = field(default_factory=MixupInferenceOptions)

    def options_of(self, name: str):
        names = [f.name for f in fields(self)]
        if name not in names:
            raise ConfigError(f"defenses: unknown defense {name!r}; allowed: {names}")
        return getattr(self, name)
