"""Weights and nets across frameworks: caffemodel <-> PyTorch state dicts (``convert``), ONNX/TorchScript/
torch.export (``export``)."""
