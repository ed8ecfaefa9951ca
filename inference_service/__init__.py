"""The gRPC inference service: decode, pre-process, call Triton, post-process, encode."""
