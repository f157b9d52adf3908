"""``mixup_inference``: Mixup Inference (Pang et al., 2020), adapted to embeddings.

MI mixes the input with clean references, ``x~ = lam * x + (1 - lam) * x_s``, and averages the model's outputs
over several references: a perturbation's effect shrinks by ``lam`` while the clean signal, for a model that is
linear between samples (mixup training makes it so), survives as ``F(x~) ~ lam F(x) + (1 - lam) F(x_s)``.
Embeddings have no predicted label to choose references by (MI-PL), so references are drawn uniformly from a
pool of clean training images (MI-OL's spirit) and their own share is removed:
``z(x) = normalise(mean_k [f(lam x + (1 - lam) x_k) - (1 - lam) f(x_k)])``. The references' clean embeddings are
computed once, at the first forward pass (the wrapped model must be trained and in its inference mode by then).
``randomized``: evaluate with EOT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eatlib.defenses.inference import InferenceDefense
from eatlib.defenses.registry import register_inference, require


@dataclass(frozen=True)
class MixupInferenceOptions:
    lam: float = 0.6  # weight of the input in the mix
    samples: int = 8  # references per input, averaged
    num_references: int = 512  # size of the reference pool drawn from the references given
    seed: int = 0

    def __post_init__(self):
        require(0 < self.lam <= 1, "lam", self.lam, "0 < value <= 1")
        require(self.samples >= 1, "samples", self.samples, "an integer >= 1")
        require(self.num_references >= 1, "num_references", self.num_references, "an integer >= 1")


@register_inference("mixup_inference", MixupInferenceOptions)
class MixupInference(InferenceDefense):
    randomized = True

    def __init__(self, model: nn.Module, options: MixupInferenceOptions, *, references: torch.Tensor | None = None):
        super().__init__(model, options)
        if not (isinstance(references, torch.Tensor) and references.ndim == 4 and len(references)):
            raise ValueError(
                "mixup_inference needs clean reference images: pass references=<float tensor [R,3,S,S] in [0,1]> "
                "(e.g. training images; never test images)"
            )
        if not references.is_floating_point():
            references = references.float() / 255
        pick = torch.randperm(len(references), generator=torch.Generator().manual_seed(options.seed))
        self.register_buffer("references", references[pick[: options.num_references]].clone())
        self._reference_embeddings: torch.Tensor | None = None

    def reference_embeddings(self) -> torch.Tensor:
        if self._reference_embeddings is None or self._reference_embeddings.device != self.references.device:
            with torch.no_grad():
                self._reference_embeddings = torch.cat([self.model(chunk) for chunk in self.references.split(256)])
        return self._reference_embeddings

    def forward(self, x):
        lam, samples = self.options.lam, self.options.samples
        generator = self.generator(x.device)
        pick = torch.randint(len(self.references), (samples, len(x)), generator=generator, device=x.device)
        mixed = lam * x.unsqueeze(0) + (1 - lam) * self.references[pick]  # [samples, B, 3, S, S]
        z = self.model(mixed.flatten(0, 1)).view(samples, len(x), -1)
        z = z - (1 - lam) * self.reference_embeddings()[pick]
        return F.normalize(z.mean(0), dim=1)
