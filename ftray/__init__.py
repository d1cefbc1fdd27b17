"""ftray: Ray sweeps of LoRA finetunes that map the quality-vs-size frontier."""
