"""spaattn: sparse attention for video diffusion transformers (Rectified SpaAttn, Re-ttention).

A thin Python layer over the C++ core: tensors (numpy arrays, torch CPU and CUDA tensors) are
passed through DLPack without copying, outputs are allocated by the caller's framework, and
CUDA work runs on torch's current stream. Errors of the core arrive as ValueError (invalid
arguments) or RuntimeError with the core's message, e.g.
``q: expected head_dim 64 or 128, got 96``.

- :func:`block_sparse_attention`: attention over a given block mask.
- :func:`rectified_attention`: one call of Rectified SpaAttn.
- :class:`SparseAttention`: every method with its state across layers and steps
  (Re-ttention's caches included).
- token orders: :func:`gilbert`, :func:`token_permutation`, :func:`invert_permutation`,
  :func:`block_neighbours`, :func:`permute_tokens`.
- :mod:`spaattn.diffusers`: attention processors for HunyuanVideo, Wan 2.1 / 2.2, CogVideoX,
  Flux.1 and PixArt.
- :mod:`spaattn.distributed`: Ulysses sequence parallelism over torch.distributed
  (:class:`spaattn.distributed.UlyssesAttention`); imported on its own, as it imports torch.
"""

import sys as _sys

from . import _C  # type: ignore[attr-defined]
from .attention import block_sparse_attention, dense_to_csr, rectified_attention
from .method import CANDIDATES, METHODS, Calibration, CallStats, SparseAttention
from .orders import (
    ORDERS,
    block_neighbours,
    gilbert,
    invert_permutation,
    permute_tokens,
    token_permutation,
)

if "torch" in _sys.modules:
    # torch tensors go through torch custom operators (spaattn._ops); registered now when torch
    # is already imported, else on the first call with torch tensors.
    from . import _ops  # noqa: F401

__version__ = "0.1.0"


def cuda_available() -> bool:
    """True when spaattn was built with CUDA and a CUDA device is present."""
    return _C.cuda_available()


__all__ = [
    "CANDIDATES",
    "METHODS",
    "ORDERS",
    "Calibration",
    "CallStats",
    "SparseAttention",
    "block_neighbours",
    "block_sparse_attention",
    "cuda_available",
    "dense_to_csr",
    "gilbert",
    "invert_permutation",
    "permute_tokens",
    "rectified_attention",
    "token_permutation",
]
