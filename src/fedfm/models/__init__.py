"""Models: the BERT backbone (`bert`), loading (`loading`), LoRA (`lora`), the classifier
(`classifier`), fine-tuning modes (`finetune`)."""
