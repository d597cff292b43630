"""ONNX export of the trained models and CPU sampling with onnxruntime (torch-free)."""
