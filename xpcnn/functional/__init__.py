"""Stateless CNN math on the Python Array API: the reference implementation of every op.

The namespace always comes from the input arrays.  Forward functions return ``(y, cache)`` and backward
functions take ``(dout, cache)``; the public functions validate their arguments once, and
:mod:`xpcnn.kernels` dispatches to their unchecked twins after a layer has validated.
Import it as ``from xpcnn import functional as F``.
"""

from .activation import (
                         leaky_relu,
                         leaky_relu_backward,
                         log_softmax,
                         relu,
                         relu_backward,
                         sigmoid,
                         sigmoid_backward,
                         softmax,
                         tanh,
                         tanh_backward,
)
from .conv import ConvCache, check_conv_args, col2im, conv2d, conv2d_backward, conv2d_forward, conv_geometry, im2col
from .dense import check_dense_args, dense, dense_backward, dense_forward
from .dropout import dropout_backward, dropout_forward, dropout_mask
from .loss import (
                         check_label_range,
                         check_labels,
                         mean_squared_error,
                         mean_squared_error_backward,
                         one_hot,
                         softmax_cross_entropy,
                         softmax_cross_entropy_backward,
)
from .norm import BatchNormCache, batch_norm_backward, batch_norm_forward, check_batch_norm_args
from .pool import (
                         PoolCache,
                         avg_pool2d,
                         avg_pool2d_backward,
                         avg_pool2d_forward,
                         global_avg_pool2d,
                         global_avg_pool2d_backward,
                         global_avg_pool2d_forward,
                         max_pool2d,
                         max_pool2d_backward,
                         max_pool2d_forward,
                         pool_geometry,
)

__all__ = [
    "BatchNormCache", "ConvCache", "PoolCache", "avg_pool2d", "avg_pool2d_backward", "avg_pool2d_forward",
    "batch_norm_backward", "batch_norm_forward", "check_batch_norm_args", "check_conv_args", "check_dense_args",
    "check_label_range", "check_labels", "col2im", "conv2d", "conv2d_backward", "conv2d_forward", "conv_geometry",
    "dense", "dense_backward", "dense_forward", "dropout_backward", "dropout_forward", "dropout_mask",
    "global_avg_pool2d", "global_avg_pool2d_backward", "global_avg_pool2d_forward", "im2col",
    "leaky_relu", "leaky_relu_backward", "log_softmax", "max_pool2d", "max_pool2d_backward", "max_pool2d_forward",
    "mean_squared_error", "mean_squared_error_backward", "one_hot", "pool_geometry", "relu", "relu_backward",
    "sigmoid", "sigmoid_backward", "softmax", "softmax_cross_entropy", "softmax_cross_entropy_backward", "tanh",
    "tanh_backward",
]
