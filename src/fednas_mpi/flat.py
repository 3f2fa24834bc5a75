"""Named tensors <-> one contiguous numpy buffer.

Model state crosses ranks as a single flat buffer (mpi4py's uppercase,
buffer-based calls), never as pickled modules. A ``Layout`` records the names,
shapes and dtypes in order, so both sides pack and unpack identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> Layout:
        return cls(
            tuple(state),
            tuple(tuple(t.shape) for t in state.values()),
            tuple(t.dtype for t in state.values()),
        )

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def wire_dtype(self) -> np.dtype:
        """float32 when every tensor is float32 (exact and half the bytes), else float64."""
        return np.dtype(np.float32 if all(d == torch.float32 for d in self.dtypes) else np.float64)

    def pack(
        self,
        state: Mapping[str, torch.Tensor],
        out: np.ndarray | None = None,
        dtype: np.dtype | None = None,
    ) -> np.ndarray:
        if tuple(state) != self.names:
            raise ValueError(f"state keys {list(state)[:4]}... do not match the layout")
        if out is None:
            out = np.empty(self.size, dtype=dtype or self.wire_dtype())
        pos = 0
        for t, n in zip(state.values(), self.sizes):
            flat = t.detach().reshape(-1).cpu()
            if flat.dtype == torch.bfloat16:
                flat = flat.float()  # numpy has no bfloat16; the layout keeps the dtype
            out[pos : pos + n] = flat.numpy()
            pos += n
        return out

    def unpack(self, buf: np.ndarray) -> State:
        """Tensors (copies, in each tensor's own dtype) read from ``buf``."""
        if buf.size < self.size:
            raise ValueError(f"buffer of {buf.size} elements is smaller than layout {self.size}")
        state, pos = {}, 0
        for name, shape, dtype, n in zip(self.names, self.shapes, self.dtypes, self.sizes):
            chunk = torch.from_numpy(np.ascontiguousarray(buf[pos : pos + n]))
            if not dtype.is_floating_point:
                chunk = chunk.round()
            state[name] = chunk.to(dtype).reshape(shape).clone()
            pos += n
        return state

    def to_meta(self) -> list[tuple[str, tuple[int, ...], str]]:
        return [
            (n, s, str(d).removeprefix("torch."))
            for n, s, d in zip(self.names, self.shapes, self.dtypes)
        ]

    @classmethod
    def from_meta(cls, meta: list) -> Layout:
        return cls(
            tuple(m[0] for m in meta),
            tuple(tuple(m[1]) for m in meta),
            tuple(getattr(torch, m[2]) for m in meta),
        )
