"""Device choice shared by training and LLC estimation."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks cuda, then mps, then cpu; any other name is taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return device


def math_attention():
    """Torch's math attention kernel, as a context manager: plain matmul and softmax. Double
    backward (Hessian-vector products) on a CPU needs it, and vmap batches it where the fused
    kernel has no vmap rule (vmap would loop over the stacked models); at four tokens it is
    as fast (measured)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3, without the context manager
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])
