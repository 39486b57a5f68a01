"""The embedded simulator: one process, one frozen backbone, a plain loop over clients."""
