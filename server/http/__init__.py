"""The HTTP edge: the FastAPI app, its routes, who may connect (keys, client secrets,
admission), and the listening socket and graceful shutdown around it."""
