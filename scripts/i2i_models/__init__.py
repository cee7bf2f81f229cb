"""Generators for the demo and test models in the diffusers / optimum ONNX layout."""
