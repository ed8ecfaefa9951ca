"""HTTP layer (aiohttp app, middlewares, handlers, pages): may import domain, jobs, store, net and the top modules."""
