"""The `removai` command line: remove backgrounds through the gateway (or the gRPC service) and run admin tasks."""
