"""The torch library: the RBN layer, conversion, folding, architectures and ONNX export."""
