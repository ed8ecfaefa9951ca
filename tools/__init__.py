"""Set-up steps: stub generation from protos/ and model weight fetching."""
