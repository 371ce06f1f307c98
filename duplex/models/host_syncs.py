"""Counts the operations that make the host wait for the device (a "host sync") in a stretch of code.

On CUDA, `.item()`, `.tolist()`, `.cpu()`, a tensor's truth value (`if mask.any():`), `nonzero` and the like
block the Python thread until every kernel queued before them has run, and a blocking host-to-device copy
(`torch.from_numpy(x).to("cuda")`) waits for the stream too. Each one costs a round trip per tick and
breaks the overlap of Python with the GPU. They run the same on CPU, so they can be counted without a GPU:
`HostSyncCounter` is a TorchFunctionMode that records every such call with the line of our code (or of
moshi's) that made it. tests/test_host_syncs.py holds the step path to a budget; scripts/gpu_check.py
reports the count beside the CUDA timings.
"""

from __future__ import annotations

import collections
import traceback
import typing as tp

import torch
from torch.overrides import TorchFunctionMode

# Calls that return host values computed from device data: a sync on CUDA.
_READS = {
    torch.Tensor.item: "item", torch.Tensor.tolist: "tolist", torch.Tensor.cpu: "cpu",
    torch.Tensor.__bool__: "bool", torch.Tensor.__int__: "int", torch.Tensor.__float__: "float",
    torch.Tensor.__index__: "index", torch.Tensor.nonzero: "nonzero", torch.nonzero: "nonzero",
    torch.Tensor.masked_select: "masked_select", torch.masked_select: "masked_select",
    torch.Tensor.unique: "unique", torch.unique: "unique",
}


class HostSyncCounter(TorchFunctionMode):
    """Within `with HostSyncCounter() as c:`, `c.count` is the number of calls that would make the host
    wait on CUDA, and `c.sites` says which and where ("kind file:line" -> count).

    Reads: `.item()`, `.tolist()`, `.cpu()`, truth values, `nonzero`, boolean-mask indexing, `.to("cpu")`
    of a device tensor. Blocking copies ("h2d"): a tensor made from host data inside the block
    (`torch.from_numpy`, `torch.tensor`, `torch.as_tensor`) moved by `.to(device)` or `copy_` without
    `non_blocking=True`; PyTorch waits for the stream after such a copy. On CPU the same calls run, so
    the count is the CUDA count without a GPU."""

    _MAKERS = ("from_numpy", "tensor", "as_tensor")

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()
        self._host: set[int] = set()     # ids of host tensors made inside the block
        self._kept: list[torch.Tensor] = []   # keeps them alive, so that an id is never reused
        self._saved: dict[str, tp.Any] = {}

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def by_kind(self) -> dict[str, int]:
        out: collections.Counter[str] = collections.Counter()
        for site, n in self.sites.items():
            out[site.split(" ", 1)[0]] += n
        return dict(out)

    def __enter__(self) -> "HostSyncCounter":
        for name in self._MAKERS:
            original = getattr(torch, name)
            self._saved[name] = original
            setattr(torch, name, self._marking(original))
        return super().__enter__()

    def __exit__(self, *exc: tp.Any) -> None:
        for name, original in self._saved.items():
            setattr(torch, name, original)
        self._saved.clear()
        self._kept.clear()
        return super().__exit__(*exc)

    def _marking(self, maker: tp.Callable) -> tp.Callable:
        def make(*args: tp.Any, **kwargs: tp.Any) -> torch.Tensor:
            tensor = maker(*args, **kwargs)
            if tensor.device.type == "cpu":
                self._host.add(id(tensor))
                self._kept.append(tensor)
            return tensor
        return make

    def __torch_function__(self, func: tp.Any, types: tp.Any, args: tuple = (), kwargs: dict | None = None) -> tp.Any:
        kwargs = kwargs or {}
        kind = _READS.get(func)
        if kind is None and func is torch.Tensor.to:
            kind = self._to_kind(args, kwargs)
        elif kind is None and func is torch.Tensor.copy_ and len(args) > 1:
            if id(args[1]) in self._host and id(args[0]) not in self._host and not _non_blocking(args, kwargs, 2):
                kind = "h2d"
        elif kind is None and func is torch.Tensor.__getitem__ and len(args) > 1 and _bool_index(args[1]):
            kind = "mask_index"
        if kind is not None:
            self.sites[f"{kind} {_caller()}"] += 1
        result = func(*args, **kwargs)
        if kind == "h2d" and func is torch.Tensor.to:
            self._host.discard(id(result))   # now on the device (the same object in a CPU run)
        if func is torch.Tensor.__getitem__ and args and id(args[0]) in self._host and isinstance(result, torch.Tensor):
            self._host.add(id(result))   # a view of host data is host data
            self._kept.append(result)
        return result

    def _to_kind(self, args: tuple, kwargs: dict) -> str | None:
        device = kwargs.get("device")
        for a in args[1:]:
            if isinstance(a, (str, torch.device)):
                device = a
        if device is None or not args:
            return None
        if id(args[0]) in self._host:
            # host data to the model's device (the CPU itself in a CPU run, where the same line moves it to CUDA)
            return None if kwargs.get("non_blocking") else "h2d"
        if torch.device(device).type == "cpu" and args[0].device.type != "cpu":
            return "cpu"
        return None

    def report(self) -> list[tuple[str, int]]:
        return self.sites.most_common()


def _non_blocking(args: tuple, kwargs: dict, position: int) -> bool:
    return bool(kwargs.get("non_blocking", args[position] if len(args) > position else False))


def _bool_index(index: tp.Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _caller() -> str:
    """The innermost frame outside torch itself and this module: "package/file.py:line"."""
    for frame in reversed(traceback.extract_stack(limit=12)[:-2]):
        name = frame.filename
        if "/torch/" in name or name == __file__:
            continue
        parts = name.split("/")
        return f"{'/'.join(parts[-2:])}:{frame.lineno}"
    return "?"
