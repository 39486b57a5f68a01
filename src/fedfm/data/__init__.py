"""Data sets (`datasets`), partitioners named by scheme (`partition`), per-client splits (`federated`)."""
