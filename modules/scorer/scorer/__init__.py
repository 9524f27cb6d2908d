"""Azure Custom Vision ONNX exports served over HTTP and gRPC from one scoring core."""
