"""Framework adapters: thin layers that map framework parameters to ONNX names and evaluate the
penalty program on them. Each imports its framework lazily; the core never does."""
