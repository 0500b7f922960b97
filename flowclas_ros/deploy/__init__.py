"""Export: compiled artefacts (torch-export, ONNX, TensorRT) and their cache inside a bundle."""
