"""Bottleneck adapters (Pfeiffer et al., EMNLP 2020 "MAD-X", arXiv:2005.00052; after Houlsby et al., ICML 2019).

After a block's feed-forward output h (width d) an adapter adds a bottleneck of width m = ⌊d / reduction_factor⌋
(at least 1), as AdapterHub's ``down_sample = input_size // reduction_factor``:

    h ← h + W_up · ReLU(W_down · h + b_down) + b_up,      W_down ∈ R^{m×d}, W_up ∈ R^{d×m},

with 2·d·m + m + d parameters per wrapped module (../shared/METHODS.md Part B §13). The update depends on h, so
there is no ΔW (``has_weight`` is False: nothing to merge or export as LoRA, and probes that read ΔW skip it).

It wraps a *module*, not a Linear: :attr:`AdapterLayer.wraps` is ``(nn.Module,)`` and
:meth:`AdapterLayer.target_shape` reads the module's output width d (a Linear's ``out_features``, else the
``out_features`` of the last Linear inside it), so targets name any module (:data:`FFN_TARGETS`): the digits ViT's
feed-forward blocks ``re:blocks\\.\\d+\\.mlp`` (h = MLP(LN(x)), before the residual), MiniLM's
``re:(.*\\.)?encoder\\.layer\\.\\d+\\.output`` (BertOutput: h = LN(W₂·GELU(W₁x) + x), the feed-forward
sublayer's output), or a Linear, as on a task's default targets. The wrapper forwards every argument (BertOutput
takes two) and, for modules that return a tuple, adapts its first element.

Initialisation: W_down Kaiming-uniform, W_up = 0 and both biases 0, so the adapted model equals the original at
step 0 (AdapterHub's ``mam_adapter`` init; its Pfeiffer default, ``bert``, draws both from N(0, 0.02²) and is only
near the identity). Reduction factor 16 is AdapterHub's Pfeiffer default; MAD-X's language adapters use 2 and the
reranking paper's task adapters 1–32.

Because the layer is a function of the wrapped module's output alone (``stacks``), adapters of several adaptations
nest on one module: ``workbench.compose`` stacks them in order, as MAD-X's ``Stack(lang, task)``.

Simplified or not confirmed: the Pfeiffer configuration's exact position (AdapterHub applies the adapter to
LN(h + x) and adds h as its residual, then the block's LayerNorm again: ``original_ln_before``/``residual_before_ln``/
``original_ln_after``) is reduced to the formula above around the wrapped module's output; no invertible
("pfeiffer+inv") embedding adapters; no dropout or gating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import rng
from ...errors import ConfigError
from ...variant import Variant, VariantConfig, VariantLayer, param, register

PAPER = ("Pfeiffer et al., 2020, MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer, EMNLP "
         "2020, arXiv:2005.00052 (bottleneck of Houlsby et al., ICML 2019)")

#: where "after a block's feed-forward output" is on the project's models (targets for ``adapt(..., targets=...)``)
FFN_TARGETS = {
    "digits": [r"re:blocks\.\d+\.mlp"],
    "text": [r"re:(.*\.)?encoder\.layer\.\d+\.output"],
}


def output_width(module: nn.Module) -> int | None:
    """The width d of ``module``'s output: a Linear's (or a wrapped layer's) ``out_features``, else the
    ``out_features`` of the last Linear inside it in module order; ``None`` when it holds no Linear."""
    width = getattr(module, "out_features", None)
    if isinstance(width, int):
        return width
    last = None
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            last = sub
    return None if last is None else last.out_features


def bottleneck_width(d: int, reduction_factor: int) -> int:
    """m = ⌊d / reduction_factor⌋, at least 1 (AdapterHub)."""
    return max(1, d // reduction_factor)


@dataclass
class AdapterConfig(VariantConfig):
    reduction_factor: int = param(16, low=1, high=lambda shape: shape[0],
                                  help="d / m: the bottleneck is m = d // reduction_factor wide (AdapterHub's "
                                       "Pfeiffer default 16; MAD-X language adapters 2)")


class AdapterLayer(VariantLayer):
    """``forward(...) = h + W_up ReLU(W_down h)`` with ``h = base(...)``; ``base`` is any module."""

    wraps = (nn.Module,)
    linear_delta = False
    has_weight = False
    stacks = True

    @classmethod
    def target_shape(cls, module: nn.Module) -> tuple[int, int]:
        d = output_width(module)
        if d is None:
            raise ConfigError(f"adapter: cannot tell the output width of a {type(module).__name__} (it holds no "
                              "nn.Linear); target the module that computes the feed-forward output")
        return (d, d)

    def __init__(self, base: nn.Module, config: AdapterConfig, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        d = self.target_shape(base)[0]
        m = bottleneck_width(d, config.reduction_factor)
        device = next(iter(base.parameters()), torch.empty(0)).device
        self.d, self.m = d, m
        self.down = nn.Linear(d, m, device=device)
        self.up = nn.Linear(m, d, device=device)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=rng.generator(device))
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    @property
    def in_features(self) -> int:
        return self.d

    @property
    def out_features(self) -> int:
        return self.d

    def bottleneck(self, h: torch.Tensor) -> torch.Tensor:
        """W_up ReLU(W_down h + b_down) + b_up."""
        return self.up(torch.relu(self.down(h)))

    def forward(self, *args, **kwargs):
        out = self.base(*args, **kwargs)
        if self.disabled:
            return out
        if isinstance(out, tuple):  # a module returning (hidden, extras...): adapt the hidden states
            return (out[0] + self.bottleneck(out[0]), *out[1:])
        return out + self.bottleneck(out)

    def delta_forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.base(*args, **kwargs)
        return self.bottleneck(out[0] if isinstance(out, tuple) else out)

    def delta_weight(self) -> torch.Tensor:
        raise ConfigError(f"adapter: {self.name} has no ΔW; its update W_up ReLU(W_down h) depends on the input")

    def inspect(self) -> dict[str, torch.Tensor]:
        return {"up_norm": self.up.weight.norm(), "down_norm": self.down.weight.norm()}

    def extra_repr(self) -> str:
        return f"adapter, d={self.d}, m={self.m}"


@register("adapter", family="modular", paper=PAPER)
class Adapter(Variant):
    summary = ("A bottleneck adapter after a block's feed-forward output: project down by the reduction factor, "
               "ReLU, project back up and add to the output. It wraps a module, not a weight, so it has no ΔW to "
               "merge; adapters trained apart (a language or domain adapter, a task adapter) stack on one model.")
    formula = (r"$h \leftarrow h + W_{up}\,\mathrm{ReLU}(W_{down} h),\quad W_{down}\in\mathbb{R}^{m\times d},"
               r"\ m = d/\mathrm{rf}$")
    Config = AdapterConfig
    Layer = AdapterLayer
    budget_field = "reduction_factor"
    example_config = {"reduction_factor": 4}
    notes = ("Formula h + W_up ReLU(W_down h) around the wrapped module's output (AdapterHub's Pfeiffer layout "
             "with the block's LayerNorm before and after is not reproduced); W_up = 0 at init (exact identity); no "
             "invertible adapters. Targets: any module (FFN_TARGETS gives the feed-forward outputs of the project's "
             "ViT and MiniLM); on a task's default Linear targets it adapts each Linear's output.")

    @classmethod
    def estimate_bytes(cls, cfg: AdapterConfig, shapes) -> int:
        """2·d·m + m + d float32 numbers per wrapped module."""
        return 4 * sum(num_params(d, cfg.reduction_factor) for d, _ in shapes.values())


def num_params(d: int, reduction_factor: int) -> int:
    """Parameters of one adapter on a width-d output: 2·d·m + m + d (METHODS §13)."""
    m = bottleneck_width(d, reduction_factor)
    return 2 * d * m + m + d


__all__ = ["Adapter", "AdapterLayer", "AdapterConfig", "FFN_TARGETS", "num_params", "output_width"]
