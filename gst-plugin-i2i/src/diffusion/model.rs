// SPDX-License-Identifier: MPL-2.0
//! The four ONNX sessions of a diffusers / optimum model directory.
