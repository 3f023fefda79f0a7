"""Refining (fine-tuning) the pretrained DNN on the user's classes.

The backbone's ImageNet head is replaced by dropout + one linear layer with an
output per class, and the network is trained with SGD on augmented training
images. A validation part is held out from the TRAINING set (never the test
set) to choose the best epoch. After every epoch a checkpoint (model,
optimizer, epoch, history, best weights so far) is written atomically; a
re-run with the same setup resumes after the last finished epoch.

The recipe reads top to bottom in :func:`refine`: set up the model and
optimizer, resume, then per epoch :func:`train_one_epoch`, :func:`validate`,
checkpoint. Images come from the same :class:`~imgclass.model.dataset.ImageDataset`
as everywhere (draft decoding, channels-last batches), and validation runs
through the same inference loop as step 3 (:func:`imgclass.model.inference.infer`).

Whether refining pays off depends on the data: the original tutorial's texture
data gained from it, the demo data does not (README, BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
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
from imgclass.model.inference import DevicePlan, infer
from imgclass.model.runtime import Runtime
from imgclass.model.transforms import EvalTransform, TrainTransform

CHECKPOINT_FORMAT = "imgclass-refinement-1"


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

    def learning_rate(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (0-based); the list's last value repeats."""
        if not self.lr_per_epoch or any(lr <= 0 for lr in self.lr_per_epoch):
            raise ParameterError("parameter 'rf_lrPerMb' must be a non-empty list of positive learning rates")
        return self.lr_per_epoch[min(epoch, len(self.lr_per_epoch) - 1)]

    def resume_key(self) -> dict[str, Any]:
        """What must be unchanged to continue a run: all but ``max_epochs`` (so a run can be extended)."""
        key = asdict(self)
        key.pop("max_epochs")
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
    """Feature extractor -> dropout -> linear layer with one output per class."""

    def __init__(self, extractor: FeatureExtractor, n_classes: int, dropout: float):
        super().__init__()
        self.extractor = extractor
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(extractor.feature_dim, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.extractor(images)))


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
    """The refined network (weights of the best epoch, on the CPU), the per-epoch history, the best epoch (1-based)."""

    model: ClassifierNet
    history: list[dict[str, float]]
    best_epoch: int


