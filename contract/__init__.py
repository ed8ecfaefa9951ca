"""The caller's side of the inference gRPC contract: what every side and client imports (never the server).

The generated stubs stay in `removai/` (tools/codegen.py); this package is the thin hand-written layer around
them, like NVIDIA's tritonclient: `client` (stream an image in, the cut-out back), `channel` (channel options,
balanced targets), `metadata` (metadata keys), `options` (the output options and their public names, one
definition for every side) and `errors` (which statuses a caller may retry, the ErrorInfo reasons).
"""
