"""The last steps of the data flow: the trained models as ONNX, and what runs them without torch.

onnx_export       `python -m export onnx`: the encoder, decoder and prior of a checkpoint to ONNX
onnx_graph        exporting one graph, with the model folder's fields written into it
transformer_onnx  the transformer prior's one-step model with its cache as inputs and outputs
runtime/          torch-free: onnxruntime sampling and reconstruction (see runtime/__init__.py)
"""
