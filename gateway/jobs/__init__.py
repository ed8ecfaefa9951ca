"""Background jobs (batch runner, webhook outbox, sweeps): may import domain, store, net and the top modules, never http."""
