"""Pure network architectures: a config in, tensors in and out; no files, no printing."""
