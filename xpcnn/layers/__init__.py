"""Stateful layers over :mod:`xpcnn.functional`: ``forward(x, train)``, ``backward(dout)``, ``params``/``grads``.

Composite layers (:class:`Residual`, and :class:`xpcnn.Sequential` itself) hold other layers; names nest.
"""

from .activation import LeakyReLU, ReLU, Sigmoid, Tanh
from .base import LAYER_TYPES, Layer, build_layer, register
from .composite import Composite
from .conv import Conv2D
from .dense import Dense, Flatten
from .dropout import Dropout
from .norm import BatchNorm1D, BatchNorm2D
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .residual import Residual

__all__ = ["AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Composite", "Conv2D", "Dense", "Dropout", "Flatten",
           "GlobalAvgPool2D", "LAYER_TYPES", "Layer", "LeakyReLU", "MaxPool2D", "ReLU", "Residual", "Sigmoid", "Tanh",
           "build_layer", "register"]
