"""Grouped-query attention (Hibiki-Zero's `kv_repeat`) without a copy of the KV cache at every step, on CPU.

moshi's `StreamingMultiheadAttention` widens each step's cached keys and values to every query head
(`expand_repeated_kv`: a new tensor the size of the whole cache, keys and values, per layer, per step) and
then calls `F.scaled_dot_product_attention`. torch's SDPA takes grouped heads itself (`enable_gqa`: query head
i reads key/value head i // kv_repeat, the mapping `expand_repeated_kv` builds), and on CPU gives the same
numbers bit for bit (tests/test_grouped_attention.py, against moshi's own path). On tiny Hibiki-Zero at 16
conversations the copies were 6.6 ms of a ~70 ms step (docs/moshi-family.md).

moshi has no switch for this, so `install()` replaces two names in `moshi.modules.transformer` (the module's
`expand_repeated_kv` and its `F`), process-wide and once; for a tensor on any other device both behave exactly
as before (unmeasured on CUDA, where SDPA's kernels for masked grouped attention differ). Models without
`kv_repeat` never reach either.
"""

from __future__ import annotations

import contextlib
import types
import typing as tp

import torch
import torch.nn.functional as torch_functional
from moshi.modules import transformer as moshi_transformer

_EXPAND = moshi_transformer.expand_repeated_kv   # moshi's own: the copy


def _expand_off_cpu(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H / n_rep, T, D] kept grouped on CPU (SDPA groups it), widened to [B, H, T, D] elsewhere."""
    return x if x.device.type == "cpu" else _EXPAND(x, n_rep)


def _grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: tp.Any,
                  **kwargs: tp.Any) -> torch.Tensor:
    if key.shape[1] != query.shape[1]:      # only ever from _expand_off_cpu: fewer key/value heads than queries
        kwargs["enable_gqa"] = True
    return torch_functional.scaled_dot_product_attention(query, key, value, *args, **kwargs)


class _Functional(types.ModuleType):
    """`torch.nn.functional` as moshi's transformer module sees it, with the grouped SDPA."""

    scaled_dot_product_attention = staticmethod(_grouped_sdpa)

    def __getattr__(self, name: str) -> tp.Any:
        return getattr(torch_functional, name)


def install() -> None:
    """From now on, grouped attention in this process skips the copy on CPU (idempotent)."""
    moshi_transformer.expand_repeated_kv = _expand_off_cpu
    if not isinstance(moshi_transformer.F, _Functional):
        moshi_transformer.F = _Functional("torch.nn.functional")


def installed() -> bool:
    return moshi_transformer.expand_repeated_kv is _expand_off_cpu


@contextlib.contextmanager
def moshis_own() -> tp.Iterator[None]:
    """moshi's path (the copy) inside the block, whatever was installed: the reference the tests compare with."""
    expand, functional = moshi_transformer.expand_repeated_kv, moshi_transformer.F
    moshi_transformer.expand_repeated_kv, moshi_transformer.F = _EXPAND, torch_functional
    try:
        yield
    finally:
        moshi_transformer.expand_repeated_kv, moshi_transformer.F = expand, functional
