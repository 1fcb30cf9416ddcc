"""ONNX export of xpcnn models (opset 17 or later, a dynamic batch axis), and ``xpcnn export``.

:func:`export_onnx` writes the model's inference graph (eval mode: dropout is the identity, batch norm
uses its running statistics).  The graph's input is ``input: (batch, *input_shape[1:])`` with ``batch``
symbolic; its output is ``logits``.  Weights are initializers named as in ``model.state_dict()``.  One
emitter per layer type (``EMITTERS``); a composite layer emits its children's nodes.

====================  ======================================================================
xpcnn layer           ONNX nodes
====================  ======================================================================
``Conv2D``            ``Conv`` (pads, strides, dilations, group)
``Dense``             ``Gemm`` (``W: (in, out)`` as it is)
``BatchNorm*D``       ``BatchNormalization`` (inference form)
``MaxPool2D``         ``MaxPool`` (``ceil_mode``; a ``Slice`` where ONNX's size rule differs)
``AvgPool2D``         ``AveragePool`` (``count_include_pad=1``, ``ceil_mode``, likewise)
``ReLU`` ...          ``Relu``, ``LeakyRelu``, ``Sigmoid``, ``Tanh``
``Flatten``           ``Flatten(axis=1)``
``Dropout``           ``Identity``
``GlobalAvgPool2D``   ``GlobalAveragePool`` + ``Flatten`` ((N, C, 1, 1) -> (N, C))
``Residual``          the body's nodes, the shortcut's (or the input), ``Add``
``Sequential``        its layers' nodes in order (nested models)
====================  ======================================================================

>>> import os, tempfile
>>> import onnx
>>> from xpcnn import models
>>> path = os.path.join(tempfile.mkdtemp(), "lenet5.onnx")
>>> export_onnx(models.lenet5(rng=0), path, (1, 1, 28, 28))
>>> graph = onnx.load(path).graph
>>> [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
['batch', 1, 28, 28]
>>> sorted({n.op_type for n in graph.node})
['Conv', 'Flatten', 'Gemm', 'MaxPool', 'Relu']
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import backend as B
from ..model import Sequential
from .twins import UnsupportedModuleError

__all__ = ["EMITTERS", "OPSET", "export_onnx", "main_export", "to_onnx"]

#: the default opset (the lowest this exporter supports)
OPSET = 17
_ONNX_DTYPES = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}


class _Graph:
    """Nodes and initializers being collected, with unique value names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def weight(self, name: str, value: Any) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(B.to_numpy(value)), name))
        return name

    def node(self, op: str, inputs: Sequence[str], path: str, **attrs: Any) -> str:
        self._count += 1
        out = f"{path or 'out'}:{op}:{self._count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{path}/{op}", **attrs))
        return out


#: (layer, input value, its shape, graph, state-dict path) -> output value
Emitter = Callable[[Any, str, tuple[int, ...], _Graph, str], str]


def _pads(padding: Sequence[int]) -> list[int]:
    return [padding[0], padding[1], padding[0], padding[1]]  # ONNX: begins then ends


def _param(layer: Any, key: str, g: _Graph, path: str) -> str:
    value = layer.params.get(key, layer.buffers.get(key))
    return g.weight(f"{path}.{key}", value)


