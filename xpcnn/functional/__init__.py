"""Stateless CNN math on the Python Array API: the namespace always comes from the input arrays."""

from .activation import (leaky_relu, leaky_relu_backward, log_softmax, relu, relu_backward, sigmoid,
                         sigmoid_backward, softmax, tanh, tanh_backward)
from .conv import col2im, conv2d, conv2d_backward, conv2d_forward, im2col
from .dense import dense, dense_backward
from .dropout import dropout_backward, dropout_forward, dropout_mask
from .loss import (mean_squared_error, mean_squared_error_backward, one_hot, softmax_cross_entropy,
                   softmax_cross_entropy_backward)
from .norm import BatchNormCache, batch_norm_backward, batch_norm_forward
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward, max_pool2d_forward

__all__ = [
    "BatchNormCache", "avg_pool2d", "avg_pool2d_backward", "batch_norm_backward", "batch_norm_forward",
    "col2im", "conv2d", "conv2d_backward", "conv2d_forward", "dense", "dense_backward", "dropout_backward",
    "dropout_forward", "dropout_mask", "im2col", "leaky_relu", "leaky_relu_backward", "log_softmax",
    "max_pool2d", "max_pool2d_backward", "max_pool2d_forward", "mean_squared_error",
    "mean_squared_error_backward", "one_hot", "relu", "relu_backward", "sigmoid", "sigmoid_backward",
    "softmax", "softmax_cross_entropy", "softmax_cross_entropy_backward", "tanh", "tanh_backward",
]
