"""The numpy kernels of the reference Transformer: one function per graph op kind, and the few array
operations the reference needs beside them (`torch_kernels` is the same interface in PyTorch).

They are what `calibrate` times to learn this machine's per-op framework cost and vector rate, and
what `validate` runs end to end — so prediction and measurement share one definition of "an op".
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))
NAME = "numpy"
#: the frameworks the reference runs in, each with its kernels module
FRAMEWORKS = {"numpy": "sim.validate.kernels", "torch": "sim.validate.torch_kernels"}


def kernels_of(framework: str) -> ModuleType | None:
    """The kernels module of `framework`; None where the framework is not installed."""
    try:
        return importlib.import_module(FRAMEWORKS[framework])
    except ImportError:
        return None


def array(x: np.ndarray) -> np.ndarray:
    """This framework's view of a numpy array, without a copy (cheap enough to take inside a timed call:
    the cold GEMVs' weights)."""
    return x


#: where a fresh large numpy array starts: glibc maps it with a 16-byte chunk header, 16 bytes past a
#: page and off a cache line
PLACEMENT = 16


def own(x: np.ndarray) -> np.ndarray:
    """`x` in memory this framework allocates, as its programs' arrays are: numpy's, placed as glibc
    places a fresh large one (`PLACEMENT` bytes past a page). Fixed rather than left to the allocator:
    once freed chunks raise glibc's mmap threshold, arrays land anywhere on the heap, and a weight whose
    rows alias in the cache runs ~0.68x off a cache line but ~0.93x on one (16 x 1024 x 1024 on this
    project's VM), so calibration and the cases it predicts must see the same placement. For operands
    and weights made once."""
    buf = np.empty(x.nbytes + 4096, np.uint8)
    start = (PLACEMENT - buf.ctypes.data) % 4096
    out = buf[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    out.flags.writeable = x.flags.writeable
    return out


def permute(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return x.transpose(axes)


def copy(x: np.ndarray) -> np.ndarray:
    return x.copy()


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = x @ w
    if b is not None:
        y += b
    return y


def layernorm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + eps) * g + b


def rmsnorm(x: np.ndarray, g: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def softmax(s: np.ndarray, scale: float) -> np.ndarray:
    s = s * np.float32(scale)
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    return s


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def silu_gate(up: np.ndarray, gate: np.ndarray) -> np.ndarray:
    return gate / (1.0 + np.exp(-gate)) * up


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) along the head dimension."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
