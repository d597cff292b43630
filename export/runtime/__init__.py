"""The torch-free runtime: what a CPU box with the base install needs to run exported models with
onnxruntime, sample and reconstruct brains, map anomalies, and write the same files and figures as the training side.

    model_dir            the exported model folder contract (model.json)
    onnx_models          the exported models run by onnxruntime
    transformer_sampler  the transformer prior's cached sampler in onnxruntime
    prior_sampler        the exported prior's exact samplers, both kinds behind one call
    sample               `python -m export sample`
    reconstruct          `python -m export reconstruct`
    anomaly              `python -m export anomaly`

It imports only from `common/` and itself: never torch, accelerate, webdataset or the training side
(tests/test_runtime_boundary.py checks every module, tests/test_layout.py every import's direction).
"""
