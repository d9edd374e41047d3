"""A phone support desk built on Voxgate's embedding API: order status, refunds and transfer
to a person over a real SQLite database. Start it with `make example`; see README.md."""
