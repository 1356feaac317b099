"""IMPALA forwards of image batches that differ from one background only in a small box each.

A vector field puts the mouse on every open square of one maze: ~126 images per 15×15 maze that
are pixel-identical except for the few pixels of the mouse. Most of an IMPALA forward is spent in
its first block, at full and half resolution, where a convolution's output only changes within a
pixel of where its input changed. :func:`local_forward` runs the background once, then each image
only inside a window around its changed box, growing the window by each layer's reach (one square
per 3×3 convolution, the pooled footprint for the max-pool), and pastes the windows into the
background's activations when a window would cover most of the map; the rest of the network runs
as usual, hooks included. The answer is the plain forward's up to float rounding (tests compare).

It applies on the CPU (a GPU runs the whole batch faster than the bookkeeping) where the windowed
layers carry no hooks and plain ReLUs (no sparse activations), with gradients off; anywhere else, or when the images do not share a background (boxes wider than a
quarter of the image), it is the plain forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from shardlab.models.impala import ImpalaBlock, ImpalaPolicy, ResidualBlock

__all__ = ["local_forward"]

MIN_BATCH = 16  # below this the background and the windows cost more than they save
MAX_BOX_FRACTION = 0.25  # an image differing from the background over more than this is not "local"
MAX_WINDOW_FRACTION = 0.6  # a window wider than this fraction of its map is cheaper run whole

NEG_INF = float("-inf")


class _Windows:
    """Per-image square windows of an activation map: values (N, C, s, s) at origins (oy, ox)."""

    def __init__(self, values: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor):
        self.values, self.oy, self.ox = values, oy, ox

    @property
    def size(self) -> int:
        return self.values.shape[-1]


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _plain_relus(block: ImpalaBlock) -> bool:
    return all(getattr(res, name) is None for res in (block.res1, block.res2) for name in ("act1", "act2"))


def _background_windows(base: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, size: int,
                        fill: float) -> torch.Tensor:
    """(N, C, size, size): the background map (1, C, H, W) over each window, ``fill`` outside the map."""
    height, width = base.shape[-2:]
    pad = max(0, -int(min(oy.min(), ox.min())), int(oy.max()) + size - height, int(ox.max()) + size - width)
    padded = F.pad(base, (pad, pad, pad, pad), value=fill)[0] if pad else base[0]
    # every size×size window as a strided view; indexing it copies only the N wanted
    views = padded.unfold(1, size, 1).unfold(2, size, 1)  # (C, H', W', size, size)
    return views[:, oy + pad, ox + pad].permute(1, 0, 2, 3)


def _grow(win: _Windows, base: torch.Tensor, fill: float, by: int) -> torch.Tensor:
    """Each image's map over its window widened by ``by`` on every side: its own values inside the
    window, the background ``base`` around them (``fill`` outside the map)."""
    out = _background_windows(base, win.oy - by, win.ox - by, win.size + 2 * by, fill).clone()
    out[:, :, by:by + win.size, by:by + win.size] = win.values
    return out


def _outside_map(oy: torch.Tensor, ox: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """(N, 1, size, size) True where a window position lies outside the (height, width) map."""
    steps = torch.arange(size)
    rows, cols = oy[:, None] + steps, ox[:, None] + steps
    inside = (((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :])
    return ~inside[:, None]


def _conv(win: _Windows, base_in: torch.Tensor, conv: nn.Conv2d, fill: float = 0.0) -> _Windows:
    """A padded 3×3 convolution on the windows: the output window is one wider on every side,
    ``fill`` where it lies outside the map (the next layer's padding value)."""
    crop = _grow(win, base_in, 0.0, 2)
    out = F.conv2d(crop.contiguous(memory_format=torch.channels_last), conv.weight, conv.bias)
    oy, ox = win.oy - 1, win.ox - 1
    return _Windows(out.masked_fill(_outside_map(oy, ox, out.shape[-1], *base_in.shape[-2:]), fill), oy, ox)


def _pool(win: _Windows, base_in: torch.Tensor) -> Optional[_Windows]:
    """max_pool2d(3, stride 2, padding 1) on even-aligned, even-sized windows (-inf outside the
    map, as the pool's padding); None when the windows are not aligned so."""
    if win.size % 2 or bool((win.oy % 2).any()) or bool((win.ox % 2).any()):
        return None
    # outputs oy/2 .. (oy + size)/2 read inputs oy - 1 .. oy + size + 1
    crop = _grow(win, base_in, NEG_INF, 2)[:, :, 1:, 1:]
    out = F.max_pool2d(crop.contiguous(memory_format=torch.channels_last), 3, 2)
    oy, ox = win.oy // 2, win.ox // 2
    height, width = (_pooled(side) for side in base_in.shape[-2:])
    return _Windows(out.masked_fill(_outside_map(oy, ox, out.shape[-1], height, width), 0.0), oy, ox)


def _block_pool(block: ImpalaBlock, win: _Windows, base: torch.Tensor) -> Optional[tuple[_Windows, torch.Tensor]]:
    """conv → max-pool of ``block`` on the windows and on the background ``base``."""
    base_conv = block.conv(base)
    pooled = _pool(_conv(win, base, block.conv, NEG_INF), base_conv)
    return None if pooled is None else (pooled, F.max_pool2d(base_conv, kernel_size=3, stride=2, padding=1))


def _residual(res: ResidualBlock, win: _Windows, base: torch.Tensor) -> tuple[_Windows, torch.Tensor]:
    """relu → conv → relu → conv, plus the input, on the windows and on the background."""
    base_mid = res.conv1(F.relu(base))
    mid = _conv(_Windows(F.relu(win.values), win.oy, win.ox), F.relu(base), res.conv1)
    out = _conv(_Windows(F.relu(mid.values), mid.oy, mid.ox), F.relu(base_mid), res.conv2)
    return _Windows(out.values + _grow(win, base, 0.0, 2), out.oy, out.ox), res.conv2(F.relu(base_mid)) + base


def _boxes(x: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """(background (1, C, H, W), window origins oy, ox (N,), window side) of a batch whose images
    differ from a shared background in a small box each; None when they do not."""
    n = x.shape[0]
    a, b, c = x[0], x[n // 2], x[n - 1]  # a pixel two of three agree on is the background's
    background = torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))[None]
    changed = (x != background).any(1)  # (N, H, W)
    rows, cols = changed.any(2), changed.any(1)
    height, width = changed.shape[1:]
    first_row, first_col = rows.float().argmax(1), cols.float().argmax(1)
    last_row = height - 1 - rows.flip(1).float().argmax(1)
    last_col = width - 1 - cols.flip(1).float().argmax(1)
    empty = ~rows.any(1)  # identical to the background: any window will do
    first_row, first_col = first_row.masked_fill(empty, 0), first_col.masked_fill(empty, 0)
    last_row, last_col = last_row.masked_fill(empty, 0), last_col.masked_fill(empty, 0)
    # origins ≡ 3 (mod 4) and sides ≡ 0 (mod 4) keep every window on the pools' grid (the conv before
    # each pool moves the origin by one) through the first two blocks, all windows alike
    oy, ox = first_row - (first_row - 3).remainder(4), first_col - (first_col - 3).remainder(4)
    side = int(torch.maximum(last_row - oy, last_col - ox).max()) + 1
    side += (-side) % 4
    if side > MAX_BOX_FRACTION * min(height, width):
        return None
    return background, oy, ox, side


def _windowable(policy: ImpalaPolicy) -> int:
    """How many leading stages (each block's conv + pool, then its residual blocks) may run windowed:
    those without hooks or sparse activations, in blocks without hooks of their own."""
    if _has_hooks(policy) or _has_hooks(policy.embedder):
        return 0
    count = 0
    for block in policy.embedder.blocks:
        if _has_hooks(block) or not _plain_relus(block):
            return count
        for parts in ((block.conv, block.maxpool_out), tuple(block.res1.modules()), tuple(block.res2.modules())):
            if any(_has_hooks(module) for module in parts):
                return count
            count += 1
    return count


def local_forward(policy: Any, x: torch.Tensor) -> Any:
    """``policy(x)`` for a batch of images that share a background, computing the early layers
    only where each image differs from it; the plain forward wherever that does not apply."""
    if (not isinstance(policy, ImpalaPolicy) or torch.is_grad_enabled() or x.device.type != "cpu"
            or x.dim() != 4 or x.shape[0] < MIN_BATCH or x.shape[-1] != x.shape[-2]):
        return policy(x)
    windowable = _windowable(policy)
    found = _boxes(x) if windowable else None
    if found is None:
        return policy(x)
    base, oy, ox, side = found
    win = _Windows(_background_windows(x, oy, ox, side, 0.0).clone(), oy, ox)
    for index in range(x.shape[0]):  # each image's own pixels (windows may reach past the image)
        y, x0 = int(oy[index]), int(ox[index])
        (r0, r1), (c0, c1) = _clip(y, side, x.shape[-2]), _clip(x0, side, x.shape[-1])
        win.values[index, :, r0:r1, c0:c1] = x[index, :, y + r0:y + r1, x0 + c0:x0 + c1]
    # stage by stage while the windows stay small, then paste them into the background and go on
    # with the modules themselves (their hooks fire there)
    stages = [stage for block in policy.embedder.blocks for stage in (block, block.res1, block.res2)]
    done = 0
    for stage in stages[:windowable]:
        pooled = isinstance(stage, ImpalaBlock)
        grown = win.size // 2 + 2 if pooled else win.size + 4
        if grown > MAX_WINDOW_FRACTION * (_pooled(base.shape[-1]) if pooled else base.shape[-1]):
            break
        step = _block_pool(stage, win, base) if pooled else _residual(stage, win, base)
        if step is None:
            break
        win, base = step
        done += 1
    hidden = _paste(win, base)
    for number, block in enumerate(policy.embedder.blocks):
        if done <= 3 * number:  # not started: the block as a whole
            hidden = block(hidden)
            continue
        for stage in stages[max(done, 3 * number):3 * number + 3]:  # the rest of the block it stopped in
            hidden = stage.pool(hidden) if stage is block else stage(hidden)
    return policy.heads(policy.embedder.head(hidden))


def _clip(origin: int, size: int, limit: int) -> tuple[int, int]:
    """The part [start, stop) of a window at ``origin`` (positions inside it) that lies in 0..limit."""
    return max(0, -origin), min(size, limit - origin)


def _paste(win: _Windows, base: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W): the background with each image's window pasted over it."""
    height, width = base.shape[-2:]
    out = base.expand(win.values.shape[0], -1, -1, -1).contiguous(memory_format=torch.channels_last)
    for index in range(out.shape[0]):
        y, x = int(win.oy[index]), int(win.ox[index])
        (r0, r1), (c0, c1) = _clip(y, win.size, height), _clip(x, win.size, width)
        out[index, :, y + r0:y + r1, x + c0:x + c1] = win.values[index, :, r0:r1, c0:c1]
    return out


def _pooled(side: int) -> int:
    return side // 2 + side % 2
