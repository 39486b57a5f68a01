"""The embedded runtime: world building (`world`), the run loop (`run`), the round loop over in-process clients (`runner`), checkpoints."""
