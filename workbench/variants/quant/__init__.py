"""Quantized bases: a frozen quantized Q plus a low-rank correction that fine-tuning trains (LQ-LoRA)."""
