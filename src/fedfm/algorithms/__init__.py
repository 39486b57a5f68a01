"""Federated algorithms, one module each owning both halves (the seam: `base`), found through `registry`."""
