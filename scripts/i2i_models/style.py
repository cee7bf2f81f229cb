"""Small image-to-image ONNX models for onnxtransform: a fixed style network with real
convolution weights chosen so the effect is visible (an emboss relief, then a sepia colour
grade), in the tensor forms the element takes, plus models it must refuse.

    style-tiny/model.onnx (+ model.json)   float32 NCHW, any size, pixels 0..255 (like the
                                            ONNX model zoo's fast-neural-style models)
    style-tiny/nhwc-uint8.onnx             uint8 NHWC, any size
    style-tiny/fp16-bgr.onnx (+ .json)     float16 NCHW, BGR, mean/std normalised
    style-tiny/fixed-64x48.onnx            float32 NCHW, fixed 1x3x48x64, pixels 0..1
    style-tiny/sr2x-gray.onnx              float32 1-channel, 2x super-resolution (DepthToSpace),
                                            like the zoo's super-resolution-10 on luma
    style-tiny/bad-*.onnx                  two inputs, a non-image input, an int64 input
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

# Emboss: the centre keeps the picture, the rest adds a relief lit from the top left.
EMBOSS = np.array([[-1.0, -0.5, 0.0], [-0.5, 1.0, 0.5], [0.0, 0.5, 1.0]], dtype=np.float32)
# Sepia colour grade (rows: output R, G, B; columns: input R, G, B).
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]],
                 dtype=np.float32)


def _core(nodes, inits, x: str, dtype, unit: float, prefix: str = "") -> str:
    """Emboss (depthwise 3x3) then sepia (1x1) then a clip to 0..unit, on NCHW `x`."""
    w1 = np.repeat(EMBOSS[None, None], 3, axis=0).astype(dtype)  # [3, 1, 3, 3]
    b1 = np.zeros(3, dtype=dtype)
    w2 = SEPIA.reshape(3, 3, 1, 1).astype(dtype)
    b2 = np.full(3, 0.02 * unit, dtype=dtype)
    for name, arr in ((f"{prefix}emboss_w", w1), (f"{prefix}emboss_b", b1), (f"{prefix}sepia_w", w2),
                      (f"{prefix}sepia_b", b2), (f"{prefix}lo", np.array(0, dtype=dtype)),
                      (f"{prefix}hi", np.array(unit, dtype=dtype))):
        inits.append(numpy_helper.from_array(arr, name))
    nodes.append(helper.make_node("Conv", [x, f"{prefix}emboss_w", f"{prefix}emboss_b"], [f"{prefix}embossed"],
                                  group=3, pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
    nodes.append(helper.make_node("Conv", [f"{prefix}embossed", f"{prefix}sepia_w", f"{prefix}sepia_b"],
                                  [f"{prefix}graded"], kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Clip", [f"{prefix}graded", f"{prefix}lo", f"{prefix}hi"], [f"{prefix}styled"]))
    return f"{prefix}styled"


def _model(nodes, inits, inputs, outputs, doc: str) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "style", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="i2i make_models")
    m.ir_version = 8
    m.doc_string = doc
    onnx.checker.check_model(m)
    return m


def style_f32() -> onnx.ModelProto:
    nodes, inits = [], []
    out = _core(nodes, inits, "input1", np.float32, 255.0)
    nodes.append(helper.make_node("Identity", [out], ["output1"]))
    return _model(nodes, inits,
                  [helper.make_tensor_value_info("input1", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                  [helper.make_tensor_value_info("output1", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                  "emboss + sepia style network, float32 NCHW, pixels 0..255")


def style_nhwc_uint8() -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2])]
    inits = []
    out = _core(nodes, inits, "nchw", np.float32, 255.0)
    nodes += [helper.make_node("Transpose", [out], ["nhwc"], perm=[0, 2, 3, 1]),
              helper.make_node("Round", ["nhwc"], ["rounded"]),
              helper.make_node("Cast", ["rounded"], ["styled_image"], to=TensorProto.UINT8)]
    return _model(nodes, inits,
                  [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
                  [helper.make_tensor_value_info("styled_image", TensorProto.UINT8, ["N", "H", "W", 3])],
                  "emboss + sepia style network, uint8 NHWC")


def style_fp16_bgr() -> onnx.ModelProto:
    # Works on normalised values x = (p/255 - 0.5) / 0.25: back to 0..1, style, forward again.
    nodes, inits = [], []
    for name, v in (("q", 0.25), ("h", 0.5)):
        inits.append(numpy_helper.from_array(np.array(v, dtype=np.float16), name))
    inits.append(numpy_helper.from_array(np.array([1, 1, 1], dtype=np.int64), "thirds"))
    nodes += [helper.make_node("Mul", ["x", "q"], ["xq"]), helper.make_node("Add", ["xq", "h"], ["unit"]),
              # The network is RGB; the tensor is BGR.
              helper.make_node("Split", ["unit", "thirds"], ["b", "g", "r"], axis=1),
              helper.make_node("Concat", ["r", "g", "b"], ["rgb"], axis=1)]
    out = _core(nodes, inits, "rgb", np.float16, 1.0)
    nodes += [helper.make_node("Split", [out, "thirds"], ["r2", "g2", "b2"], axis=1),
              helper.make_node("Concat", ["b2", "g2", "r2"], ["bgr"], axis=1),
              helper.make_node("Sub", ["bgr", "h"], ["centred"]),
              helper.make_node("Div", ["centred", "q"], ["y"])]
    return _model(nodes, inits,
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, "H", "W"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 3, "H", "W"])],
                  "emboss + sepia style network, float16 NCHW BGR, mean 0.5 std 0.25")


def style_fixed() -> onnx.ModelProto:
    nodes, inits = [], []
    out = _core(nodes, inits, "pixels", np.float32, 1.0, prefix="core_")
    nodes.append(helper.make_node("Identity", [out], ["styled"]))
    return _model(nodes, inits,
                  [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, 48, 64])],
                  [helper.make_tensor_value_info("styled", TensorProto.FLOAT, [1, 3, 48, 64])],
                  "emboss + sepia style network, float32 NCHW fixed 1x3x48x64, pixels 0..1")


def sr2x_gray() -> onnx.ModelProto:
    # Four sub-pixel phases from a 3x3 sharpening family, then DepthToSpace: 2x upscaling.
    w = np.zeros((4, 1, 3, 3), dtype=np.float32)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        w[k, 0, 1, 1] = 1.25
        w[k, 0, 1 + dy, 1 + dx] -= 0.125
        w[k, 0, 1 - dy, 1 - dx] -= 0.125
    inits = [numpy_helper.from_array(w, "phases_w"), numpy_helper.from_array(np.zeros(4, np.float32), "phases_b"),
             numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(1, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["luma", "phases_w", "phases_b"], ["phases"], pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("DepthToSpace", ["phases"], ["up"], blocksize=2, mode="DCR"),
             helper.make_node("Clip", ["up", "lo", "hi"], ["luma_2x"])]
    return _model(nodes, inits,
                  [helper.make_tensor_value_info("luma", TensorProto.FLOAT, [1, 1, "H", "W"])],
                  [helper.make_tensor_value_info("luma_2x", TensorProto.FLOAT, [1, 1, "H2", "W2"])],
                  "2x super-resolution on luma, 1 channel, pixels 0..1")


def bad_two_inputs() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["a", "b"], ["out"])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, "H", "W"])  # noqa: E731
    return _model(nodes, [], [vi("a"), vi("b")], [vi("out")], "two image inputs (refused)")


def bad_not_image() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["features"], ["out"])]
    return _model(nodes, [], [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 10])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])], "a [1, 10] input (refused)")


def bad_int64() -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["ids"], ["out"])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, [1, 3, "H", "W"])  # noqa: E731
    return _model(nodes, [], [vi("ids")], [vi("out")], "an int64 image input (refused)")


FILES = {
    "model.onnx": (style_f32, {"scale": 1.0}),
    "nhwc-uint8.onnx": (style_nhwc_uint8, None),
    "fp16-bgr.onnx": (style_fp16_bgr, {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channel-order": "bgr"}),
    "fixed-64x48.onnx": (style_fixed, None),
    "sr2x-gray.onnx": (sr2x_gray, None),
    "bad-two-inputs.onnx": (bad_two_inputs, None),
    "bad-not-image.onnx": (bad_not_image, None),
    "bad-int64.onnx": (bad_int64, None),
}


def expected_files() -> list[str]:
    out = list(FILES)
    out += [Path(n).with_suffix(".json").name for n, (_, side) in FILES.items() if side is not None]
    return out


def write(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, (build, sidecar) in FILES.items():
        onnx.save(build(), dest / name)
        if sidecar is not None:
            (dest / name).with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
