"""fedfm: federated fine-tuning of foundation models across heterogeneous clients.

`import fedfm` needs only torch and numpy; transformers is imported where models are loaded,
flwr only in `fedfm.flower`, matplotlib only when plotting.
"""

__version__ = "0.1.0"
