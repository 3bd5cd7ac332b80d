"""The reference Transformer's kernels in eager PyTorch, the interface of `kernels` (numpy): one call per
graph op in plain PyTorch — a product and an in-place bias add, `F.layer_norm`, RMSNorm in plain ops (as
Hugging Face's Llama writes it), softmax, the tanh GELU, SiLU times the up projection.

Imported only where PyTorch is installed (an optional extra: `pip install -e .[torch]`); nothing in the
tests needs it. One intra-op thread per core, as PyTorch sets by default.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

NAME = "torch"


def array(x: np.ndarray) -> torch.Tensor:
    """A tensor sharing `x`'s memory, without a copy (cheap enough to take inside a timed call: the cold
    GEMVs' weights; nothing writes them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(np.ascontiguousarray(x))


def own(x: np.ndarray) -> torch.Tensor:
    """A tensor of `x`'s values in memory PyTorch allocates, as a PyTorch program's tensors are: 64-byte
    aligned. Sharing numpy's memory timed PyTorch on arrays glibc places 16 bytes off a cache line: a
    16 x 1024 x 1024 matmul took 559 us there against 354 us on PyTorch's own (this project's VM)."""
    return array(x).clone()


def permute(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return x.permute(axes)


def copy(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w, then the bias added in place: the product is the BLAS call calibration times (`F.linear` with
    a transposed weight ran a GPT-2 GEMV 20% slower on this project's VM)."""
    y = x @ w
    if b is not None:
        y += b
    return y


def layernorm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), g, b, eps)


def rmsnorm(x: torch.Tensor, g: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def softmax(s: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.softmax(s * scale, dim=-1)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


def silu_gate(up: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) along the head dimension."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
