"""Tiny-parameter and structural variants: SVFit, LoLDU, Comp-LoRA, S2-LoRA, Block-LoRA, TLoRA."""
