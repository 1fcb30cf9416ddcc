"""2-D convolution by im2col / col2im, written against the Array API.

Conventions (PyTorch-compatible): ``x: (N, C, H, W)``, ``W: (F, C/G, KH, KW)`` for ``G = groups``,
``b: (F,)``, output ``y: (N, F, OH, OW)`` with

    OH = (H + 2*PH - DH*(KH - 1) - 1) / SH + 1        (likewise OW)

rounded down (PyTorch's rule): input rows and columns that no window reaches get a zero gradient.
The output must not be empty (otherwise ValueError).

Column layout: ``col: (N, KH*KW*C, OH*OW)``, rows ordered tap-major
(``row = (i*KW + j)*C + c`` for kernel tap ``(i, j)`` and channel ``c``).  With
the weights permuted to ``Wm: (F, KH*KW*C)`` one broadcast ``matmul`` gives the
output directly in NCHW order:

    y[n] = Wm @ col[n] + b                     (forward)
    dW   = sum_n dout[n] @ col[n]^T            (weight gradient)
    dcol = Wm^T @ dout[n];  dx = col2im(dcol)  (input gradient)

Groups (``G > 1``; depthwise when ``G = C``): input channels and filters are split into ``G`` equal,
contiguous groups (filter ``f`` belongs to group ``f // (F/G)`` and reads channels ``g*C/G ... (g+1)*C/G - 1``,
PyTorch's rule).  The same taps are regrouped into ``colg: (N, G, KH*KW*C/G, OH*OW)`` and the
weights into ``Wg: (G, F/G, KH*KW*C/G)``; one batched ``matmul`` per direction:

    y[n, g] = Wg[g] @ colg[n, g]                dWg[g] = sum_n dout[n, g] @ colg[n, g]^T
    dcolg[n, g] = Wg[g]^T @ dout[n, g]          dx = col2im(dcolg regrouped)

For depthwise convolutions with one filter per group (``C/G = F/G = 1``) those products are
``1 x KH*KW`` by ``KH*KW x L``: a batched ``matmul`` would run ``N*C`` tiny products, so the
reference computes the same sums as ``KH*KW`` broadcast multiply-adds over the taps instead
(see :func:`_depthwise_forward`).

``conv2d_forward`` returns ``(y, cache)`` and ``conv2d_backward(dout, cache)`` the gradients; the public
functions validate their arguments, the underscored ones (what :mod:`xpcnn.kernels` dispatches to, after
the layer has validated once) do not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import array_api_compat

from ..checks import (
    Pair,
    check_floating,
    check_rank,
    check_same_dtype,
    integer,
    namespace,
    output_size,
    pair,
)

__all__ = [
    "ConvCache",
    "check_conv_args",
    "check_groups",
    "conv2d",
    "conv2d_backward",
    "conv2d_forward",
    "conv_geometry",
    "col2im",
    "im2col",
    "pad2d",
]


def conv_geometry(x_shape: tuple[int, ...], kernel_size: Pair, stride: Pair, padding: Pair,
                  dilation: Pair) -> tuple[int, int]:
    """Output ``(OH, OW)`` for an input of shape ``(N, C, H, W)``; raises on a bad geometry."""
    H, W = x_shape[-2], x_shape[-1]
    oh = output_size(H, kernel_size[0], stride[0], padding[0], dilation[0], "height")
    ow = output_size(W, kernel_size[1], stride[1], padding[1], dilation[1], "width")
    return oh, ow


def pad2d(x: Any, padding: Pair, value: float = 0.0) -> Any:
    """Pad the last two axes of ``x: (N, C, H, W)`` with ``value`` (one allocation + one slice copy)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = array_api_compat.array_namespace(x)
    N, C, H, W = x.shape
    out = xp.full((N, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype, device=array_api_compat.device(x))
    out[:, :, ph:ph + H, pw:pw + W] = x
    return out


def tap_slices(kernel_size: Pair, out_size: Pair, stride: Pair, dilation: Pair) -> Iterator[tuple[slice, slice]]:
    """For each kernel tap ``(i, j)`` (row-major), the strided slices of the padded input it reads."""
    (KH, KW), (oh, ow), (sh, sw), (dh, dw) = kernel_size, out_size, stride, dilation
    for i in range(KH):
        for j in range(KW):
            h0, w0 = i * dh, j * dw
            yield slice(h0, h0 + sh * (oh - 1) + 1, sh), slice(w0, w0 + sw * (ow - 1) + 1, sw)


def stack_taps(xpad: Any, kernel_size: Pair, out_size: Pair, stride: Pair, dilation: Pair, axis: int) -> Any:
    """Gather every kernel tap's strided view of the padded input and stack them along ``axis``.

    xpad: (N, C, Hp, Wp) -> (N, KH*KW, C, OH, OW) for ``axis=1`` or (KH*KW, N, C, OH, OW) for ``axis=0``.
    """
    xp = array_api_compat.array_namespace(xpad)
    return xp.stack([xpad[:, :, hs, ws] for hs, ws in tap_slices(kernel_size, out_size, stride, dilation)],
                    axis=axis)


def scatter_add_taps(tap_values: Any, x_shape: tuple[int, ...], kernel_size: Pair, out_size: Pair, stride: Pair,
                     padding: Pair, dilation: Pair, like: Any) -> Any:
    """The adjoint of :func:`stack_taps`: add ``tap_values(t)`` (N, C, OH, OW) where tap ``t`` read, then crop.

    Each tap is added into a zero padded buffer with a strided slice (deterministic, no atomics);
    the result is (N, C, H, W) in ``like``'s dtype and device.
    """
    xp = array_api_compat.array_namespace(like)
    N, C, H, W = x_shape
    p = padding
    buf = xp.zeros((N, C, H + 2 * p[0], W + 2 * p[1]), dtype=like.dtype, device=array_api_compat.device(like))
    for t, (hs, ws) in enumerate(tap_slices(kernel_size, out_size, stride, dilation)):
        buf[:, :, hs, ws] += tap_values(t)
    if p == (0, 0):
        return buf
    return buf[:, :, p[0]:p[0] + H, p[1]:p[1] + W]


def _geometry(x_shape: tuple[int, ...], kernel_size: int | Pair, stride: int | Pair, padding: int | Pair,
              dilation: int | Pair) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    k = pair(kernel_size, "kernel_size")
    s = pair(stride, "stride")
    p = pair(padding, "padding")
    d = pair(dilation, "dilation")
    return k, s, p, d, conv_geometry(x_shape, k, s, p, d)


def im2col(x: Any, kernel_size: int | Pair, stride: int | Pair = 1, padding: int | Pair = 0,
           dilation: int | Pair = 1) -> Any:
    """Unfold the receptive fields of ``x: (N, C, H, W)`` into ``col: (N, KH*KW*C, OH*OW)``.

    Pads once, then loops only over the ``KH*KW`` kernel taps, each a strided
    slice of the padded input, and stacks them.
    """
    check_rank(x, 4, "x", "(N, C, H, W)")
    return _unfold(x, kernel_size, stride, padding, dilation)[0]


def _unfold(x: Any, kernel_size: int | Pair, stride: int | Pair, padding: int | Pair,
            dilation: int | Pair) -> tuple[Any, tuple[int, int]]:
    """im2col without the argument checks; also returns ``(OH, OW)``."""
    xp = array_api_compat.array_namespace(x)
    k, s, p, d, (oh, ow) = _geometry(x.shape, kernel_size, stride, padding, dilation)
    N, C = x.shape[0], x.shape[1]
    col = stack_taps(pad2d(x, p), k, (oh, ow), s, d, axis=1)  # (N, KH*KW, C, OH, OW)
    return xp.reshape(col, (N, k[0] * k[1] * C, oh * ow)), (oh, ow)


def col2im(col: Any, x_shape: tuple[int, int, int, int], kernel_size: int | Pair, stride: int | Pair = 1,
           padding: int | Pair = 0, dilation: int | Pair = 1) -> Any:
    """The adjoint of :func:`im2col`: scatter-add ``col: (N, KH*KW*C, OH*OW)`` back to ``(N, C, H, W)``.

    Each tap is added into a padded buffer with a strided slice (deterministic,
    no atomics), then the padding is cropped.
    """
    xp = array_api_compat.array_namespace(col)
    N, C, H, W = x_shape
    k, s, p, d, (oh, ow) = _geometry(x_shape, kernel_size, stride, padding, dilation)
    expected = (N, k[0] * k[1] * C, oh * ow)
    if tuple(col.shape) != expected:
        raise ValueError(f"col must have shape {expected} for x_shape {tuple(x_shape)}, got {tuple(col.shape)}")
    cols = xp.reshape(col, (N, k[0] * k[1], C, oh, ow))
    return scatter_add_taps(lambda t: cols[:, t, :, :, :], x_shape, k, (oh, ow), s, p, d, col)


def _weights_as_matrix(xp: Any, W: Any) -> Any:
    """``W: (F, C, KH, KW) -> Wm: (F, KH*KW*C)`` matching im2col's tap-major rows."""
    F = W.shape[0]
    return xp.reshape(xp.permute_dims(W, (0, 2, 3, 1)), (F, -1))


def _weights_as_groups(xp: Any, W: Any, groups: int) -> Any:
    """``W: (F, C/G, KH, KW) -> Wg: (G, F/G, KH*KW*C/G)``, each group's rows tap-major like its columns."""
    F = W.shape[0]
    return xp.reshape(xp.permute_dims(W, (0, 2, 3, 1)), (groups, F // groups, -1))


def check_groups(C: int, F: int, groups: Any) -> int:
    """``groups`` as an int that divides both the input channels ``C`` and the filters ``F``."""
    g = integer("groups", groups, minimum=1)
    if C % g or F % g:
        raise ValueError(f"groups={g} must divide both the input channels ({C}) and the filters ({F})")
    return g


def check_conv_args(x: Any, W: Any, b: Any | None, groups: int = 1) -> Any:
    """Validate a convolution's arrays (namespace, ranks, dtypes, channels, groups, bias shape); returns ``xp``."""
    xp = namespace(x, W, b)
    check_rank(x, 4, "x", "(N, C, H, W)")
    check_rank(W, 4, "W", "(F, C/groups, KH, KW)")
    check_floating(x, "x")
    check_same_dtype(x, "x", W=W, b=b)
    groups = check_groups(x.shape[1], W.shape[0], groups) if groups != 1 else 1
    if x.shape[1] != W.shape[1] * groups:
        per = "" if groups == 1 else f" per group x {groups} groups = {W.shape[1] * groups}"
        raise ValueError(f"channel mismatch: W expects {W.shape[1]} input channels{per} (W shape {tuple(W.shape)}), "
                         f"but x has {x.shape[1]} (x shape {tuple(x.shape)})")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"b must have shape ({W.shape[0]},) for W of shape {tuple(W.shape)}, got {tuple(b.shape)}")
    return xp


@dataclass(frozen=True)
class ConvCache:
    """What the convolution's backward needs: the column matrix, the input shape, the weights, the geometry.

    ``col`` is ``(N, KH*KW*C, OH*OW)`` for ``groups == 1``, ``(N, G, KH*KW*C/G, OH*OW)`` for a grouped
    convolution, and the padded input ``(N, C, H + 2PH, W + 2PW)`` for the depthwise tap form.
    """

    col: Any
    x_shape: tuple[int, int, int, int]
    W: Any              # (F, C/G, KH, KW)
    stride: Pair
    padding: Pair
    dilation: Pair
    out: Pair           # (OH, OW)
    groups: int = 1


def _is_depthwise(C: int, W: Any, groups: int) -> bool:
    """One input channel per group (``C/G == 1``): the tap form replaces the batched matmul."""
    return groups > 1 and groups == C and W.shape[1] == 1


def _grouped_col(xp: Any, x: Any, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, out: Pair,
                 groups: int) -> Any:
    """``x: (N, C, H, W) -> colg: (N, G, KH*KW*C/G, OH*OW)`` (rows tap-major within a group)."""
    N, C = x.shape[0], x.shape[1]
    kk, cg, L = kernel[0] * kernel[1], C // groups, out[0] * out[1]
    taps = stack_taps(pad2d(x, padding), kernel, out, stride, dilation, axis=1)  # (N, KK, C, OH, OW)
    taps = xp.permute_dims(xp.reshape(taps, (N, kk, groups, cg, L)), (0, 2, 1, 3, 4))
    return xp.reshape(taps, (N, groups, kk * cg, L))


def _depthwise_forward(xp: Any, xpad: Any, W: Any, kernel: Pair, stride: Pair, dilation: Pair, out: Pair) -> Any:
    """``y[n, c*M + m] = sum_t W[c*M + m, 0, t] * tap_t(x)[n, c]``: ``KH*KW`` broadcast multiply-adds.

    xpad: (N, C, Hp, Wp), W: (C*M, 1, KH, KW) -> (N, C*M, OH*OW) (M = filters per channel).
    """
    N, C = xpad.shape[0], xpad.shape[1]
    M = W.shape[0] // C
    Wt = xp.reshape(W, (1, C, M, kernel[0] * kernel[1]))
    y = None
    for t, (hs, ws) in enumerate(tap_slices(kernel, out, stride, dilation)):
        tap = xpad[:, :, hs, ws]
        term = (tap * xp.reshape(Wt[..., t], (1, C, 1, 1)) if M == 1 else
                xp.reshape(tap, (N, C, 1, *out)) * xp.reshape(Wt[..., t], (1, C, M, 1, 1)))
        if y is None:
            y = term
        else:
            y += term
    return xp.reshape(y, (N, C * M, out[0] * out[1]))


def _conv2d_forward(x: Any, W: Any, b: Any | None, stride: Pair, padding: Pair,
                    dilation: Pair, groups: int = 1) -> tuple[Any, ConvCache]:
    """:func:`conv2d_forward` without the argument checks (``stride``, ``padding``, ``dilation`` are pairs)."""
    xp = array_api_compat.array_namespace(x)
    N, C, F = x.shape[0], x.shape[1], W.shape[0]
    kernel = (W.shape[2], W.shape[3])
    if groups == 1:
        col, (oh, ow) = _unfold(x, kernel, stride, padding, dilation)
        y = xp.matmul(_weights_as_matrix(xp, W), col)  # (F, K) @ (N, K, L) -> (N, F, L)
    else:
        oh, ow = conv_geometry(x.shape, kernel, stride, padding, dilation)
        if _is_depthwise(C, W, groups):
            col = pad2d(x, padding)
            y = _depthwise_forward(xp, col, W, kernel, stride, dilation, (oh, ow))  # (N, F, L)
        else:
            col = _grouped_col(xp, x, kernel, stride, padding, dilation, (oh, ow), groups)
            y = xp.matmul(_weights_as_groups(xp, W, groups), col)  # (G, F/G, K) @ (N, G, K, L) -> (N, G, F/G, L)
        y = xp.reshape(y, (N, F, oh * ow))
    if b is not None:
        y += xp.reshape(b, (F, 1))
    cache = ConvCache(col, tuple(x.shape), W, stride, padding, dilation, (oh, ow), groups)
    return xp.reshape(y, (N, F, oh, ow)), cache


def conv2d_forward(x: Any, W: Any, b: Any | None = None, stride: int | Pair = 1, padding: int | Pair = 0,
                   dilation: int | Pair = 1, groups: int = 1) -> tuple[Any, ConvCache]:
    """Convolution (cross-correlation, as in every framework): returns ``(y, cache)``.

    x: (N, C, H, W), W: (F, C/groups, KH, KW), b: (F,) or None -> y: (N, F, OH, OW);
    ``cache`` is what :func:`conv2d_backward` needs (for ``groups=1`` its ``col`` is the im2col matrix).

    >>> import numpy as np
    >>> x, W = np.ones((1, 1, 7, 7)), np.ones((2, 1, 3, 3))
    >>> y, cache = conv2d_forward(x, W, stride=2)          # floor((7 - 3) / 2) + 1 = 3
    >>> y.shape, float(y[0, 0, 0, 0])
    ((1, 2, 3, 3), 9.0)
    >>> y, _ = conv2d_forward(np.ones((1, 4, 5, 5)), np.ones((4, 1, 3, 3)), groups=4)  # depthwise
    >>> y.shape, float(y[0, 3, 0, 0])
    ((1, 4, 3, 3), 9.0)
    """
    check_conv_args(x, W, b, groups)
    return _conv2d_forward(x, W, b, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"),
                           int(groups))


def conv2d(x: Any, W: Any, b: Any | None = None, stride: int | Pair = 1, padding: int | Pair = 0,
           dilation: int | Pair = 1, groups: int = 1) -> Any:
    """Convolution forward only: ``y: (N, F, OH, OW)``."""
    return conv2d_forward(x, W, b, stride, padding, dilation, groups)[0]


def _depthwise_backward(xp: Any, dout: Any, cache: ConvCache, need_dx: bool) -> tuple[Any | None, Any]:
    """The tap form's gradients: dout (N, C*M, OH, OW) -> (dx or None, dW: (C*M, 1, KH, KW)).

    ``dW[c*M + m, 0, t] = sum_{n,l} dout[n, c*M + m, l] * tap_t[n, c, l]``;
    ``dx`` adds ``sum_m W[c*M + m, 0, t] * dout[n, c*M + m]`` where tap ``t`` read.
    """
    xpad, W = cache.col, cache.W
    N, C = xpad.shape[0], xpad.shape[1]
    M = W.shape[0] // C
    KH, KW = W.shape[2], W.shape[3]
    out = cache.out
    d5 = xp.reshape(dout, (N, C, M, out[0], out[1]))
    slices = list(tap_slices((KH, KW), out, cache.stride, cache.dilation))
    # (N, C, M, L) x (N, C, L, 1) -> (N, C, M, 1), summed over n: one batched product per tap
    d4 = xp.reshape(d5, (N, C, M, out[0] * out[1]))
    dW_taps = [xp.sum(xp.matmul(d4, xp.reshape(xpad[:, :, hs, ws], (N, C, out[0] * out[1], 1))), axis=(0, 3))
               for hs, ws in slices]  # each (C, M)
    dW = xp.reshape(xp.stack(dW_taps, axis=2), (C * M, 1, KH, KW))
    if not need_dx:
        return None, dW
    Wt = xp.reshape(W, (C, M, KH * KW))

    def tap_grad(t: int) -> Any:
        if M == 1:
            return dout * xp.reshape(Wt[:, 0, t], (1, C, 1, 1))
        return xp.sum(d5 * xp.reshape(Wt[..., t], (1, C, M, 1, 1)), axis=2)  # (N, C, OH, OW)

    dx = scatter_add_taps(tap_grad, cache.x_shape, (KH, KW), out, cache.stride, cache.padding, cache.dilation,
                          dout)
    return dx, dW


def _conv2d_backward(dout: Any, cache: ConvCache, need_dx: bool = True) -> tuple[Any | None, Any, Any]:
    """:func:`conv2d_backward` without the argument checks."""
    xp = array_api_compat.array_namespace(dout)
    W, G = cache.W, cache.groups
    N, F = dout.shape[0], W.shape[0]
    Cg, KH, KW = W.shape[1], W.shape[2], W.shape[3]
    L = cache.out[0] * cache.out[1]
    d2 = xp.reshape(dout, (N, F, L))  # explicit: -1 is ambiguous for an empty batch
    db = xp.sum(d2, axis=(0, 2))
    if G > 1 and _is_depthwise(cache.x_shape[1], W, G):
        dx, dW = _depthwise_backward(xp, dout, cache, need_dx)
        return dx, dW, db
    if G == 1:
        dWm = xp.sum(xp.matmul(d2, xp.matrix_transpose(cache.col)), axis=0)  # (F, KH*KW*C)
    else:
        d2 = xp.reshape(d2, (N, G, F // G, L))
        dWm = xp.sum(xp.matmul(d2, xp.matrix_transpose(cache.col)), axis=0)  # (G, F/G, KH*KW*C/G)
    dW = xp.permute_dims(xp.reshape(dWm, (F, KH, KW, Cg)), (0, 3, 1, 2))
    if not need_dx:
        return None, dW, db
    if G == 1:
        dcol = xp.matmul(xp.matrix_transpose(_weights_as_matrix(xp, W)), d2)  # (N, KH*KW*C, L)
        cols = xp.reshape(dcol, (N, KH * KW, Cg, *cache.out))

        def tap_values(t: int) -> Any:
            return cols[:, t, :, :, :]
    else:
        dcol = xp.matmul(xp.matrix_transpose(_weights_as_groups(xp, W, G)), d2)  # (N, G, KH*KW*C/G, L)
        cols = xp.reshape(dcol, (N, G, KH * KW, Cg, *cache.out))

        def tap_values(t: int) -> Any:
            return xp.reshape(cols[:, :, t, :, :, :], (N, G * Cg, *cache.out))
    dx = scatter_add_taps(tap_values, cache.x_shape, (KH, KW), cache.out, cache.stride, cache.padding,
                          cache.dilation, dcol)
    return dx, dW, db


def conv2d_backward(dout: Any, cache: ConvCache, need_dx: bool = True) -> tuple[Any | None, Any, Any]:
    """Gradients of the convolution: returns ``(dx, dW, db)``.

    dout: (N, F, OH, OW); cache: from :func:`conv2d_forward`;
    dx: (N, C, H, W) or None when ``need_dx`` is False (the first layer);
    dW: (F, C/groups, KH, KW); db: (F,).  Input rows/columns no window reached get zero in ``dx``.
    """
    namespace(dout, cache.col, cache.W)
    check_same_dtype(cache.W, "W", dout=dout)
    expected = (cache.x_shape[0], cache.W.shape[0], *cache.out)
    if tuple(dout.shape) != expected:
        raise ValueError(f"dout must have the forward output's shape {expected}, got {tuple(dout.shape)}")
    return _conv2d_backward(dout, cache, need_dx)
