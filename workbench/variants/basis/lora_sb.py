"""LoRA-SB: Initialization using Update Approximation is a Silver Bullet for Extreme Efficient Low-Rank Fine-Tuning.

Ponkshe, Singhal et al., 2024–25, arXiv:2411.19557. LoRA-XS's architecture, ΔW = B R A with B, A frozen and the
r×r core R trained, initialised so that training starts where full fine-tuning would be after its first step
(§4, Algorithm 1):

1. accumulate the full-weight gradient G = Σ_i ∇_W L_i over ``num_samples`` training *samples* (the official
   ``estimate_and_process_grads_torch_2(num_samples=...)`` runs one sample at a time: 2 for GLUE, 50 for math, 170
   for commonsense reasoning);
2. approximate the first full step as ΔW_approx = −η·sign(G) (sign mimics Adam's first step), with η the rate of
   the first warm-up step, η = lr / (warmup_ratio · total_steps) (the official scripts' ``eff_lr``: ≈12× below lr
   for 6% warm-up over 200 steps);
3. take its truncated SVD U_r S_r V_rᵀ and set B = U_r, A = V_rᵀ, R = S_r, with s = 1 (α = r).

ΔW at step 0 is therefore the best rank-r approximation of ΔW_approx (Eckart–Young) and is not zero; W0 is not
corrected. The samples come from their own stream, ``task.batches("train", seed=seed + INIT_STREAM_OFFSET)``, as
the official code draws them from a fresh pass over its shuffled loader: the training stream is not read, so every
variant trained with one seed sees the same training batches. Here the samples are taken in chunks of up to
:data:`CHUNK` and each chunk's mean-loss gradient is weighted by its size, which sums the per-sample gradients
exactly as the code does (for losses that average over samples, as every task here does). The SVD is exact (the
code uses ``svd_lowrank`` with 10 iterations, which approximates the same top-r).

Until it is initialised the layer has B = A = 0, so R's gradient is exactly zero; a backward pass through an
uninitialised layer raises a :class:`~workbench.errors.ConfigError` saying how to initialise it (``train()`` does
it; a custom loop calls ``prepare``) instead of training nothing silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError
from ...probes.gradients import full_weight_gradients
from ...settings import Preset
from ...variant import Variant, VariantConfig, param, register
from .lora_xs import FrozenFactorsLayer

PAPER = ("Ponkshe, Singhal et al., 2024, Initialization using Update Approximation is a Silver Bullet for "
         "Extreme Efficient Low-Rank Fine-Tuning, arXiv:2411.19557")

#: the seed of the initialisation samples' stream is the run's seed plus this, so it never is the training stream's
INIT_STREAM_OFFSET = 7919
#: the most samples whose gradient is taken in one pass (larger ``num_samples`` are taken in several)
CHUNK = 256
#: the official GLUE scripts' warm-up ratio, used when neither the config nor the run sets one
DEFAULT_WARMUP_RATIO = 0.06


@dataclass
class LoRASBConfig(VariantConfig):
    r: int = param(8, low=1, high=min, help="rank: R is r x r")
    num_samples: int = param(2, low=1, high=100_000, help="training samples whose summed full-weight gradient "
                             "approximates the first step (official: 2 for GLUE, 50 math, 170 commonsense)")
    warmup_ratio: float | None = param(None, low=0, low_open=True, high=1.0,
                                       help="η = lr / (warmup_ratio · total_steps), the first warm-up step's rate; "
                                            "none: the run's lr_warmup if it has one, else 0.06 (official GLUE)")
    eta: float = param(0.0, low=0.0, help="η of ΔW_approx = −η·sign(G) given directly; 0: from warmup_ratio")

    @property
    def alpha(self) -> float:
        return float(self.r)  # s = 1


class LoRASBLayer(FrozenFactorsLayer):
    """Until :meth:`initialise` runs, B, A and R are zero (ΔW = 0) and a backward pass through the layer raises."""

    def __init__(self, base, config, shared=None, name: str = ""):
        super().__init__(base, config, shared, name)
        self._ready = False  # a plain flag: a loaded adapter is recognised by its non-zero B on first use
        self._estimating = False  # inside prepare(): gradients flow through the uninitialised layer on purpose

    def initialise(self, delta_approx: torch.Tensor) -> None:
        r = self.config.r
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(delta_approx.float(), full_matrices=False)
            self.B.copy_(u[:, :r])
            self.A.copy_(vh[:r])
            self.R.copy_(torch.diag(s[:r]))
        self._ready = True

    @property
    def initialised(self) -> bool:
        if not self._ready:
            self._ready = bool(self.B.any())  # one check per forward until initialised (a loaded adapter: once)
        return self._ready

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().delta_forward(x)
        if out.requires_grad and not self._estimating and not self.initialised:
            out.register_hook(self._refuse)
        return out

    def _refuse(self, grad: torch.Tensor) -> None:
        raise ConfigError(
            f"lora-sb: layer {self.name} is not initialised (B = A = 0, so R's gradient is exactly zero and nothing "
            "would train). LoRA-SB starts from the SVD of an estimated first full fine-tuning step: train with "
            "workbench.train(), or before your own loop call ad.variant.prepare(StepContext.standalone(ad, "
            "total_steps=T, lr=lr, task=task), None) with any task that has loss(model, batch) and "
            "batches(split, batch_size, seed)")


def _take(batch: Any, k: int, device: torch.device) -> Any:
    """The first ``k`` samples of ``batch`` (tensors sliced on their first axis), on ``device``."""
    if isinstance(batch, dict):
        return {key: _take(v, k, device) for key, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_take(v, k, device) for v in batch)
    return batch[:k].to(device) if isinstance(batch, torch.Tensor) else batch


def _size(batch: Any) -> int:
    """Samples in ``batch``: the first axis of its first tensor."""
    if isinstance(batch, dict):
        return _size(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _size(batch[0])
    return int(batch.shape[0])


@register("lora-sb", family="basis", paper=PAPER)
class LoRASB(Variant):
    summary = ("LoRA-XS's tiny r×r core, but with B, A and R initialised from an SVD of the first full "
               "fine-tuning step (estimated from a few samples' gradients). Training starts in the subspace "
               "full fine-tuning would move in, and the first steps count.")
    formula = (r"$\Delta W = B R A,\quad B R A\,|_{t=0} = \mathrm{SVD}_r\!\left(-\eta\,"
               r"\mathrm{sign}(\nabla_W L)\right),\ \eta = \frac{lr}{\text{warmup ratio}\cdot T}$")
    Config = LoRASBConfig
    Layer = LoRASBLayer
    preserves_init = False
    example_config = {"r": 4}
    notes = ("η is the first warm-up step's rate lr/(warmup_ratio·T) as in the official scripts (warmup_ratio: the "
             "run's lr_warmup, else 0.06), whether or not our loop warms up; the samples come from their own stream; "
             "exact SVD instead of svd_lowrank.")
    presets = (
        Preset("synthetic:*", config={"num_samples": 50},
               reason="50 samples (the official math scripts'): from GLUE's 2, sign(G) of a regression is mostly "
                      "per-sample noise and the frozen subspace misses the task (synthetic:lowrank, 200 steps: final "
                      "loss 0.215 at 2 samples, 0.149 at 50, LoRA-XS 0.225)"),
    )

    def eta(self, ctx) -> float:
        """η of ΔW_approx: ``eta`` when set, else lr / (warmup_ratio · total_steps)."""
        c = self.config
        if c.eta > 0:
            return c.eta
        ratio = c.warmup_ratio
        if ratio is None:
            run_warmup = getattr(ctx.settings, "lr_warmup", 0.0) if ctx.settings is not None else 0.0
            ratio = run_warmup if run_warmup > 0 else DEFAULT_WARMUP_RATIO
        return ctx.lr / (ratio * max(ctx.total_steps, 1))

    def init_samples(self, ctx):
        """The stream the initialisation reads: ``num_samples`` samples in batches of up to :data:`CHUNK`, from
        ``task.batches("train", seed=seed + INIT_STREAM_OFFSET)``, never the training stream."""
        n = self.config.num_samples
        seed = (ctx.settings.seed if ctx.settings is not None else ctx.adaptation.seed) + INIT_STREAM_OFFSET
        return ctx.task.batches("train", batch_size=min(n, CHUNK), seed=seed)

    def prepare(self, ctx, batches):
        """Initialise every layer from ``num_samples`` samples of their own stream; ``batches`` (the training
        stream) is not read."""
        adaptation, task = ctx.adaptation, ctx.task
        if task is None or not hasattr(task, "loss") or not hasattr(task, "batches"):
            raise ConfigError("lora-sb: prepare needs ctx.task, an object with loss(model, batch) and "
                              "batches(split, batch_size, seed), to estimate the first full fine-tuning step")
        device = next(adaptation.model.parameters()).device
        stream = self.init_samples(ctx)
        grads: dict[str, torch.Tensor] = {}
        left = self.config.num_samples
        layers = [layer for _, layer in adaptation.named_layers()]
        for layer in layers:
            layer._estimating = True
        try:
            while left > 0:
                batch = next(stream)
                k = min(left, _size(batch))
                for name, g in full_weight_gradients(adaptation, task, _take(batch, k, device)).items():
                    grads[name] = grads[name] + k * g if name in grads else k * g  # k × mean = Σ per-sample
                left -= k
        finally:
            for layer in layers:
                layer._estimating = False
        eta = self.eta(ctx)
        for name, layer in adaptation.named_layers():
            if name in grads:
                layer.initialise(-eta * torch.sign(grads[name]))
