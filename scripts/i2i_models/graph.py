"""A small builder over onnx.helper for hand-written graphs (deterministic names and weights)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

NP_TO_ONNX = {
    np.dtype("float32"): TensorProto.FLOAT,
    np.dtype("float16"): TensorProto.FLOAT16,
    np.dtype("int64"): TensorProto.INT64,
    np.dtype("int32"): TensorProto.INT32,
}


class Graph:
    """Collects nodes, initializers, inputs and outputs; `dtype` is the float type of the math."""

    def __init__(self, name: str, dtype=np.float32):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    @property
    def ft(self) -> int:
        return NP_TO_ONNX[self.dtype]

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def input(self, name: str, elem: int, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, src: str, name: str, elem: int, shape) -> str:
        self.op("Identity", [src], name=name)
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def init(self, base: str, array, dtype=None) -> str:
        arr = np.asarray(array, dtype=dtype if dtype is not None else self.dtype)
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, value, dtype=None) -> str:
        """A shared initializer for a small constant (scalars, shapes, axes)."""
        arr = np.asarray(value, dtype=dtype if dtype is not None else self.dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init("c", arr, arr.dtype)
        return self._consts[key]

    def i64(self, value) -> str:
        return self.const(value, np.int64)

    def op(self, op_type: str, inputs, name: str | None = None, n_out: int = 1, **attrs):
        outs = [name] if name and n_out == 1 else [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh("n_" + op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    # Convenience wrappers.
    def add(self, a, b):
        return self.op("Add", [a, b])

    def sub(self, a, b):
        return self.op("Sub", [a, b])

    def mul(self, a, b):
        return self.op("Mul", [a, b])

    def div(self, a, b):
        return self.op("Div", [a, b])

    def matmul(self, a, b):
        return self.op("MatMul", [a, b])

    def sigmoid(self, a):
        return self.op("Sigmoid", [a])

    def silu(self, a):
        return self.mul(a, self.sigmoid(a))

    def conv(self, x, w: np.ndarray, b: np.ndarray | None = None, stride: int = 1, pad: int | None = None,
             group: int = 1, base: str = "conv"):
        k = w.shape[-1]
        p = k // 2 if pad is None else pad
        ins = [x, self.init(base + "_w", w)]
        if b is not None:
            ins.append(self.init(base + "_b", b))
        return self.op("Conv", ins, kernel_shape=[w.shape[2], w.shape[3]], strides=[stride, stride],
                       pads=[p, p, p, p], group=group)

    def linear(self, x, w: np.ndarray, b: np.ndarray | None = None, base: str = "lin"):
        y = self.matmul(x, self.init(base + "_w", w))
        if b is not None:
            y = self.add(y, self.init(base + "_b", b))
        return y

    def cast(self, x, to: int):
        return self.op("Cast", [x], to=to)

    def model(self, doc: str = "") -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="i2i make_models.py", producer_version="1")
        m.ir_version = 8
        if doc:
            m.doc_string = doc
        onnx.checker.check_model(m)
        return m


def save(model: onnx.ModelProto, path) -> None:
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
