"""Small-image pipeline resident on the device: no DataLoader workers, no PIL.

The whole uint8 dataset (N, 3, H, W) lives on the training device (GPU memory, or RAM on CPU).
Each batch is cropped with zero padding and flipped with tensor ops, optionally augmented by
a policy (RandAugment, AutoAugment, TrivialAugment: lwrcli.data.device_augment), then
normalised, so a CIFAR epoch costs a few kernel launches instead of 50,000 PIL round trips.

With `views=V > 1` (the contrastive losses: two augmented views of each image) a training
batch is (B, V, 3, H, W): the same device-resident images augmented V times with independent
draws from the loader's generator (view 0 draws first, as a one-view loader would), gathered
once and never copied to the host; resuming restores the generator as for one view.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from lwrcli.data.device_augment import AugmentPolicy
from lwrcli.data.samplers import epoch_indices
from lwrcli.data.transforms import TTE_EXPAND


def draw_crop_flip(
    b: int, padding: int, flip: bool, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Crop offsets (oy, ox) in [0, 2p] and flip flags for b samples, drawn in that order."""
    oy = ox = mask = None
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=generator)
    if flip:
        mask = torch.rand(b, device=device, generator=generator) < 0.5
    return oy, ox, mask


def apply_crop_flip(
    images: torch.Tensor,
    padding: int,
    oy: torch.Tensor | None,
    ox: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Crop (zero padding, like torchvision's RandomCrop(padding=p)) at the given offsets and
    flip where `mask`. images: (B, 3, H, W) uint8 -> (B, 3, H, W) uint8."""
    b, c, h, w = images.shape
    dev = images.device
    if oy is not None and ox is not None:
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B,1,H,1)
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B,1,1,W)
        bidx = torch.arange(b, device=dev)[:, None, None, None]
        cidx = torch.arange(c, device=dev)[None, :, None, None]
        images = padded[bidx, cidx, rows, cols]
    if mask is not None:
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample random crop and horizontal flip, drawn from `generator`."""
    params = draw_crop_flip(images.shape[0], padding, flip, generator, images.device)
    return apply_crop_flip(images, padding, *params)


class DeviceImageLoader:
    """Batches of normalised float images from a device-resident uint8 tensor.

    Shuffling and augmentation draw from one `torch.Generator` on the device, whose state (with
    the epoch's order and position) is saved in checkpoints, so a run resumed between any two
    batches replays the same batches. Training walks global batches of batch_size x
    world_size images; under torchrun each process takes its contiguous part of each.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        padding: int = 4,
        flip: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        sampler: str = "instance",
        num_samples_cls: int = 4,
        epochs: int = 1,
        resize: int | None = None,
        tte: bool = False,
        policy: AugmentPolicy | None = None,
        views: int = 1,
        drop_last: bool = False,
    ) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.images = images
        # Training batches of `views` independently augmented copies: (B, V, 3, H, W) when > 1.
        self.views = views
        # Training: leave out the last partial global batch (as the image-list pipeline does).
        self.drop_last = drop_last
        # RandAugment / AutoAugment / TrivialAugment after crop and flip (training only).
        self.policy = policy
        # Upsampled size (None: as stored); `tte`: evaluation batches become LIFT's five crops
        # of the image upsampled to resize + 24, shape (B, 5, 3, S, S).
        self.resize, self.tte = resize, tte
        self.labels = labels
        self.batch_size = batch_size
        self.train = train
        self.padding = padding
        self.flip = flip
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.sampler, self.num_samples_cls, self.epochs = sampler, num_samples_cls, epochs
        dev = images.device
        self.mean = torch.tensor(mean, device=dev).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=dev).view(1, 3, 1, 1) * 255.0
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)
        self.last_global_batch = batch_size * world_size  # size of the last global batch
        # Mid-epoch position: the epoch's order (drawn at its first batch) and batches done.
        self._epoch = -1
        self._order: torch.Tensor | None = None
        self._position = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Steps per epoch. Training walks the split in global batches (batch_size per process
        x world_size), keeping a last partial one that every process can share (unless
        `drop_last`); evaluation walks this process's shard."""
        n = len(self.labels)
        if not self.train:
            per_rank = (n - self.rank + self.world_size - 1) // self.world_size
            return (per_rank + self.batch_size - 1) // self.batch_size
        full, rest = divmod(n, self.global_batch_size)
        return full + (1 if rest >= self.world_size and not self.drop_last else 0)

    @property
    def position(self) -> int:
        """Batches of the current epoch already handed out (where a resumed epoch starts)."""
        return self._position

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch`, unless a restored mid-epoch state is for this very epoch. The
        generator carries on from the last epoch, so order and augmentation replay exactly."""
        if epoch != self._epoch:
            self._epoch, self._order, self._position = epoch, None, 0

    def _draw_order(self) -> torch.Tensor:
        """This epoch's order of the whole split (the same on every process): a permutation,
        or the sampler's draws (class-balanced, square-root, progressive)."""
        progress = min(max(self._epoch, 0) / self.epochs, 1.0)  # the sampler's t, in [0, 1]
        return epoch_indices(
            self.sampler, self.labels, self.generator, progress, self.num_samples_cls
        )

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float, upsampled to `resize` when set (bilinear, as
        torchvision's Resize), normalised; LIFT's five crops when `tte`."""
        x = batch.float()
        if self.tte:
            return self._five_crops(x)
        if self.resize is not None and self.resize != x.shape[-1]:
            x = _upsample(x, self.resize)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _five_crops(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 5, 3, S, S): corners and centre of the image upsampled to
        S + 24 (torchvision's FiveCrop order), S = `resize` or the stored size."""
        size = self.resize or x.shape[-1]
        big = _upsample(x, size + TTE_EXPAND)
        crops = TF.five_crop(big, [size, size])
        return (torch.stack(crops, dim=1) - self.mean.unsqueeze(1)) / self.std.unsqueeze(1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.train:
            order = torch.arange(len(self.labels), device=self.images.device)
            order = order[self.rank :: self.world_size]
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                yield self.normalize(self.images[idx]), self.labels[idx]
            return
        for chunk, mine in self._steps():
            idx = chunk[mine]
            images = self.images[idx]  # gathered once on the device, shared by every view
            views = [self._augment(images, len(chunk), mine) for _ in range(self.views)]
            x = views[0] if self.views == 1 else torch.stack(views, dim=1)
            yield x, self.labels[idx]

    def _augment(self, images: torch.Tensor, global_size: int, mine: torch.Tensor) -> torch.Tensor:
        """One augmented, normalised view of this process's `images` (B, 3, H, W) uint8. The
        global batch's augmentation is drawn as one process would draw it and this process
        takes its contiguous part `mine`, so 1 or W processes see the same crops and flips at
        the same step."""
        dev = self.images.device
        params = draw_crop_flip(global_size, self.padding, self.flip, self.generator, dev)
        ops = None
        if self.policy is not None:  # drawn after crop/flip: runs without it are unchanged
            h, w = self.images.shape[-2:]
            ops = self.policy.draw(global_size, h, w, self.generator, dev)
        mine_params = [p[mine] if p is not None else None for p in params]
        batch = apply_crop_flip(images, self.padding, *mine_params)
        if self.policy is not None and ops is not None:
            batch = self.policy(batch, ops[0][mine], ops[1][mine])
        return self.normalize(batch)

    def batch_indices(self) -> Iterator[torch.Tensor]:
        """This process's training batches as index tensors (B,), advancing the position: what
        `__iter__` loads, and what a loader over cached features indexes instead."""
        for chunk, mine in self._steps():
            yield chunk[mine]

    def _steps(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per step from the current position: the global batch's indices and the positions in
        it that are this process's part."""
        if self._order is None:
            self._order, self._position = self._draw_order(), 0
        gb, dev = self.global_batch_size, self.images.device
        while self._position < len(self):
            chunk = self._order[self._position * gb : (self._position + 1) * gb]
            part = torch.tensor_split(torch.arange(len(chunk), device=dev), self.world_size)
            self.last_global_batch = len(chunk)
            self._position += 1
            yield chunk, part[self.rank]
        self._order, self._position = None, 0  # the next pass is a new epoch

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator state, and inside an epoch its permutation (of the whole split, so every
        rank can restore from rank 0's file) and position: an exact resume point between two
        batches."""
        state = {"generator": self.generator.get_state(), "epoch": torch.tensor([self._epoch])}
        if self._order is not None:
            state["order"] = self._order.cpu()
            state["position"] = torch.tensor([self._position])
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"].cpu())
        self._epoch = int(state["epoch"])
        self._order, self._position = None, 0
        if "order" in state:
            self._order = state["order"].to(self.images.device)
            self._position = int(state["position"])


def _upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float (B, 3, H, W) in [0, 255] -> (B, 3, size, size): torchvision's Resize (bilinear,
    antialiased), the transform LIFT applies to CIFAR images before a 224-px CLIP."""
    return TF.resize(x, [size, size], antialias=True).clamp_(0.0, 255.0)