def _conv(layer: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> str:
    inputs = [x, _param(layer, "W", g, path)] + ([_param(layer, "b", g, path)] if "b" in layer.params else [])
    return g.node("Conv", inputs, path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=_pads(layer.padding), dilations=list(layer.dilation), group=int(layer.groups))


def _dense(layer: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> str:
    inputs = [x, _param(layer, "W", g, path)] + ([_param(layer, "b", g, path)] if "b" in layer.params else [])
    return g.node("Gemm", inputs, path)


def _batch_norm(layer: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> str:
    inputs = [x] + [_param(layer, k, g, path) for k in ("gamma", "beta", "running_mean", "running_var")]
    return g.node("BatchNormalization", inputs, path, epsilon=float(layer.eps))


def _pool(op: str, **extra: Any) -> Emitter:
    def emit(layer: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> str:
        y = g.node(op, [x], path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                   pads=_pads(layer.padding), ceil_mode=int(layer.ceil_mode), **extra)
        out = layer.output_shape(shape)[2:]
        if layer.ceil_mode and _onnx_ceil_sizes(layer, shape) != tuple(out):
            # ONNX's shape rule for ceil_mode lacks PyTorch's "the last window starts inside the input or the
            # left padding"; onnxruntime computes PyTorch's size, shape inference one more: trim to agree.
            ends = g.weight(f"{path}.trim", np.asarray(out, dtype=np.int64))
            axes = g.weight(f"{path}.trim_axes", np.asarray([2, 3], dtype=np.int64))
            starts = g.weight(f"{path}.trim_starts", np.zeros(2, dtype=np.int64))
            y = g.node("Slice", [y, starts, ends, axes], path)
        return y
    return emit


def _onnx_ceil_sizes(layer: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-(size + 2 * p - k) // s) + 1
                 for size, k, s, p in zip(shape[2:], layer.kernel_size, layer.stride, layer.padding, strict=True))


def _plain(op: str, **attrs: Any) -> Emitter:
    def emit(layer: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> str:
        return g.node(op, [x], path, **attrs)
    return emit


def _leaky(layer: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> str:
    return g.node("LeakyRelu", [x], path, alpha=float(layer.alpha))


def _global_avg_pool(layer: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> str:
    return g.node("Flatten", [g.node("GlobalAveragePool", [x], path)], path, axis=1)  # (N, C, 1, 1) -> (N, C)


def _residual(layer: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> str:
    body, _ = _emit(layer.body, x, shape, g, f"{path}.body")
    short = x if layer.shortcut is None else _emit(layer.shortcut, x, shape, g, f"{path}.shortcut")[0]
    return g.node("Add", [body, short], path)


#: xpcnn layer type name -> the function that appends its nodes
EMITTERS: dict[str, Emitter] = {
    "Conv2D": _conv,
    "Dense": _dense,
    "BatchNorm1D": _batch_norm,
    "BatchNorm2D": _batch_norm,
    "MaxPool2D": _pool("MaxPool"),
    "AvgPool2D": _pool("AveragePool", count_include_pad=1),
    "ReLU": _plain("Relu"),
    "LeakyReLU": _leaky,
    "Sigmoid": _plain("Sigmoid"),
    "Tanh": _plain("Tanh"),
    "Flatten": _plain("Flatten", axis=1),
    "Dropout": _plain("Identity"),
    "GlobalAvgPool2D": _global_avg_pool,
    "Residual": _residual,  # a composite: its children's nodes, then Add
}


def _emit(obj: Any, x: str, shape: tuple[int, ...], g: _Graph, path: str) -> tuple[str, tuple[int, ...]]:
    """Append ``obj``'s nodes reading value ``x`` of ``shape``; returns the output value and its shape."""
    if isinstance(obj, Sequential):
        for i, child in enumerate(obj.layers):
            x, shape = _emit(child, x, shape, g, f"{path}.{i}" if path else str(i))
        return x, shape
    emitter = EMITTERS.get(type(obj).__name__)
    if emitter is None:
        raise UnsupportedModuleError(f"xpcnn layer at position {path!r} ({obj!r}) has no ONNX export; "
                                     f"supported layers: {', '.join(sorted(EMITTERS))}")
    return emitter(obj, x, shape, g, path), tuple(obj.output_shape(shape))


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a sequence of positive integers like (1, 1, 28, 28), got "
                         f"{input_shape!r}") from None
    if len(shape) < 2 or any(d < 1 for d in shape) or any(isinstance(d, bool) for d in input_shape):
        raise ValueError(f"input_shape must be (batch, ...) with every size >= 1, like (1, 1, 28, 28), got "
                         f"{tuple(input_shape)}")
    return shape


def to_onnx(model: Sequential, input_shape: Sequence[int], *, opset: int = OPSET,
            dynamic_batch: bool = True) -> onnx.ModelProto:
    """The checked ``onnx.ModelProto`` of ``model`` for inputs of ``input_shape`` (see :func:`export_onnx`)."""
    if not isinstance(model, Sequential):
        raise TypeError(f"export_onnx expects an xpcnn Sequential model, got {type(model).__name__}")
    if int(opset) < OPSET:
        raise ValueError(f"opset must be {OPSET} or later, got {opset}")
    shape = _check_shape(input_shape)
    try:
        out_shape = model.output_shapes(shape)[-1] if len(model) else shape
    except ValueError as exc:
        raise ValueError(f"input_shape {shape} does not fit the model: {exc}") from None
    ref = next((p.value for p in model.parameters()), None)
    dtype = B.dtype_name(ref.dtype) if ref is not None else "float32"
    elem = _ONNX_DTYPES[dtype]
    g = _Graph()
    out, _ = _emit(model, "input", shape, g, "")
    if g.nodes and list(g.nodes[-1].output) == [out]:
        g.nodes[-1].output[0] = "logits"
    else:  # a model without layers
        g.nodes.append(helper.make_node("Identity", [out], ["logits"], name="logits"))
    batch: Any = "batch" if dynamic_batch else shape[0]
    graph = helper.make_graph(
        g.nodes, "xpcnn",
        [helper.make_tensor_value_info("input", elem, [batch, *shape[1:]])],
        [helper.make_tensor_value_info("logits", elem, [batch, *out_shape[1:]])],
        g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))], producer_name="xpcnn",
                              doc_string="exported by xpcnn.interop.export_onnx")
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime releases from 2022 on
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: Sequential, path: str | os.PathLike[str], input_shape: Sequence[int], *,
                opset: int = OPSET, dynamic_batch: bool = True) -> None:
    """Write ``model``'s inference graph to ``path`` (atomically), checked with ``onnx.checker``.

    ``input_shape``: one input's shape with a batch axis, e.g. ``(1, 1, 28, 28)``; the batch size in the
    file is symbolic (``batch``) unless ``dynamic_batch=False``.  ``opset``: 17 or later.  Raises
    :class:`~xpcnn.interop.UnsupportedModuleError` for a layer without an emitter (naming it and its
    position) and ValueError for an input shape the model cannot take.
    """
    proto = to_onnx(model, input_shape, opset=opset, dynamic_batch=dynamic_batch)
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: the directory {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the command line: xpcnn export ----------------------------------------------------------------------------

class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line instead of usage + message
        raise _UsageError(message)


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.split(",") if "," in text or "x" not in text else text.split("x")  # 1,1,28,28 or 1x1x28x28
    try:
        return _check_shape([int(p) for p in parts])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,1,28,28, got {text!r}") from None


def main_export(argv: Sequence[str] | None = None) -> int:
    """``xpcnn export CHECKPOINT MODEL.onnx [--input-shape 1,1,28,28] [--opset 17]``: 0 on success, 2 on error.

    Errors are one line on stderr.  When onnxruntime is installed, the written file is run once on a
    random batch of 2 and its largest difference from xpcnn's ``predict`` is printed.
    """
    parser = _Parser(prog="xpcnn export", description="Export a checkpoint's model to ONNX (opset >= 17, "
                                                          "dynamic batch axis).")
    parser.add_argument("checkpoint", help="a checkpoint written by xpcnn train (.npz)")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28),
                        help="one input's shape with a batch axis (default 1,1,28,28); the batch stays dynamic")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, {OPSET} or later (default {OPSET})")
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help printed the usage
            return int(exc.code or 0)
        from ..checkpoint import load_model

        try:
            model, _ = load_model(args.checkpoint)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"cannot load checkpoint {args.checkpoint}: {exc}") from None
        export_onnx(model, args.output, args.input_shape, opset=args.opset)
    except (_UsageError, ValueError, TypeError, OSError, onnx.checker.ValidationError) as exc:
        print(f"xpcnn export: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: opset {args.opset}, input (batch, {', '.join(map(str, args.input_shape[1:]))})"
          f"{_verify(model, args.output, args.input_shape)}")
    return 0


def _verify(model: Sequential, path: str, input_shape: tuple[int, ...]) -> str:
    try:
        import onnxruntime as ort
    except ImportError:
        return "; not run (onnxruntime is not installed)"
    ref = next((p.value for p in model.parameters()), None)
    dtype = B.dtype_name(ref.dtype) if ref is not None else "float32"
    x = np.random.default_rng(0).standard_normal((2, *input_shape[1:])).astype(dtype)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x})[0]
    want = np.asarray(B.to_numpy(model.predict(x)))
    rel = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)
    return f"; onnxruntime vs xpcnn on a random batch of 2: max |diff| / max |logit| = {rel:.1e}"
