"""Outbound network layer (URL fetching, SSRF guard, gRPC inference client): may import only the top shared modules."""
