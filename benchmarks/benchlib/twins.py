"""PyTorch twins of xpcnn models for the benchmarks: :func:`xpcnn.interop.to_torch` (same layers, same weights)."""

from __future__ import annotations

from typing import Any

import torch

from xpcnn.interop import to_torch

__all__ = ["torch_twin"]


def torch_twin(model: Any, device: torch.device) -> torch.nn.Sequential:
    """A ``torch.nn.Sequential`` with the same layers and current weights as ``model``, in train mode on ``device``."""
    return to_torch(model, device=device).train()
