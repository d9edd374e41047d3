# Voxgate server image. It runs the same `make setup` that CI exercises.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends make gcc g++ cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN make setup
ENV VOXGATE_HOST=0.0.0.0
# Bound to every interface, the server refuses to start without API keys: run with
# -e VOXGATE_API_KEYS='["<key>"]' (or VOXGATE_ALLOW_UNAUTHENTICATED=true behind your own gate).
EXPOSE 8000
CMD ["make", "run", "HOST=0.0.0.0", "PORT=8000"]
