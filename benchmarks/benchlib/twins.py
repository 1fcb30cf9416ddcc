"""PyTorch twins of xpcnn models: the same layers with the same current weights (for timing and agreement checks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xpcnn import backend as B
from xpcnn import layers as XL

__all__ = ["torch_twin"]


def torch_twin(model: Any, device: torch.device) -> torch.nn.Sequential:
    """A ``torch.nn.Sequential`` with the same layers and the same current weights as an xpcnn model."""
    nn = torch.nn
    mods: list[torch.nn.Module] = []
    for layer in model.layers:
        p = {k: torch.from_numpy(np.array(B.to_numpy(v))) for k, v in layer.params.items()}
        if isinstance(layer, XL.Conv2D):
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, bias=layer.bias)
            m.weight.data.copy_(p["W"])  # (F, C, KH, KW) in both
        elif isinstance(layer, XL.Dense):
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
            m.weight.data.copy_(p["W"].T)  # xpcnn (in, out) -> torch (out, in)
        elif isinstance(layer, XL.MaxPool2D):
            m = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif isinstance(layer, XL.AvgPool2D):
            m = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, count_include_pad=True)
        elif isinstance(layer, XL.ReLU):
            m = nn.ReLU()
        elif isinstance(layer, XL.Flatten):
            m = nn.Flatten()
        elif isinstance(layer, (XL.BatchNorm1D, XL.BatchNorm2D)):
            kind = nn.BatchNorm2d if isinstance(layer, XL.BatchNorm2D) else nn.BatchNorm1d
            m = kind(layer.num_features, eps=layer.eps, momentum=layer.momentum)
            m.weight.data.copy_(p["gamma"])
            m.bias.data.copy_(p["beta"])
            m.running_mean.copy_(torch.from_numpy(np.array(B.to_numpy(layer.buffers["running_mean"]))))
            m.running_var.copy_(torch.from_numpy(np.array(B.to_numpy(layer.buffers["running_var"]))))
        elif isinstance(layer, XL.Dropout):
            m = nn.Dropout(layer.p)  # the same rate; the masks differ (separate generators)
        else:
            raise NotImplementedError(f"no torch twin for {type(layer).__name__}")
        if "b" in p:
            m.bias.data.copy_(p["b"])
        mods.append(m)
    return nn.Sequential(*mods).to(device)
