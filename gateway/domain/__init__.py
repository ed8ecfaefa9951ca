"""Domain layer (accounts, plans, quota, images, processing): may import store, net and the top modules, never http or jobs."""
