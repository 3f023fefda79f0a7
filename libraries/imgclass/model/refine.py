"""Refining (fine-tuning) the pretrained DNN on the user's classes.

The backbone's ImageNet head is replaced by dropout + one linear layer with an
output per class, and the network is trained with SGD on augmented training
images. A validation part is held out from the TRAINING set (never the test
set) to choose the best epoch. After every epoch a checkpoint (model,
optimizer, epoch, history, best weights so far) is written atomically; a
re-run with the same setup resumes after the last finished epoch. Training
stops early when the validation result has not improved for
``early_stop_patience`` epochs (``'lpft'``: not in the first half of its
schedule); which result counts is :meth:`RefineConfig.improves` (``'lpft'``:
the validation loss first, ``'original'``: the error first).

Two recipes (``rf_recipe``):

- ``'lpft'`` (the default): linear probing, then fine-tuning (LP-FT; Kumar et
  al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features and
  Underperform Out-of-Distribution"). Stage 1 (:func:`fit_linear_probe`) fits
  the new head alone on the frozen backbone's unit-length features: the
  linear SVM of step 4, copied into the head (so at epoch 0 the network
  classifies as that SVM does); the backbone stays
  bit-identical, and this "epoch 0" is a candidate for the best epoch like
  every other. Stage 2 fine-tunes everything from that head: the backbone at
  a lower rate than the head, a linear warm-up then a cosine decay per batch,
  batch-norm statistics kept as pretrained, no dropout, the gradient's norm
  clipped. The best epoch's backbone then gets the probe again, refit on all
  training images (LP-FT-LP): the fine-tuned cross-entropy head classified
  worse than an SVM on the same features. Starting from a
  trained head, the first gradients that reach the backbone are small, so
  fine-tuning adapts the pretrained features instead of wrecking them while
  a random head is being learnt (the paper's point, and what the original
  recipe does on small data sets).
- ``'original'``: the CNTK tutorial's recipe: a random head and the whole
  network trained together from the start, one learning rate per epoch
  (``rf_lrPerMb``), dropout before the head.

The recipe reads top to bottom in :func:`refine`: set up the model and
optimizer, resume, the linear probe (``'lpft'``), then per epoch
:func:`train_one_epoch`, :func:`validate`, checkpoint, early stop. Images
come from the same :class:`~imgclass.model.dataset.ImageDataset` as everywhere
(draft decoding, channels-last batches), and validation and the linear probe's
features go through the same inference loop as step 3
(:func:`imgclass.model.inference.infer`).

How much each recipe gains, and at what cost, depends on the data
(BENCHMARKS.md, docs/refinement.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, WeightedRandomSampler
from tqdm import tqdm

from imgclass.errors import ImgClassError, ParameterError
from imgclass.io.atomic import atomic_path
from imgclass.model.backbones import FeatureExtractor
from imgclass.model.dataset import ImageBatch, ImageDataset, as_batch
from imgclass.model.featurizer import L2Normalize
from imgclass.model.inference import DevicePlan, infer, readable_outputs
from imgclass.model.runtime import Runtime
from imgclass.model.transforms import EvalTransform, TrainTransform, check_tta, with_tta

CHECKPOINT_FORMAT = "imgclass-refinement-1"
#: ``rf_recipe``: linear probing then fine-tuning, or the original tutorial's recipe
RECIPES = ("lpft", "original")
#: ``rf_optimizer``: SGD with momentum, or Adam (the Keras CNN tutorial's, for training from scratch)
OPTIMIZERS = ("sgd", "adam")
#: C values the linear probe chooses from by cross-validation: those of the SVM of step 4 (svm_CVals' default)
PROBE_CS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class RefineConfig:
    """Everything that shapes a refinement run (a typed view of the ``rf_*`` parameters)."""

    dropout: float
    batch_size: int
    max_epochs: int
    max_train_images: int
    lr_per_epoch: tuple[float, ...]
    momentum: float
    weight_decay: float
    freeze_backbone: bool
    backbone_lr_factor: float
    balance_classes: bool
    validation_fraction: float
    aug_random_crop: bool
    aug_flip: bool
    aug_color_jitter: float
    seed: int
    #: evaluation preprocessing of the validation images: 'pad' or 'crop' (``rf_resizeMode``)
    resize_mode: str
    #: 'lpft' or 'original' (see the module's docstring)
    recipe: str = "original"
    #: 'lpft': the head's peak learning rate in fine-tuning (the backbone's is ``backbone_lr_factor`` times it)
    peak_lr: float = 0.005
    #: 'lpft': epochs of linear warm-up before the cosine decay
    warmup_epochs: float = 1.0
    #: stop after this many epochs without a better validation result (0 = never; needs a validation part);
    #: 'lpft' never stops in the first half of its schedule (:meth:`earliest_stop`)
    early_stop_patience: int = 0
    #: test-time augmentation the validation (and so the choice of the best epoch) uses: 'none' or 'flip'
    tta: str = "none"
    #: clip the gradient's norm to this before every step (0 = never)
    max_grad_norm: float = 0.0
    #: the head reads the features scaled to unit length (as the SVM does)
    normalize_features: bool = False
    #: 'sgd' (with ``momentum``) or 'adam' (the Keras CNN tutorial's, for training from scratch); both use the
    #: recipe's learning rates and ``weight_decay`` as an L2 penalty
    optimizer: str = "sgd"
    #: what makes an epoch the best so far (and what early stopping waits for): 'error' (lower validation
    #: error, then lower loss) or 'loss' (lower validation loss, then lower error); see :meth:`improves`
    best_by: str = "error"

    def improves(self, row: dict[str, float], best: dict[str, float] | None) -> bool:
        """Whether the validation result ``row`` beats ``best`` (the best epoch's row so far; None: none yet).

        ``'loss'`` is what ``'lpft'`` uses: its validation part is 10 % of
        the training images (12-20 of them on the benchmark's data), whose
        error moves in steps of 5-8 points and sits still for many epochs
        while fine-tuning improves the predictions' confidence, so choosing by
        error kept an early epoch or the probe where later epochs were better
        on the test images (BENCHMARKS.md). The mean cross-entropy of the same
        predictions moves with every image's margin. ``'error'`` is what the
        original recipe has always used.
        """
        if best is None:
            return True
        first, second = ("validation_loss", "validation_error") if self.best_by == "loss" else \
            ("validation_error", "validation_loss")
        return (row[first], row[second]) < (best[first], best[second])

    def learning_rate(self, epoch: float) -> float:
        """Learning rate at ``epoch`` (0-based; a fraction is a point within an epoch).

        ``'original'``: the list's value of that epoch, the last value
        repeating. ``'lpft'``: linear warm-up to ``peak_lr`` over
        ``warmup_epochs``, then a cosine decay to 0 at ``max_epochs``.
        """
        if self.recipe == "lpft":
            if self.peak_lr <= 0:
                raise ParameterError("parameter 'rf_ftLearningRate' must be > 0")
            warmup = min(self.warmup_epochs, self.max_epochs)
            if epoch < warmup:
                return self.peak_lr * max(epoch, 1e-3) / warmup
            span = max(self.max_epochs - warmup, 1e-9)
            return self.peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warmup) / span)))
        if not self.lr_per_epoch or any(lr <= 0 for lr in self.lr_per_epoch):
            raise ParameterError("parameter 'rf_lrPerMb' must be a non-empty list of positive learning rates")
        return self.lr_per_epoch[min(int(epoch), len(self.lr_per_epoch) - 1)]

    def earliest_stop(self) -> int:
        """The first epoch after which early stopping may end the run.

        ``'lpft'``: half the schedule. While the rate is near its peak the
        validation error of a fine-tuned network commonly rises above the
        probe's for several epochs before it falls below it (BENCHMARKS.md);
        a patience counted from epoch 0 would stop inside that dip and keep
        the probe. ``'original'``: any epoch, as before.
        """
        return math.ceil(self.max_epochs / 2) if self.recipe == "lpft" else 0

    def stops_after(self, epochs_done: int, best_epoch: int) -> bool:
        """Whether early stopping ends the run after ``epochs_done`` epochs whose best so far is ``best_epoch``.

        Never with ``early_stop_patience`` 0, before :meth:`earliest_stop` or
        after the last epoch (the run ends there anyway).
        """
        return bool(self.early_stop_patience) and self.earliest_stop() <= epochs_done < self.max_epochs and \
            epochs_done - best_epoch >= self.early_stop_patience

    def resume_key(self) -> dict[str, Any]:
        """What must be unchanged to continue a run.

        Not the patience (it only says when to stop). For ``'original'``,
        neither ``max_epochs`` (so a run can be extended) nor what only LP-FT
        uses, and ``tta`` only when it is on: a checkpoint written before the
        recipes existed still resumes. LP-FT's schedule depends on
        ``max_epochs``, so its key keeps everything else.
        """
        key = asdict(self)
        key.pop("early_stop_patience")
        if key["optimizer"] == "sgd":  # as before the choice existed: older checkpoints still resume
            key.pop("optimizer")
        if self.recipe == "original":
            for name in ("max_epochs", "recipe", "peak_lr", "warmup_epochs", "max_grad_norm", "normalize_features",
                         "best_by"):
                key.pop(name)
            if key["tta"] == "none":
                key.pop("tta")
        key["lr_per_epoch"] = list(key["lr_per_epoch"])
        return key


@dataclass(frozen=True)
class TrainingImages:
    """The images refinement learns from: files, their class ids, and the class names (ids index them)."""

    paths: tuple[Path, ...]
    targets: tuple[int, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.targets):
            raise ValueError("paths and targets must have the same length")

    def subset(self, indices: Sequence[int]) -> "TrainingImages":
        return TrainingImages(tuple(self.paths[i] for i in indices), tuple(self.targets[i] for i in indices),
                              self.labels)


class ClassifierNet(nn.Module):
    """Feature extractor -> (unit length) -> dropout -> linear layer with one output per class."""

    def __init__(self, extractor: FeatureExtractor, n_classes: int, dropout: float, normalize: bool = False):
        super().__init__()
        self.extractor = extractor
        self.normalize = normalize
        self.norm = L2Normalize() if normalize else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(extractor.feature_dim, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.norm(self.extractor(images))))


def split_validation(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified hold-out of ``fraction`` of each class (indices into ``targets``).

    A class with 3 or more images gives at least one to validation when
    ``fraction > 0``; smaller classes stay entirely in training.
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    train, validation = [], []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label)).tolist()
        n_val = int(round(fraction * len(members))) if fraction > 0 else 0
        if fraction > 0 and len(members) >= 3:
            n_val = max(1, n_val)
        n_val = min(n_val, len(members) - 2) if len(members) > 2 else 0
        validation += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(validation)


def make_sampler(targets: Sequence[int], balance: bool, max_images: int, seed: int) -> Sampler[int] | None:
    """Sampler of one epoch's training images (None = every image once, shuffled).

    ``balance`` draws each class equally often (with replacement);
    ``max_images`` caps the images per epoch.
    """
    n = len(targets)
    count = min(max_images, n) if max_images > 0 else n
    generator = torch.Generator().manual_seed(seed)
    if balance:
        counts = np.bincount(targets)
        weights = torch.tensor([1.0 / counts[t] for t in targets], dtype=torch.double)
        return WeightedRandomSampler(weights, num_samples=max_images if max_images > 0 else n, replacement=True,
                                     generator=generator)
    if count < n:
        return torch.utils.data.RandomSampler(range(n), replacement=False, num_samples=count, generator=generator)
    return None


@dataclass
class RefineResult:
    """The refined network (weights of the best epoch, on the CPU), the per-epoch history, the best epoch.

    Epochs count from 1; ``'lpft'``'s linear probe is epoch 0 (its row comes
    first in ``history``). ``stopped_early``: validation stopped improving
    before ``max_epochs``.
    """

    model: ClassifierNet
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool = False

    @property
    def best(self) -> dict[str, float]:
        """The history row of the best epoch."""
        return next(row for row in self.history if row["epoch"] == self.best_epoch)

    @property
    def fine_tuning_epochs(self) -> list[dict[str, float]]:
        """The rows of the training epochs (without the linear probe)."""
        return [row for row in self.history if row["epoch"] >= 1]


@dataclass
class _Progress:
    """What a checkpoint restores: epochs done, their history, the best epoch and its weights."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False


def _fingerprint(config: RefineConfig, extractor: FeatureExtractor, images: TrainingImages) -> str:
    """What a checkpoint must have been made with to be resumed (the payload of every version so far)."""
    key = config.resume_key()
    resize_mode = key.pop("resize_mode")
    payload = {"config": key, "backbone": extractor.backbone_name, "resolution": extractor.resolution,
               "resize_mode": resize_mode, "labels": list(images.labels), "train": [str(p) for p in images.paths]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check(config: RefineConfig, images: TrainingImages) -> None:
    """Bad setups fail before any work."""
    if config.recipe not in RECIPES:
        raise ParameterError(f"parameter 'rf_recipe' must be one of {RECIPES}, got {config.recipe!r}")
    if config.optimizer not in OPTIMIZERS:
        raise ParameterError(f"parameter 'rf_optimizer' must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    if config.recipe == "original" and config.max_epochs < 1:
        raise ImgClassError("refinement needs rf_maxEpochs >= 1")
    if config.max_epochs < 0:
        raise ImgClassError("refinement needs rf_ftEpochs >= 0")
    if len(set(images.targets)) < 2:
        raise ImgClassError("refinement needs training images of at least 2 classes")
    if config.best_by not in ("error", "loss"):
        raise ImgClassError(f"RefineConfig.best_by must be 'error' or 'loss', got {config.best_by!r}")
    check_tta(config.tta)
    config.learning_rate(0)  # validates the schedule


def _optimizer(model: ClassifierNet, config: RefineConfig) -> torch.optim.Optimizer:
    """SGD (or Adam) over the head, and over the backbone (at ``backbone_lr_factor`` times the rate) unless frozen."""
    if config.freeze_backbone:
        for parameter in model.extractor.parameters():
            parameter.requires_grad_(False)
    groups = [{"params": list(model.head.parameters()), "lr_factor": 1.0}]
    if not config.freeze_backbone:
        groups.append({"params": list(model.extractor.parameters()), "lr_factor": config.backbone_lr_factor})
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.learning_rate(0), weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.learning_rate(0), momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _resume(path: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, device: torch.device, log: Callable[[str], None]) -> _Progress:
    """Load the checkpoint at ``path`` into model/optimizer/scaler if it belongs to this setup."""
    if not path.is_file():
        return _Progress()
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # an unreadable checkpoint only costs the epochs it held
        log(f"Ignoring {path}: it cannot be read ({type(exc).__name__}); starting over")
        return _Progress()
    if not (isinstance(saved, dict) and saved.get("format") == CHECKPOINT_FORMAT
            and saved.get("fingerprint") == fingerprint):
        log(f"Ignoring {path}: it belongs to another setup (backbone, data or rf_* parameters)")
        return _Progress()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    stopped = bool(saved.get("stopped_early", False))
    log(f"Resuming refinement after epoch {saved['epoch']} (checkpoint {path})"
        + ("; it had stopped early" if stopped else ""))
    return _Progress(saved["epoch"], saved["history"], saved["best_epoch"], saved["best_model"], stopped)


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def train_one_epoch(model: ClassifierNet, batches: Iterable[ImageBatch], targets: torch.Tensor,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, runtime: Runtime,
                    freeze_backbone: bool, freeze_batch_norm: bool = False,
                    lr_at: Callable[[float], float] | None = None, max_grad_norm: float = 0.0) -> tuple[float, float]:
    """One pass over ``batches`` (a DataLoader); mean training loss and error over the readable images.

    ``targets[i]`` is the class id of dataset image ``i``. Unreadable images
    are left out of the batch; a batch of a single image is skipped when
    batch norm trains (it cannot normalise one image). ``freeze_batch_norm``
    keeps the backbone's batch-norm statistics as they are (its scales and
    shifts still learn). ``lr_at(fraction)`` gives the learning rate after
    that fraction of the epoch (per-batch schedules); each parameter group
    gets it times its ``lr_factor``. ``max_grad_norm > 0`` clips the
    gradient's norm before each step.
    """
    plan = DevicePlan.for_device(runtime.device)
    model.train()
    if freeze_backbone:
        model.extractor.eval()  # batch-norm statistics stay as they are: the backbone is untouched
    elif freeze_batch_norm:
        for module in model.extractor.modules():
            if _is_batch_norm(module):
                module.eval()
    norm_trains = not (freeze_backbone or freeze_batch_norm)
    n_batches = max(len(batches), 1) if lr_at is not None else 1  # type: ignore[arg-type]
    total_loss, wrong, seen = 0.0, 0, 0
    for step, batch in enumerate(batches):
        readable = batch.readable
        images = batch.images if bool(readable.all()) else batch.images[readable]
        batch_targets = targets[batch.indices[readable]].to(runtime.device)
        if len(batch_targets) == 0 or (len(batch_targets) < 2 and norm_trains):
            continue
        if lr_at is not None:
            lr = lr_at((step + 1) / n_batches)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_factor"]
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            logits = model(plan.to_network_input(images)).float()
            loss = nn.functional.cross_entropy(logits, batch_targets)
        scaler.scale(loss).backward()
        if max_grad_norm > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        total_loss += float(loss.detach()) * len(batch_targets)
        wrong += int((logits.detach().argmax(1) != batch_targets).sum())
        seen += len(batch_targets)
    return total_loss / max(seen, 1), wrong / max(seen, 1)


def validate(model: nn.Module, dataset: ImageDataset, targets: Sequence[int], batch_size: int,
             runtime: Runtime) -> tuple[float, float]:
    """Mean loss and error over the readable images of ``dataset`` (NaN if none), via the inference loop."""
    total_loss, wrong, seen = 0.0, 0, 0
    all_targets = torch.as_tensor(list(targets), dtype=torch.int64)
    for batch in infer(model, dataset, batch_size, runtime):
        readable = batch.readable
        if not readable.any():
            continue
        logits = torch.from_numpy(batch.outputs[readable])
        batch_targets = all_targets[torch.from_numpy(batch.indices[readable])]
        total_loss += float(nn.functional.cross_entropy(logits, batch_targets, reduction="sum"))
        wrong += int((logits.argmax(1) != batch_targets).sum())
        seen += len(batch_targets)
    return (total_loss / seen, wrong / seen) if seen else (float("nan"), float("nan"))


@dataclass
class LinearProbe:
    """Stage 1 of LP-FT: the fitted head, the C chosen, its loss and error on the features it was fit on."""

    head: nn.Linear
    C: float
    train_loss: float
    train_error: float
    seconds: float


def _frozen_features(network: nn.Module, dim: int, images: TrainingImages, transform: EvalTransform,
                     batch_size: int, runtime: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """``network``'s outputs for the readable images and their class ids ``(X, y)``, via the inference loop."""
    X, index = readable_outputs(network, ImageDataset(images.paths, transform), dim, batch_size, runtime)
    return X.astype(np.float64), np.asarray(images.targets)[index]


def fit_linear_probe(extractor: FeatureExtractor, images: TrainingImages, transform: EvalTransform, batch_size: int,
                     runtime: Runtime, seed: int, normalize: bool = True, tta: str = "none") -> LinearProbe:
    """Fit a new head on the frozen ``extractor``'s features of ``images`` (stage 1 of LP-FT).

    The head is the linear SVM of step 4 (:func:`imgclass.model.svm.make_svm`:
    balanced class weights, C from :data:`PROBE_CS` by stratified 5-fold
    cross-validation, :func:`~imgclass.model.svm.select_C`) on the features
    step 3 would compute (with ``tta``), each scaled to unit length when
    ``normalize`` (as the SVM and the refined head read them). Its decision
    function is linear, so it is copied into an ``nn.Linear``: at epoch 0 the
    network classifies exactly as that SVM. ``extractor`` is only read (eval
    mode, no gradients): its weights and batch-norm statistics stay
    bit-identical.
    """
    from sklearn.exceptions import ConvergenceWarning

    from imgclass.model.svm import effective_folds, make_svm, select_C

    started = time.perf_counter()
    X, y = _frozen_features(with_tta(extractor, tta), extractor.feature_dim, images, transform, batch_size, runtime)
    if len(np.unique(y)) < 2:
        raise ImgClassError("the linear probe needs readable training images of at least 2 classes")
    if normalize:
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    C = 1.0
    if np.bincount(y)[np.unique(y)].min() >= 2:
        C = select_C(X, y, list(PROBE_CS), effective_folds(y, 5), False, seed, n_jobs=1).best_C
    with warnings.catch_warnings():  # as step 4: a C that does not converge is simply scored lower
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm = make_svm(C, l2_normalize=False, random_state=seed).fit(X, y)[-1]
    classes = svm.classes_
    coef, intercept = svm.coef_, np.atleast_1d(svm.intercept_)
    if len(classes) == 2:  # binary: one decision value z; logits [-z/2, z/2] choose the same class
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    n_classes = len(images.labels)
    weight = np.zeros((n_classes, X.shape[1]))
    bias = np.full(n_classes, float(intercept.min()) - 10.0)  # a class without training images is never chosen
    weight[classes], bias[classes] = coef, intercept
    head = nn.Linear(X.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    logits = torch.from_numpy(X @ weight.T + bias)
    loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
    error = float((logits.argmax(1).numpy() != y).mean())
    return LinearProbe(head, C, loss, error, time.perf_counter() - started)


def _epoch_seed(config: RefineConfig, epoch: int) -> int:
    """One seed per epoch: augmentation and order are reproducible, also after a resume."""
    return config.seed * 100003 + epoch


def refine(extractor: FeatureExtractor, images: TrainingImages, config: RefineConfig, checkpoint_path: Path,
           runtime: Runtime | None = None, progress: bool = False,
           log: Callable[[str], None] = print) -> RefineResult:
    """Train ``extractor`` + a new head on ``images``; resume from ``checkpoint_path`` if it fits.

    Returns the model with the weights of the best epoch (the best validation
    result by :meth:`RefineConfig.improves`; the last epoch when there is no
    validation part; for ``'lpft'`` the linear probe alone, epoch 0, when no
    fine-tuning epoch beats it). ``runtime`` (default: CPU, fp32, no worker processes) says
    where and at which precision; ``log`` receives one line per epoch.
    """
    _check(config, images)
    runtime = runtime or Runtime()
    device, plan = runtime.device, DevicePlan.for_device(runtime.device)
    lpft = config.recipe == "lpft"
    torch.manual_seed(config.seed)
    model = plan.prepare(ClassifierNet(extractor, len(images.labels), 0.0 if lpft else config.dropout,
                                       config.normalize_features))
    optimizer = _optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and runtime.dtype == torch.float16)

    train_idx, val_idx = split_validation(images.targets, config.validation_fraction, config.seed)
    train, held_out = images.subset(train_idx), images.subset(val_idx)
    spec, resolution = extractor.spec, extractor.resolution
    train_set = ImageDataset(train.paths, TrainTransform.for_backbone(
        spec, resolution, config.aug_random_crop, config.aug_flip, config.aug_color_jitter))
    eval_transform = EvalTransform.for_backbone(spec, resolution, config.resize_mode)
    val_set = ImageDataset(held_out.paths, eval_transform)
    train_targets = torch.as_tensor(train.targets, dtype=torch.int64)
    workers = runtime.workers("training")
    fingerprint = _fingerprint(config, extractor, images)
    val_batch = max(config.batch_size, 32)

    def validation() -> tuple[float, float]:
        if not len(val_set):
            return float("nan"), float("nan")
        return validate(with_tta(model, config.tta), val_set, held_out.targets, val_batch, runtime)

    def save(done: _Progress) -> None:
        _save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": done.epoch,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "history": done.history, "best_epoch": done.best_epoch, "best_model": done.best_state,
            "config": config.resume_key(), "stopped_early": done.stopped_early})

    def record(done: _Progress, row: dict[str, float]) -> bool:
        best = next((r for r in done.history if r["epoch"] == done.best_epoch), None)
        improved = not len(val_set) or done.best_state is None or config.improves(row, best)
        done.history.append(row)
        if improved:
            done.best_epoch = row["epoch"]
            done.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return improved

    done = _resume(checkpoint_path, fingerprint, model, optimizer, scaler, device, log)
    if lpft and not any(row["epoch"] == 0 for row in done.history):
        probe = fit_linear_probe(model.extractor, train, eval_transform, val_batch, runtime, config.seed,
                                 config.normalize_features, config.tta)
        with torch.no_grad():
            model.head.weight.copy_(probe.head.weight)
            model.head.bias.copy_(probe.head.bias)
        val_loss, val_error = validation()
        row = {"epoch": 0, "learning_rate": 0.0, "train_loss": probe.train_loss, "train_error": probe.train_error,
               "validation_loss": val_loss, "validation_error": val_error, "seconds": probe.seconds}
        record(done, row)
        save(done)
        log(f"linear probe (epoch 0): C {probe.C:g}  train error {probe.train_error:.3f}  "
            f"validation loss {val_loss:.3f} error {val_error:.3f}  ({probe.seconds:.1f} s)")

    for epoch in range(done.epoch, config.max_epochs):
        if done.stopped_early:
            break
        started = time.perf_counter()
        lr = config.learning_rate(epoch + 0.5 if lpft else epoch)  # lpft: the rate mid-epoch, for the log
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_factor"]
        seed = _epoch_seed(config, epoch)
        torch.manual_seed(seed)
        sampler = make_sampler(train.targets, config.balance_classes, config.max_train_images, seed)
        loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, shuffle=sampler is None,
                            num_workers=workers, drop_last=False, pin_memory=plan.pin_memory, collate_fn=as_batch,
                            generator=torch.Generator().manual_seed(seed))
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.max_epochs}", leave=False, disable=not progress)
        lr_at = (lambda fraction, epoch=epoch: config.learning_rate(epoch + fraction)) if lpft else None
        train_loss, train_error = train_one_epoch(model, batches, train_targets, optimizer, scaler, runtime,
                                                  config.freeze_backbone, freeze_batch_norm=lpft, lr_at=lr_at,
                                                  max_grad_norm=config.max_grad_norm)
        val_loss, val_error = validation()
        row = {"epoch": epoch + 1, "learning_rate": lr, "train_loss": train_loss, "train_error": train_error,
               "validation_loss": val_loss, "validation_error": val_error, "seconds": time.perf_counter() - started}
        improved = record(done, row)
        done.epoch = epoch + 1
        done.stopped_early = bool(len(val_set)) and config.stops_after(done.epoch, done.best_epoch)
        save(done)
        log(f"epoch {epoch + 1:3d}/{config.max_epochs}  lr {lr:.2g}  train loss {train_loss:.3f}  "
            f"train error {train_error:.3f}  validation loss {val_loss:.3f} error {val_error:.3f}  "
            f"({row['seconds']:.1f} s)"
            + ("  *" if improved else "")
            + (f"\nstopping early: no better validation result for {config.early_stop_patience} epochs"
               if done.stopped_early else ""))

    if done.best_state is not None:
        model.load_state_dict(done.best_state)
    if lpft:
        # The head ends as it started: the probe (step 4's SVM), refit on the chosen backbone's features of every
        # training image, the validation part included. A head trained by cross-entropy in fine-tuning scored below
        # an SVM on the same features (BENCHMARKS.md); the epoch was still chosen with it.
        probe = fit_linear_probe(model.extractor, images, eval_transform, val_batch, runtime, config.seed,
                                 config.normalize_features, config.tta)
        with torch.no_grad():
            model.head.weight.copy_(probe.head.weight)
            model.head.bias.copy_(probe.head.bias)
        log(f"head refit as the linear probe on all {len(images.paths)} training images with the backbone of "
            f"epoch {done.best_epoch} (C {probe.C:g})")
    return RefineResult(copy.deepcopy(model).cpu().eval(), done.history, done.best_epoch, done.stopped_early)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
