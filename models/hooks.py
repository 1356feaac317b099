"""One API to read and edit any named activation of any shardlab network.

An activation is named by the module that produces it (``embedder.block2.res1.conv1``) or by a
:class:`HookPoint` placed where no module exists (``embedder.block2.res1.resadd_out``,
``blocks.0.hook_resid_pre``). :func:`hooked` attaches edits and caches for one block of code and
always removes them, so a model leaves the ``with`` exactly as it entered. Edits are out-of-place,
so they work under ``torch.inference_mode`` and under autograd alike.

    with hooked(policy, edits={"embedder.block2.res1.resadd_out": add(cheese_vector, -1.0)},
                cache=["embedder.block3.res2.resadd_out"]) as acts:
        logits, value = policy(obs)
    acts["embedder.block3.res2.resadd_out"]  # (N, C, H, W), detached
"""

from __future__ import annotations

import contextlib
import difflib
import operator
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

Edit = Callable[[torch.Tensor], Optional[torch.Tensor]]
Cells = Optional[Sequence[tuple[int, int]]]  # (row, col) positions in the activation's last two dims
Channels = Optional[Union[int, Sequence[int]]]


class HookPoint(nn.Identity):
    """A named place in a forward pass (e.g. a residual add) that hooks can read or edit."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Without hooks a HookPoint is the identity: skipping nn.Module.__call__'s dispatch keeps
        # the ~23 HookPoints of an IMPALA forward from costing ~10% on small inputs (bench interp)
        if (self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                or self._backward_pre_hooks or _module_globals._global_forward_hooks
                or _module_globals._global_forward_pre_hooks or _module_globals._global_backward_hooks
                or _module_globals._global_backward_pre_hooks):
            return super().__call__(x)
        return x


class HookError(KeyError):
    """An activation name the model does not have; the message lists close names."""

    def __str__(self) -> str:
        return str(self.args[0])


def hook_names(model: nn.Module) -> list[str]:
    """Every activation name of ``model`` in forward-definition order (HookPoints and modules)."""
    return [name for name, _ in model.named_modules() if name]


def activation_sites(model: nn.Module) -> list[str]:
    """The activation sites ``model`` declares (``model.activation_sites``): its nonlinearities' outputs."""
    sites = getattr(model, "activation_sites", None)
    if sites is None:
        raise HookError(f"{type(model).__name__} declares no activation_sites; see models.hooks.hook_names(model)")
    return list(sites)


def _module(model: nn.Module, name: str) -> nn.Module:
    if name:
        # walk the dotted path through the child-module tables: far cheaper than listing every
        # module, which matters when hooked() is entered around each forward pass
        module: Optional[nn.Module] = model
        for part in name.split("."):
            module = module._modules.get(part) if module is not None else None
        if module is not None:
            return module
    close = difflib.get_close_matches(name, hook_names(model), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see models.hooks.hook_names(model)"
    raise HookError(f"{type(model).__name__} has no activation named {name!r}{hint}")


@contextlib.contextmanager
def hooked(model: nn.Module, edits: Optional[dict[str, Edit]] = None,
           cache: Iterable[str] = ()) -> Iterator[dict[str, torch.Tensor]]:
    """Apply ``edits`` (name → fn(activation) returning a replacement or None) and record the
    activations named in ``cache`` (after edits) for the duration of the block."""
    edits = dict(edits or {})
    cache = list(cache)
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in dict.fromkeys([*edits, *cache]):
            module = _module(model, name)
            handles.append(module.register_forward_hook(_hook(name, edits.get(name), name in cache, store)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _hook(name: str, edit: Optional[Edit], keep: bool, store: dict[str, torch.Tensor]) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> Optional[torch.Tensor]:
        if edit is not None:
            replaced = edit(output)
            output = output if replaced is None else replaced
        if keep:
            store[name] = output.detach()
        return output if edit is not None else None
    return hook


def run_with_cache(model: nn.Module, inputs: torch.Tensor, names: Iterable[str],
                   edits: Optional[dict[str, Edit]] = None) -> tuple[object, dict[str, torch.Tensor]]:
    """One forward pass; returns the model's output and the named activations."""
    with hooked(model, edits, names) as store:
        out = model(inputs)
    return out, store


# -- edits ------------------------------------------------------------------------------------
def _select(x: torch.Tensor, channels: Channels, cells: Cells) -> tuple:
    """Index tuple for (N, C, ...) activations: all of the batch, chosen channels and cells."""
    chans = slice(None) if channels is None else _channel_list(channels)
    if cells is None:
        return (slice(None), chans)
    rows = torch.tensor([r for r, _ in cells])
    cols = torch.tensor([c for _, c in cells])
    if isinstance(chans, list):
        # (channels × cells) pairs via broadcasting
        return (slice(None), torch.tensor(chans)[:, None], rows[None, :], cols[None, :])
    return (slice(None), chans, rows, cols)


def _channel_list(channels: Union[int, Sequence[int]]) -> list[int]:
    """Channel indices as ints; numpy and 0-d torch integers count as one channel."""
    try:
        return [operator.index(channels)]
    except TypeError:
        return [operator.index(channel) for channel in channels]


def add(vector: torch.Tensor, coefficient: float = 1.0) -> Edit:
    """activation + coefficient · vector (broadcast over the batch)."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        return x + coefficient * vector.to(x.dtype)
    return edit


def replace(value: torch.Tensor) -> Edit:
    """The activation becomes ``value`` (broadcast over the batch)."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        return value.to(x.dtype).expand_as(x).clone()
    return edit


def set_value(value: float, channels: Channels = None, cells: Cells = None) -> Edit:
    """Chosen channels (at chosen cells) are set to ``value``: channel retargeting, ablation."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[_select(x, channels, cells)] = value
        return out
    return edit


def clamp(low: Optional[float] = None, high: Optional[float] = None, channels: Channels = None,
          cells: Cells = None) -> Edit:
    """Chosen channels (at chosen cells) clamped into [low, high]."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        index = _select(x, channels, cells)
        out[index] = out[index].clamp(low, high)
        return out
    return edit


def patch(source: torch.Tensor, channels: Channels = None, cells: Cells = None) -> Edit:
    """Chosen channels (at chosen cells) copied from ``source`` (same shape, or batch 1)."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        index = _select(x, channels, cells)
        out[index] = source.to(x.dtype).expand_as(x)[index]
        return out
    return edit


def compose(*edits: Edit) -> Edit:
    """Apply edits in order."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        for step in edits:
            replaced = step(x)
            x = x if replaced is None else replaced
        return x
    return edit
