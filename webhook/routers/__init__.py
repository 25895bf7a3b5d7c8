"""The webhook's HTTP routers, one per concern: admission, health, metrics."""
