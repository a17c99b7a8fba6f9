"""Block-LoRA ("One Head Eight Arms"): LoRA with block-shared down-projections.

Zhou et al., 2025, "One Head Eight Arms: Block Matrix based Low Rank Adaptation for CLIP-based Few-Shot Learning",
arXiv:2501.16720. LoRA's down-projection A ∈ R^{r×d_in} is split column-wise into n blocks A = [A_1 … A_n] and all
blocks are tied to one "head" Ā ∈ R^{r×(d_in/n)}, shared here by every adapted layer with the same block width; the
up-projection B (the "arms") stays per layer. Then ΔW = s·B [Ā … Ā] and ΔW x = s·B Ā (Σ_j x_j): the input chunks are
summed and multiplied once, turning n matrix products into additions. Init as LoRA (Ā Kaiming-uniform, B = 0);
r·d_out per layer plus r·d_in/n shared.

What was checked: the abstract ("partitions the low-rank decomposition matrix of LoRA into a series of sub-matrices
while sharing all down-projection sub-matrices", "transforms certain complex matrix multiplication operations into
simpler matrix addition") and a third-party summary ("partitioning the LoRA update ΔW = AB into n blocks and sharing a
down-projection A_s"). The method section and code were not available. Not confirmed: that the blocks are column
blocks of A tied within a layer *and* shared across layers (the rank-axis reading (ΣB_i)Ā would be a plain smaller
LoRA); a summary's "≈60% fewer parameters than CLIP-LoRA" is not what this reading gives (r·d_out per layer plus the
shared heads: ≈50% fewer than LoRA's r(d_in + d_out) on square layers), so the paper may differ in a detail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...variant import ConfigError, Shared, Variant, VariantConfig, VariantLayer, param, register

PAPER = ("Zhou et al., 2025, One Head Eight Arms: Block Matrix based Low Rank Adaptation for CLIP-based Few-Shot "
         "Learning, arXiv:2501.16720")


@dataclass
class BlockLoRAConfig(VariantConfig):
    r: int = param(2, low=1, high=min, help="rank")
    blocks: int = param(8, low=1, high=lambda shape: shape[1], help="n: column blocks of A tied to one head")
    alpha: float = param(1.0, low=0, low_open=True, help="scale numerator: s = alpha / r (CLIP-LoRA: 1)")

    def check(self, shapes):
        for name, (o, i) in shapes.items():
            if i % self.blocks:
                raise ConfigError(f"block-lora: blocks={self.blocks} is invalid; blocks must divide the input width "
                                  f"{i} of layer {name} ({o}x{i})")


class BlockShared(Shared):
    """One head Ā (r × d_in/n) per distinct block width."""

    def __init__(self, config: BlockLoRAConfig, shapes, seed):
        super().__init__(config, shapes, seed)
        self.heads = nn.ParameterDict()
        for _, i in shapes.values():
            width = i // config.blocks
            if str(width) not in self.heads:
                head = torch.empty(config.r, width)
                nn.init.kaiming_uniform_(head, a=math.sqrt(5))
                self.heads[str(width)] = nn.Parameter(head)


class BlockLoRALayer(VariantLayer):
    def __init__(self, base: nn.Linear, config: BlockLoRAConfig, shared: BlockShared = None, name: str = ""):
        super().__init__(base, config, shared, name)
        self.width = base.in_features // config.blocks
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, config.r, device=base.weight.device,
                                               dtype=base.weight.dtype))

    @property
    def head(self) -> torch.Tensor:
        return self.shared.heads[str(self.width)]

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = x.unflatten(-1, (self.config.blocks, self.width)).sum(-2)  # Σ_j x_j: additions, not products
        return F.linear(F.linear(summed, self.head) * self.scaling, self.lora_B)

    def factors(self):
        return self.lora_B * self.scaling, self.head.repeat(1, self.config.blocks)


@register("block-lora", family="tiny", paper=PAPER)
class BlockLoRA(Variant):
    summary = ("LoRA whose down-projection is one small 'head' repeated across the input: the input is cut into n "
               "chunks that are summed and projected once. The head is shared by all layers; each layer keeps its "
               "own up-projection. Fewer parameters and less compute than LoRA at the same rank.")
    formula = (r"$\Delta W = \frac{\alpha}{r} B\,[\bar A\ \bar A \cdots \bar A],\quad \Delta W x = \frac{\alpha}{r} B"
               r" \bar A \textstyle\sum_j x_j$")
    Config = BlockLoRAConfig
    Layer = BlockLoRALayer
    SharedModule = BlockShared
    example_config = {"r": 2, "blocks": 4}
    notes = "Column blocks of A tied to one head shared across layers (a reading of the abstract; no code found)."
