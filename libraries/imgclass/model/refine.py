"""Refining (fine-tuning) the pretrained DNN on the user's classes.

The backbone's ImageNet head is replaced by dropout + one linear layer with an
output per class, and the network is trained with SGD on augmented training
images. A validation part is held out from the TRAINING set (never the test
set) to choose the best epoch. After every epoch a checkpoint (model,
optimizer, epoch, history, best weights so far) is written atomically; a
re-run with the same setup resumes after the last finished epoch.

In the original tutorial, refining instead of keeping the network fixed raised
the accuracy on its texture data from 88.92% to 92.35%.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler
from torchvision.transforms import ColorJitter
from tqdm import tqdm

from imgclass.io.atomic import atomic_path
from imgclass.model.backbones import BACKBONES, FeatureExtractor
from imgclass.errors import ImgClassError, ParameterError
from imgclass.io.images import UnreadableImageError, load_rgb
from imgclass.model.transforms import CROP_FRACTION, EvalTransform, mean_fill, scale_and_pad
from imgclass.model.runtime import autocast

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


class ClassifierNet(nn.Module):
    """Feature extractor -> dropout -> linear layer with one output per class."""

    def __init__(self, extractor: FeatureExtractor, n_classes: int, dropout: float):
        super().__init__()
        self.extractor = extractor
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(extractor.feature_dim, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.extractor(images)))


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation: colour jitter, scale-and-pad with a margin, random crop, flip.

    Padding keeps the whole object (as the original did); the margin of
    ``1/0.875`` lets the random crop shift and slightly cut it. Randomness
    comes from torch's generator, so a seeded run is reproducible.
    """

    resolution: int
    fill: tuple[int, int, int]
    random_crop: bool = True
    flip: bool = True
    color_jitter: float = 0.0

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.color_jitter > 0:
            s = self.color_jitter
            image = ColorJitter(brightness=s, contrast=s, saturation=s)(image)
        side = round(self.resolution / CROP_FRACTION) if self.random_crop else self.resolution
        canvas = scale_and_pad(image, side, self.fill)
        if self.random_crop and side > self.resolution:
            left, top = (int(v) for v in torch.randint(0, side - self.resolution + 1, (2,)))
            canvas = canvas.crop((left, top, left + self.resolution, top + self.resolution))
        if self.flip and float(torch.rand(())) < 0.5:
            canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(canvas, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class LabeledImageDataset(Dataset):
    """``(uint8 image, class id, readable)``; an unreadable image gives zeros and ``readable=False``."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], transform: Callable[[Image.Image], torch.Tensor],
                 resolution: int):
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        try:
            return self.transform(load_rgb(self.paths[index])), self.targets[index], True
        except UnreadableImageError:
            side = self.resolution
            return torch.zeros((3, side, side), dtype=torch.uint8), self.targets[index], False


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
    model: ClassifierNet
    history: list[dict[str, float]]
    best_epoch: int
    resumed_from: int


def _fingerprint(config: RefineConfig, backbone: str, resolution: int, resize_mode: str, labels: Sequence[str],
                 train_paths: Sequence[Path]) -> str:
    payload = {"config": config.resume_key(), "backbone": backbone, "resolution": resolution,
               "resize_mode": resize_mode, "labels": list(labels), "train": [str(p) for p in train_paths]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _evaluate(model: ClassifierNet, loader: DataLoader, device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Mean loss and error rate over the readable images of ``loader``."""
    model.eval()
    total_loss, wrong, seen = 0.0, 0, 0
    with torch.inference_mode(), autocast(device, dtype):
        for images, targets, readable in loader:
            images, targets = images[readable].to(device), targets[readable].to(device)
            if len(targets) == 0:
                continue
            logits = model(images).float()
            total_loss += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            wrong += int((logits.argmax(1) != targets).sum())
            seen += len(targets)
    return (total_loss / seen, wrong / seen) if seen else (float("nan"), float("nan"))


def refine(extractor: FeatureExtractor, resize_mode: str, config: RefineConfig, train_paths: Sequence[Path],
           train_targets: Sequence[int], labels: Sequence[str], checkpoint_path: Path, device: torch.device,
           dtype: torch.dtype = torch.float32, workers: int = 0, progress: bool = True,
           log: Callable[[str], None] = print,
           on_epoch_end: Callable[[dict[str, float]], None] | None = None) -> RefineResult:
    """Train ``extractor`` + a new head on the training images; resume from ``checkpoint_path`` if it fits.

    Returns the model with the weights of the best epoch (lowest validation
    error; the last epoch when there is no validation part).
    """
    if config.max_epochs < 1:
        raise ImgClassError("refinement needs rf_maxEpochs >= 1")
    if len(set(train_targets)) < 2:
        raise ImgClassError("refinement needs training images of at least 2 classes")
    config.learning_rate(0)  # validates the schedule before any work
    torch.manual_seed(config.seed)
    model = ClassifierNet(extractor, len(labels), config.dropout).to(device)
    if config.freeze_backbone:
        for parameter in model.extractor.parameters():
            parameter.requires_grad_(False)
    groups = [{"params": list(model.head.parameters()), "lr_factor": 1.0}]
    if not config.freeze_backbone:
        groups.append({"params": list(model.extractor.parameters()), "lr_factor": config.backbone_lr_factor})
    optimizer = torch.optim.SGD(groups, lr=config.learning_rate(0), momentum=config.momentum,
                                weight_decay=config.weight_decay)
    use_scaler = device.type == "cuda" and dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    train_idx, val_idx = split_validation(train_targets, config.validation_fraction, config.seed)
    paths = [Path(p) for p in train_paths]
    targets = list(train_targets)
    spec = BACKBONES[extractor.backbone_name]
    fill = mean_fill(spec.mean)
    train_set = LabeledImageDataset([paths[i] for i in train_idx], [targets[i] for i in train_idx],
                                    TrainTransform(extractor.resolution, fill, config.aug_random_crop,
                                                   config.aug_flip, config.aug_color_jitter), extractor.resolution)
    val_set = LabeledImageDataset([paths[i] for i in val_idx], [targets[i] for i in val_idx],
                                  EvalTransform(extractor.resolution, resize_mode, fill), extractor.resolution)
    val_loader = DataLoader(val_set, batch_size=max(config.batch_size, 32), num_workers=workers)

    fingerprint = _fingerprint(config, extractor.backbone_name, extractor.resolution, resize_mode, labels, paths)
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, start_epoch = 0, 0
    if checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if saved.get("format") == CHECKPOINT_FORMAT and saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            history, best_epoch, best_state = saved["history"], saved["best_epoch"], saved["best_model"]
            start_epoch = saved["epoch"]
            log(f"Resuming refinement after epoch {start_epoch} (checkpoint {checkpoint_path})")
        else:
            log(f"Ignoring {checkpoint_path}: it belongs to another setup (backbone, data or rf_* parameters)")
    resumed_from = start_epoch

    for epoch in range(start_epoch, config.max_epochs):
        started = time.perf_counter()
        lr = config.learning_rate(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_factor"]
        torch.manual_seed(config.seed * 100003 + epoch)  # augmentation: reproducible, also after a resume
        sampler = make_sampler(train_set.targets, config.balance_classes, config.max_train_images,
                               config.seed * 100003 + epoch)
        loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, shuffle=sampler is None,
                            num_workers=workers, drop_last=False, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        model.train()
        if config.freeze_backbone:
            model.extractor.eval()  # batch-norm statistics stay as they are: the backbone is untouched
        total_loss, wrong, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.max_epochs}", leave=False, disable=not progress)
        for images, batch_targets, readable in bar:
            images, batch_targets = images[readable].to(device), batch_targets[readable].to(device)
            if len(batch_targets) < 2 and not config.freeze_backbone:
                continue  # batch norm cannot train on a single image
            if len(batch_targets) == 0:
                continue
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                logits = model(images).float()
                loss = nn.functional.cross_entropy(logits, batch_targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += float(loss.detach()) * len(batch_targets)
            wrong += int((logits.detach().argmax(1) != batch_targets).sum())
            seen += len(batch_targets)
        val_loss, val_error = _evaluate(model, val_loader, device, dtype) if len(val_set) else (float("nan"),) * 2
        row = {"epoch": epoch + 1, "learning_rate": lr, "train_loss": total_loss / max(seen, 1),
               "train_error": wrong / max(seen, 1), "validation_loss": val_loss, "validation_error": val_error,
               "seconds": time.perf_counter() - started}
        history.append(row)
        improved = (not len(val_set) or best_state is None
                    or (val_error, val_loss) < (history[best_epoch - 1]["validation_error"],
                                                history[best_epoch - 1]["validation_loss"]))
        if improved:
            best_epoch = epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch + 1,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "history": history, "best_epoch": best_epoch, "best_model": best_state,
            "config": config.resume_key()})
        log(f"epoch {epoch + 1:3d}/{config.max_epochs}  lr {lr:.2g}  train loss {row['train_loss']:.3f}  "
            f"train error {row['train_error']:.3f}  validation error {val_error:.3f}  ({row['seconds']:.1f} s)"
            + ("  *" if improved else ""))
        if on_epoch_end is not None:
            on_epoch_end(row)

    if best_state is not None:
        model.load_state_dict(best_state)
    return RefineResult(copy.deepcopy(model).cpu().eval(), history, best_epoch, resumed_from)
