"""Device-independent randomness and host-device traffic of the training step.

- Every seeded generator lives on the CPU (:func:`cpu_generator`): its state is the same
  5,056-byte CPU state whatever device trains, so end and resume states load on any device.
  :func:`load_generator_state` also accepts the 16-byte state a CUDA generator wrote
  (end states of runs made before this rule) instead of crashing.
- Tensors cross between host and device only through :func:`to_device` (pinned and
  non-blocking on CUDA) and :func:`to_host` (one blocking copy for several tensors, e.g. once
  per epoch); reads of host-only tensors go through :func:`host_int`.
- :func:`count_host_syncs` counts, on any device (CPU included), the calls that would make the
  host wait for a CUDA device, like ``torch.cuda.set_sync_debug_mode``: the training step's tests
  and benchmark use it, since a CPU run cannot observe a synchronisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections import Counter

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger("memplast.device")

CPU_STATE_BYTES = torch.Generator().get_state().numel()
CUDA_STATE_BYTES = 16  # a CUDA (Philox) generator's state: seed and offset, 8 bytes each

_local = threading.local()


@contextlib.contextmanager
def _host_side():
    """Reads inside this block are of host tensors: not counted by :func:`count_host_syncs`."""
    _local.host = getattr(_local, "host", 0) + 1
    try:
        yield
    finally:
        _local.host -= 1


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("protocol.device is 'cuda' but no GPU is visible; use device: auto or cpu")
    return torch.device(name)


def stable_seed(*parts) -> int:
    """A 63-bit seed from any printable parts, identical across processes and machines."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def cpu_generator(seed: int) -> torch.Generator:
    """A seeded CPU generator: draw on the CPU, then move the draws (same values on any device)."""
    return torch.Generator(device="cpu").manual_seed(seed)


def load_generator_state(generator: torch.Generator, state: torch.Tensor, what: str = "generator") -> None:
    """Set a CPU ``generator`` from a saved state, whatever device the state was loaded to.

    A CPU state is restored exactly. A 16-byte CUDA state (written on a GPU by code before
    generators were kept on the CPU) cannot be converted: the generator is seeded from its bytes
    instead (deterministic, with a warning). Anything else raises a one-line error.
    """
    state = state.detach().to("cpu", torch.uint8).reshape(-1)
    with _host_side():
        if state.numel() == CPU_STATE_BYTES:
            generator.set_state(state)
        elif state.numel() == CUDA_STATE_BYTES:
            raw = bytes(state.numpy().tobytes())
            seed = int.from_bytes(hashlib.sha256(raw).digest()[:8], "little") >> 1
            log.warning(
                "%s: saved state is a %d-byte CUDA generator state (written on a GPU by an older "
                "version); continuing from a CPU generator seeded from it",
                what,
                CUDA_STATE_BYTES,
            )
            generator.manual_seed(seed)
        else:
            raise ValueError(
                f"{what}: saved generator state has {state.numel()} bytes, neither a CPU "
                f"({CPU_STATE_BYTES}) nor a CUDA ({CUDA_STATE_BYTES}) state; delete the state file "
                "and rerun the task"
            )


def host_int(t: torch.Tensor) -> int:
    """A Python int from a one-element tensor that lives on the host (never a device sync)."""
    if t.device.type != "cpu":
        raise ValueError(f"host_int needs a CPU tensor, got one on {t.device}")
    with _host_side():
        return int(t)


def to_device(t, device: torch.device, dtype=None) -> torch.Tensor:
    """Host data (array or CPU tensor) on ``device`` without blocking the host: pinned memory
    and a non-blocking copy on CUDA, a no-op on the CPU."""
    if isinstance(t, np.ndarray) and not t.flags.writeable:
        t = t.copy()
    t = torch.as_tensor(t, dtype=dtype)
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """Several device tensors as numpy arrays with one blocking copy (values go through float64,
    exact for float32 and for integers below 2^53); each comes back in its own dtype and shape."""
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    host = flat.cpu()  # the one synchronisation
    out, start = [], 0
    with _host_side():
        values = host.numpy()
        for t in tensors:
            n, dtype = t.numel(), torch.empty((), dtype=t.dtype).numpy().dtype
            out.append(values[start : start + n].astype(dtype).reshape(tuple(t.shape)))
            start += n
    return out


# --------------------------------------------------------------------------- sync counting
_SCALAR_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "__complex__"}
_HOST_READS = {"numpy", "tolist", "cpu", "__array__"}
_TRANSFERS = {"to", "cuda", "tensor", "as_tensor"}
_DATA_DEPENDENT = {
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::nonzero_static",
}


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if not getattr(_local, "host", 0):
            if name in _HOST_READS:
                self.counts[f"host read ({name})"] += 1
            elif name in _TRANSFERS and not kwargs.get("non_blocking", False):
                device = kwargs.get("device")
                if device is None and name in ("to", "cuda"):
                    device = next((a for a in args[1:] if isinstance(a, str | torch.device)), None)
                    if name == "cuda":
                        device = "cuda"
                if device is not None:
                    self.counts[f"blocking transfer ({name})"] += 1
            elif name == "__getitem__" and _has_bool_index(args[1:]):
                self.counts["boolean-mask indexing"] += 1
        return func(*args, **kwargs)


def _has_bool_index(index) -> bool:
    items = index[0] if len(index) == 1 and isinstance(index[0], tuple) else index
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if not getattr(_local, "host", 0):
            if name == "aten::_local_scalar_dense":
                self.counts["scalar read (item/bool/float/int)"] += 1
            elif name in _DATA_DEPENDENT:
                self.counts[f"data-dependent shape ({name})"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs():
    """Count the calls in the block that would make the host wait for a CUDA device.

    Yields a Counter (kind -> count) of: scalar reads (``.item()``, ``bool``/``float``/``int`` of a
    tensor), host reads (``.cpu()``, ``.numpy()``, ``.tolist()``), blocking transfers
    (``.to(device)``, ``torch.tensor(..., device=)`` without ``non_blocking``), boolean-mask
    indexing and other ops whose output size depends on the data (``nonzero``, ``masked_select``,
    ``unique``). On the CPU every tensor is a host tensor, so every such call is counted as if the
    tensors were on the training device (an upper bound), except reads of host-only tensors made
    through :func:`host_int`, :func:`to_host` and :func:`load_generator_state`.
    """
    counts: Counter = Counter()
    with _FunctionCounter(counts), _DispatchCounter(counts):
        yield counts
