"""Models: named models (the registry: `registry`), Hugging Face families (`hf/`), LoRA, SAL, elastic subnetworks, MoE, the classifier."""
