"""The network step 3 runs, with the preprocessing it needs, saved as one checkpoint (``featurizer.pth``).

Step 2 builds a :class:`Featurizer` (the pretrained backbone, or refined) and
saves it; step 3, the predictor and the notebooks load it. The checkpoint is a
dict of plain values and tensors (loadable with ``weights_only=True``: no code
runs on loading), in the format written since the first release
(``imgclass-featurizer-1``), so older files keep loading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclass.errors import ImgClassError, MissingArtifactError
from imgclass.model.backbones import FeatureExtractor, build_feature_extractor
from imgclass.model.transforms import EvalTransform, check_tta, with_tta

CHECKPOINT_FORMAT = "imgclass-featurizer-1"
OUTPUTS = ("features", "logits")
#: what the head reads: the features as they are, or scaled to unit length (L2), as the SVM reads them
HEAD_INPUTS = ("raw", "l2")
REBUILD_HINT = "re-run scripts/2_refineDNN.py (and steps 3-4) to rebuild it"


class L2Normalize(nn.Module):
    """Each row scaled to unit length (what the SVM of step 4 does to its features)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features.float(), dim=1)


@dataclass
class Featurizer:
    """A feature extractor, the preprocessing its inputs need, and optionally a trained head.

    A refined network (step 2 with ``classifier='dnn'`` or ``'svmDnnRefined'``)
    keeps its new last layer in ``head`` with the class names in ``labels``;
    ``output`` says whether step 3 stores the penultimate ``'features'`` or
    the head's class scores (``'logits'``). ``tta`` is the test-time
    augmentation every consumer of :attr:`network` gets (``'none'``,
    ``'flip'``, ``'scales'`` or ``'flip+scales'``, see
    :func:`imgclass.model.transforms.with_tta`); checkpoints
    written before it existed load as ``'none'``. ``head_input='l2'``: the
    head reads the features scaled to unit length (LP-FT's head does; older
    files load as ``'raw'``).
    """

    extractor: FeatureExtractor
    resize_mode: str
    #: where the weights came from (a file path, 'random initialisation', or the refinement run)
    source: str
    head: nn.Linear | None = None
    labels: list[str] | None = None
    output: str = "features"
    tta: str = "none"
    head_input: str = "raw"

    def __post_init__(self) -> None:
        check_tta(self.tta)
        if self.head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input must be one of {HEAD_INPUTS}, got {self.head_input!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "logits" and (self.head is None or not self.labels):
            raise ValueError("output='logits' needs a head and its labels")

    @property
    def network(self) -> nn.Module:
        """The module step 3 runs: the extractor, or extractor + head for class scores, with its TTA."""
        network: nn.Module = self.extractor
        if self.output == "logits":
            norm = [L2Normalize()] if self.head_input == "l2" else []
            network = nn.Sequential(self.extractor, *norm, self.head).eval()
        return with_tta(network, self.tta)

    @property
    def output_dim(self) -> int:
        return len(self.labels or []) if self.output == "logits" else self.extractor.feature_dim

    @property
    def transform(self) -> EvalTransform:
        """The evaluation preprocessing: the backbone's recipe at this resolution and resize mode."""
        return EvalTransform.for_backbone(self.extractor.spec, self.extractor.resolution, self.resize_mode)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description, stored with every artifact made from these features."""
        return {**self.extractor.recipe(), "resize_mode": self.resize_mode, "source": self.source,
                "output": self.output, "output_dim": self.output_dim, "labels": self.labels, "tta": self.tta,
                "head_input": self.head_input}

    def fingerprint(self) -> str:
        """SHA-256 of what determines the outputs: the recipe and every weight (not where they came from).

        Two featurizers with the same fingerprint compute the same features, so
        features stored for one can be reused for the other (see
        :mod:`imgclass.model.feature_store`). The file ``featurizer.pth`` itself is
        not hashed: ``torch.save`` writes different bytes for the same weights.
        """
        digest = hashlib.sha256()
        recipe = {k: v for k, v in self.describe().items() if k != "source"}
        for name, before in (("tta", "none"), ("head_input", "raw")):
            if recipe[name] == before:  # as before these existed: features stored then stay valid
                del recipe[name]
        digest.update(json.dumps(recipe, sort_keys=True).encode())
        modules = {"extractor": self.extractor, "head": self.head}
        for prefix, module in modules.items():
            if module is None:
                continue
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(f"{prefix}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        return digest.hexdigest()

    def save(self, path: Path) -> None:
        """Save as a checkpoint dict of plain values and tensors (loadable with weights_only=True)."""
        from imgclass.io.atomic import atomic_path

        checkpoint = {"format": CHECKPOINT_FORMAT, **self.describe(),
                      "state_dict": self.extractor.state_dict(),
                      "head_state_dict": None if self.head is None else self.head.state_dict()}
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    @classmethod
    def load(cls, path: Path) -> "Featurizer":
        """Load ``featurizer.pth``; a one-line error saying how to rebuild it if it cannot be used."""
        path = Path(path)
        if not path.is_file():
            raise MissingArtifactError(f"{path} does not exist: run scripts/2_refineDNN.py first")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated file, not a torch file, unsafe pickle content
            raise MissingArtifactError(f"{path} cannot be read ({type(exc).__name__}); {REBUILD_HINT}") from exc
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise MissingArtifactError(f"{path} is not a featurizer checkpoint; {REBUILD_HINT}")
        try:
            extractor = build_feature_extractor(checkpoint["backbone"], checkpoint["resolution"])
            extractor.load_state_dict(checkpoint["state_dict"], strict=True)
            head = None
            if checkpoint.get("head_state_dict") is not None:
                weight = checkpoint["head_state_dict"]["weight"]
                head = nn.Linear(weight.shape[1], weight.shape[0])
                head.load_state_dict(checkpoint["head_state_dict"], strict=True)
                head.eval()
            return cls(extractor.eval(), checkpoint["resize_mode"], checkpoint["source"], head,
                       checkpoint.get("labels"), checkpoint.get("output", "features"), checkpoint.get("tta", "none"),
                       checkpoint.get("head_input", "raw"))
        except (KeyError, RuntimeError, ValueError, ImgClassError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise MissingArtifactError(f"{path} does not fit this version of imgclass ({reason}); "
                                       f"{REBUILD_HINT}") from exc
