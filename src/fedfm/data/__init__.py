"""Data sets (the registry: `catalogue`), partitioners named by scheme (`partition`), federations of per-client splits (`federated`)."""
