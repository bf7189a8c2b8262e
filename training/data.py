"""Training data: a Dataset over ``maskdata.layout`` samples, augmentation presets, samplers, loaders.

Every image is first turned into pixels by the ONE eval preprocessing (``maskdata.preprocess.Preprocess``:
JPEG draft decode → EXIF → RGB → crop → aspect policy → resize → uint8 HWC), so validation sees exactly
what export and serving see. Training augments those uint8 pixels further (``training.augment``:
torchvision v2 presets). With ``cache=True`` the decoded images
are kept in memory (128×96 RGB is 37 KB an image), which on a 2-core machine removes most of the
per-epoch cost.

Randomness is a pure function of ``(seed, epoch, position)``: the sampler draws the epoch's order
from its own generator and hands each item a seed for its augmentation, so a resumed run, any
``--workers`` value and any DDP world size see the same pixels as an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from maskdata import labels
from maskdata.layout import Sample
from maskdata.preprocess import Preprocess
from training.augment import AUGMENTS, Augment, create_augment  # noqa: F401  (the presets, re-exported)

log = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + position) % (2**63 - 1)


class MaskDataset(Dataset):
    """Items ``(uint8 (H, W, 3) tensor, target, index)``; keys are an index or ``(index, aug_seed)``."""

    def __init__(self, samples: list[Sample], targets: list[int], preprocess: Preprocess,
                 augment: Augment | None = None, cache: bool = True, threads: int = 2, progress: bool = True):
        assert len(samples) == len(targets)
        self.samples, self.targets = samples, list(targets)
        self.preprocess, self.augment = preprocess, augment
        self.cache: dict[str, np.ndarray] | None = None
        if cache:
            self.cache = decode_all(sorted({s.path for s in samples}), preprocess, threads, progress)

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, i: int) -> np.ndarray:
        path = self.samples[i].path
        return self.cache[path] if self.cache is not None else self.preprocess(path)

    def __getitem__(self, key):
        i, aug_seed = key if isinstance(key, tuple) else (key, None)
        img = torch.from_numpy(np.array(self.pixels(i), copy=True))
        if self.augment is not None and aug_seed is not None:
            g = torch.Generator().manual_seed(aug_seed)
            img = self.augment(img.permute(2, 0, 1), g).permute(1, 2, 0).contiguous()
        return img, self.targets[i], i


def check_crop_fits(preprocess: Preprocess, paths: list[str]) -> None:
    """Fail before decoding when the recorded crop does not fit these images (header read only)."""
    from PIL import Image

    from maskdata.geometry import CropError
    for path in paths:
        with Image.open(path) as img:
            size = img.size[::-1] if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else img.size
        try:
            preprocess.plan(size)
        except CropError as e:
            raise ValueError(f"--crop {preprocess.crop}: {path}: {e}") from None


def decode_all(paths: list[str], preprocess: Preprocess, threads: int, progress: bool) -> dict[str, np.ndarray]:
    """Decode every path once (PIL releases the GIL, so threads use both cores)."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        arrays = list(tqdm(pool.map(preprocess, paths), total=len(paths), desc="decode", unit="img",
                           disable=not progress, leave=False))
    return dict(zip(paths, arrays))


class EpochSampler(Sampler):
    """Deterministic per-epoch order (shuffled, weighted with replacement, or sequential), sharded by rank.

    Training shards are padded to equal length so every DDP rank runs the same number of steps;
    evaluation shards (``pad=False``) are disjoint and together cover each item exactly once.
    """

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, weights: torch.Tensor | None = None,
                 rank: int = 0, world: int = 1, pad: bool = True, augment: bool = True):
        self.n, self.seed, self.shuffle, self.weights = n, seed, shuffle, weights
        self.rank, self.world, self.pad, self.augment = rank, world, pad, augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.pad and self.world > 1 and len(idx) % self.world:
            idx += idx[: self.world - len(idx) % self.world]
        return idx

    def __iter__(self):
        idx = self.order()
        for pos in range(self.rank, len(idx), self.world):
            yield (idx[pos], sample_seed(self.seed, self.epoch, pos)) if self.augment else idx[pos]

    def __len__(self) -> int:
        total = math.ceil(self.n / self.world) * self.world if self.pad else self.n
        return len(range(self.rank, total, self.world))


def oversample(indices: list[int], targets: list[int], factor: int) -> list[int]:
    """Repeat the samples of classes rarer than the median present class ``factor`` times."""
    if factor <= 1:
        return list(indices)
    counts = np.bincount([targets[i] for i in indices], minlength=labels.NUM_CLASSES)
    median = np.median(counts[counts > 0])
    rare = {c for c in range(len(counts)) if 0 < counts[c] < median}
    out = []
    for i in indices:
        out += [i] * (factor if targets[i] in rare else 1)
    return out


def inverse_frequency_weights(targets: list[int]) -> torch.Tensor:
    t = torch.as_tensor(targets, dtype=torch.long)
    counts = torch.bincount(t, minlength=labels.NUM_CLASSES).float()
    return (1.0 / counts[t]).double()


def make_loader(ds: MaskDataset, sampler: EpochSampler, batch_size: int, workers: int,
                pin_memory: bool = False) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=pin_memory, drop_last=False)