@dataclass
class _Progress:
    """What a checkpoint restores: epochs done, their history, the best epoch and its weights."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None


def _fingerprint(config: RefineConfig, extractor: FeatureExtractor, images: TrainingImages) -> str:
    """What a checkpoint must have been made with to be resumed (the payload of every version so far)."""
    key = config.resume_key()
    resize_mode = key.pop("resize_mode")
    payload = {"config": key, "backbone": extractor.backbone_name, "resolution": extractor.resolution,
               "resize_mode": resize_mode, "labels": list(images.labels), "train": [str(p) for p in images.paths]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check(config: RefineConfig, images: TrainingImages) -> None:
    """Bad setups fail before any work."""
    if config.max_epochs < 1:
        raise ImgClassError("refinement needs rf_maxEpochs >= 1")
    if len(set(images.targets)) < 2:
        raise ImgClassError("refinement needs training images of at least 2 classes")
    config.learning_rate(0)  # validates the schedule


def _optimizer(model: ClassifierNet, config: RefineConfig) -> torch.optim.SGD:
    """SGD over the head, and over the backbone (at ``backbone_lr_factor`` times the rate) unless frozen."""
    if config.freeze_backbone:
        for parameter in model.extractor.parameters():
            parameter.requires_grad_(False)
    groups = [{"params": list(model.head.parameters()), "lr_factor": 1.0}]
    if not config.freeze_backbone:
        groups.append({"params": list(model.extractor.parameters()), "lr_factor": config.backbone_lr_factor})
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
    log(f"Resuming refinement after epoch {saved['epoch']} (checkpoint {path})")
    return _Progress(saved["epoch"], saved["history"], saved["best_epoch"], saved["best_model"])


def train_one_epoch(model: ClassifierNet, batches: Iterable[ImageBatch], targets: torch.Tensor,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, runtime: Runtime,
                    freeze_backbone: bool) -> tuple[float, float]:
    """One pass over ``batches`` (a DataLoader); mean training loss and error over the readable images.

    ``targets[i]`` is the class id of dataset image ``i``. Unreadable images
    are left out of the batch; a batch of a single image is skipped when
    batch norm trains (it cannot normalise one image).
    """
    plan = DevicePlan.for_device(runtime.device)
    model.train()
    if freeze_backbone:
        model.extractor.eval()  # batch-norm statistics stay as they are: the backbone is untouched
    total_loss, wrong, seen = 0.0, 0, 0
    for batch in batches:
        readable = batch.readable
        images = batch.images if bool(readable.all()) else batch.images[readable]
        batch_targets = targets[batch.indices[readable]].to(runtime.device)
        if len(batch_targets) == 0 or (len(batch_targets) < 2 and not freeze_backbone):
            continue
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            logits = model(plan.to_network_input(images)).float()
            loss = nn.functional.cross_entropy(logits, batch_targets)
        scaler.scale(loss).backward()
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


def _epoch_seed(config: RefineConfig, epoch: int) -> int:
    """One seed per epoch: augmentation and order are reproducible, also after a resume."""
    return config.seed * 100003 + epoch


def refine(extractor: FeatureExtractor, images: TrainingImages, config: RefineConfig, checkpoint_path: Path,
           runtime: Runtime | None = None, progress: bool = False,
           log: Callable[[str], None] = print) -> RefineResult:
    """Train ``extractor`` + a new head on ``images``; resume from ``checkpoint_path`` if it fits.

    Returns the model with the weights of the best epoch (lowest validation
    error, then loss; the last epoch when there is no validation part).
    ``runtime`` (default: CPU, fp32, no worker processes) says where and at
    which precision; ``log`` receives one line per epoch.
    """
    _check(config, images)
    runtime = runtime or Runtime()
    device, plan = runtime.device, DevicePlan.for_device(runtime.device)
    torch.manual_seed(config.seed)
    model = plan.prepare(ClassifierNet(extractor, len(images.labels), config.dropout))
    optimizer = _optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and runtime.dtype == torch.float16)

    train_idx, val_idx = split_validation(images.targets, config.validation_fraction, config.seed)
    train, held_out = images.subset(train_idx), images.subset(val_idx)
    spec, resolution = extractor.spec, extractor.resolution
    train_set = ImageDataset(train.paths, TrainTransform.for_backbone(
        spec, resolution, config.aug_random_crop, config.aug_flip, config.aug_color_jitter))
    val_set = ImageDataset(held_out.paths, EvalTransform.for_backbone(spec, resolution, config.resize_mode))
    train_targets = torch.as_tensor(train.targets, dtype=torch.int64)
    workers = runtime.workers("training")

    done = _resume(checkpoint_path, _fingerprint(config, extractor, images), model, optimizer, scaler, device, log)
    for epoch in range(done.epoch, config.max_epochs):
        started = time.perf_counter()
        lr = config.learning_rate(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_factor"]
        seed = _epoch_seed(config, epoch)
        torch.manual_seed(seed)
        sampler = make_sampler(train.targets, config.balance_classes, config.max_train_images, seed)
        loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, shuffle=sampler is None,
                            num_workers=workers, drop_last=False, pin_memory=plan.pin_memory, collate_fn=as_batch,
                            generator=torch.Generator().manual_seed(seed))
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.max_epochs}", leave=False, disable=not progress)
        train_loss, train_error = train_one_epoch(model, batches, train_targets, optimizer, scaler, runtime,
                                                  config.freeze_backbone)
        val_loss, val_error = (validate(model, val_set, held_out.targets, max(config.batch_size, 32), runtime)
                               if len(val_set) else (float("nan"), float("nan")))
        row = {"epoch": epoch + 1, "learning_rate": lr, "train_loss": train_loss, "train_error": train_error,
               "validation_loss": val_loss, "validation_error": val_error, "seconds": time.perf_counter() - started}
        done.history.append(row)
        best = done.history[done.best_epoch - 1] if done.best_state is not None else None
        improved = (not len(val_set) or best is None
                    or (val_error, val_loss) < (best["validation_error"], best["validation_loss"]))
        if improved:
            done.best_epoch = epoch + 1
            done.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        done.epoch = epoch + 1
        _save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "fingerprint": _fingerprint(config, extractor, images),
            "epoch": done.epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "history": done.history, "best_epoch": done.best_epoch,
            "best_model": done.best_state, "config": config.resume_key()})
        log(f"epoch {epoch + 1:3d}/{config.max_epochs}  lr {lr:.2g}  train loss {train_loss:.3f}  "
            f"train error {train_error:.3f}  validation error {val_error:.3f}  ({row['seconds']:.1f} s)"
            + ("  *" if improved else ""))

    if done.best_state is not None:
        model.load_state_dict(done.best_state)
    return RefineResult(copy.deepcopy(model).cpu().eval(), done.history, done.best_epoch)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
