# Voxgate server image. It runs the same `make setup` that CI exercises.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends make gcc g++ cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN make setup
ENV VOXGATE_HOST=0.0.0.0 VOXGATE_PORT=8000
# Bound to every interface, the server refuses to start without API keys: run with
# -e VOXGATE_API_KEYS='["<key>"]' (or VOXGATE_ALLOW_UNAUTHENTICATED=true behind your own gate).
EXPOSE 8000
# The server is the container's main process itself, not a child of `make run`: GNU make exits
# on SIGTERM without passing it on, so `docker stop` (or a pod's termination) would leave the
# server to be killed with the container, without its drain (replies finish, then close 1001).
# deploy/ (compose, Kubernetes) relies on this.
CMD ["/app/.venv/bin/python", "-m", "server", "serve"]
