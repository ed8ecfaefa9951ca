"""The public HTTP API: an aiohttp gateway in front of the gRPC inference service."""
