"""Argument checks shared by the functional ops, the layers, the optimizers and the command line.

Arrays: namespace, device, rank, dtype, geometry.  Numbers: real, positive, in an interval, integer.
Every error names what was expected and what was received.  Public ops and layers validate once per
call; the kernels they dispatch to do not validate again.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

Pair = tuple[int, int]


def namespace(*arrays: Any) -> Any:
    """The Array API namespace shared by ``arrays``; a clear error if they mix libraries or devices."""
    present = [a for a in arrays if a is not None]
    try:
        xp = array_api_compat.array_namespace(*present)
    except TypeError as exc:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in present})
        raise TypeError(f"arrays from different backends cannot be mixed: got {', '.join(kinds)}; "
                        "move them with xpcnn.backend.asarray / to_numpy first") from exc
    devices = [array_api_compat.device(a) for a in present]
    if any(d != devices[0] for d in devices[1:]):
        raise ValueError(f"arrays live on different devices: {', '.join(map(str, devices))}; expected one device")
    return xp


def pair(value: int | tuple[int, int], name: str, minimum: int | None = None) -> Pair:
    """``3 -> (3, 3)``; ``(3, 2) -> (3, 2)``; rejects anything else, and values below ``minimum``.

    >>> pair(3, "kernel_size"), pair((1, 2), "stride", minimum=1)
    ((3, 3), (1, 2))
    """
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value, value)
    elif (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def check_rank(x: Any, ndim: int | tuple[int, ...], name: str, layout: str) -> None:
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in ranks:
        raise ValueError(f"{name} must be {layout} ({' or '.join(map(str, ranks))}-D), "
                         f"got shape {tuple(x.shape)} ({x.ndim}-D)")


def check_floating(x: Any, name: str) -> None:
    xp = array_api_compat.array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must be a real floating array (float32 or float64), got dtype {x.dtype}")


def check_same_dtype(ref: Any, ref_name: str, **others: Any) -> None:
    for name, arr in others.items():
        if arr is not None and arr.dtype != ref.dtype:
            raise TypeError(f"dtype mismatch: {ref_name} is {ref.dtype} but {name} is {arr.dtype}; "
                            f"cast one of them (e.g. xp.astype({name}, {ref_name}.dtype))")


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, axis: str,
                ceil_mode: bool = False) -> int:
    """``OH = floor((H + 2P - D*(K-1) - 1) / S) + 1`` (PyTorch's rule; ``ceil`` with ``ceil_mode``).

    With ``ceil_mode`` the last window must start inside the input or the left padding (PyTorch drops it
    otherwise).  Raises ValueError for a bad argument or an empty output.

    >>> output_size(7, 2, 2, 0, 1, "height"), output_size(7, 2, 2, 0, 1, "height", ceil_mode=True)
    (3, 4)
    """
    if stride < 1 or dilation < 1 or padding < 0 or kernel < 1:
        raise ValueError(f"need kernel >= 1, stride >= 1, dilation >= 1, padding >= 0 along {axis}; "
                         f"got kernel={kernel}, stride={stride}, dilation={dilation}, padding={padding}")
    span = dilation * (kernel - 1) + 1
    padded = size + 2 * padding
    if span > padded:
        raise ValueError(f"kernel extent {span} along {axis} is larger than the padded input "
                         f"({size} + 2*{padding} = {padded}): the output would be empty")
    out = (padded - span) // stride + 1
    if ceil_mode and (padded - span) % stride != 0:
        out += 1
        if (out - 1) * stride >= size + padding:  # the last window would start in the right padding
            out -= 1
    return out


def real(name: str, value: Any) -> float:
    """``value`` as a finite Python float (never a NumPy scalar), or ValueError naming it."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def positive(name: str, value: Any) -> float:
    """A finite float ``> 0``."""
    out = real(name, value)
    if not out > 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return out


def non_negative(name: str, value: Any) -> float:
    """A finite float ``>= 0``."""
    out = real(name, value)
    if not out >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return out


def unit_interval(name: str, value: Any, *, allow_zero: bool = True) -> float:
    """A coefficient in ``[0, 1)`` (or ``(0, 1)`` when ``allow_zero`` is false)."""
    out = real(name, value)
    low_ok = out >= 0.0 if allow_zero else out > 0.0
    if not (low_ok and out < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return out


def integer(name: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (Python or NumPy, never a bool or a float) ``>= minimum``."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or isinstance(value, float):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    out = int(value.__index__())
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out
