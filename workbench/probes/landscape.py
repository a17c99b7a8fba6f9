"""Loss landscapes around a trained adapter: 1-D and 2-D slices, and a sharpness number.

Directions (Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets", §4: filter normalisation):

* ``mode="adapter"``: random directions in the adapter's own parameters; each row ("filter") of a direction is
  rescaled to the norm of the matching row of the parameter. 1-D tensors (DoRA magnitudes, VeRA vectors, gates)
  count as one filter and are rescaled as a whole, never zeroed. LoRA's B starts at zero, so rows of zero norm stay
  zero there: this is what the adapter's own parameterisation can reach.
* ``mode="delta"``: directions on each module's merged weight W0 + ΔW (filter-normalised against it), the same
  space for every variant, so landscapes of different variants are comparable.

The 1-D slice also offers the interpolation from the adapter's initial state to the trained one (Goodfellow et
al., 2015). Points are evaluated with ``torch.func.functional_call`` on one fixed batch, in a plain loop (on CPU a
loop was ~6x faster than ``vmap`` for a 25x25 grid of a small MLP, as measured in docs/DESIGN.md's notes).

Sharpness: the larger loss increase at ±``radius``·``span`` along the first direction, relative to the centre's
loss (an ε-sharpness in the spirit of Keskar et al., 2017).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import functional_call

from ..errors import ConfigError

__all__ = ["landscape", "filter_normalized_direction"]


def filter_normalized_direction(params: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """A Gaussian direction with each row rescaled to the norm of the matching row of ``params``."""
    out = {}
    for name, p in params.items():
        d = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
        if p.dim() <= 1:
            d = d * (p.norm() / d.norm().clamp_min(1e-12))
        else:
            pr, dr = p.reshape(p.shape[0], -1), d.reshape(d.shape[0], -1)
            d = (dr * (pr.norm(dim=1, keepdim=True) / dr.norm(dim=1, keepdim=True).clamp_min(1e-12))).view_as(p)
        out[name] = d
    return out


def _adapter_params(ad) -> dict[str, torch.Tensor]:
    """Trainable adapter tensors by their name in ``ad.model`` (shared tensors are not in the model's tree)."""
    ids = {id(p) for p in ad.parameters() if p.requires_grad}
    params = {n: p.detach().clone() for n, p in ad.model.named_parameters() if id(p) in ids}
    if not params:
        raise ConfigError("landscape: the adaptation has no trainable tensors inside the model to perturb "
                          "(shared-only variants need mode='delta')")
    return params


def _merged_params(ad) -> dict[str, torch.Tensor]:
    if not all(layer.has_weight for _, layer in ad.named_layers()):
        raise ConfigError(f"landscape: mode='delta' needs a weight matrix per layer; {ad.variant.name}'s update "
                          "depends on the input: use mode='adapter'")
    with torch.no_grad():
        return {f"{name}.base.weight": layer.effective_weight().detach().clone() for name, layer in ad.named_layers()}


def landscape(adaptation, task, *, mode: str = "adapter", dims: int = 1, steps: int = 25, span: float = 1.0,
              batch=None, seed: int = 0, init_state: dict[str, torch.Tensor] | None = None, radius: float = 0.1,
              progress: Callable[[float], None] | None = None) -> dict:
    """Loss on a 1-D or 2-D grid of ``steps`` points per axis over ``[-span, span]`` around the trained adapter.

    Returns ``{"mode", "dims", "alphas", ("betas"), "loss", "center_loss", "sharpness", ("interpolation")}``;
    ``interpolation`` (1-D, adapter mode, when ``init_state`` is given) is the loss from init (α=0) to the trained
    adapter (α=1), with ``alphas_interp``.
    """
    if mode not in ("adapter", "delta"):
        raise ConfigError(f"landscape: mode={mode!r} is invalid; mode must be one of 'adapter', 'delta'")
    if dims not in (1, 2):
        raise ConfigError(f"landscape: dims={dims!r} is invalid; dims must be 1 or 2")
    if not isinstance(steps, int) or not 3 <= steps <= 101:
        raise ConfigError(f"landscape: steps={steps!r} is invalid; steps must be an integer in [3, 101]")
    if not span > 0:
        raise ConfigError(f"landscape: span={span!r} is invalid; span must be a number in (0, inf)")
    model = adaptation.model
    device = next(model.parameters()).device
    if batch is None:
        batch = next(iter(task.batches("val", batch_size=256)))
    batch = {k: v.to(device) for k, v in batch.items()} if isinstance(batch, dict) else batch
    g = torch.Generator().manual_seed(seed)

    if mode == "delta":
        center = _merged_params(adaptation)
        disabled = adaptation.disabled()  # evaluate plain linears with the merged weights substituted
    else:
        center = _adapter_params(adaptation)
        disabled = None
    directions = [filter_normalized_direction(center, g) for _ in range(dims)]
    axis = torch.linspace(-span, span, steps)
    total = steps ** dims + 3 + (steps if init_state is not None and dims == 1 else 0)
    done = [0]

    def loss_at(coefs: list[float], base: dict[str, torch.Tensor] | None = None) -> float:
        base = center if base is None else base
        params = {n: base[n] + sum(c * d[n] for c, d in zip(coefs, directions)) for n in base}
        with torch.no_grad():
            value = float(task.loss(_Bound(model, params), batch))
        done[0] += 1
        if progress is not None:
            progress(done[0] / total)
        return value

    was_training = model.training
    model.eval()
    try:
        if disabled is not None:
            disabled.__enter__()
        if dims == 1:
            loss = torch.tensor([loss_at([float(a)]) for a in axis])
        else:
            loss = torch.tensor([[loss_at([float(a), float(b)]) for a in axis] for b in axis])
        center_loss = loss_at([0.0] * dims)
        result = {"mode": mode, "dims": dims, "alphas": axis, "loss": loss, "center_loss": center_loss}
        if dims == 2:
            result["betas"] = axis
        eps = radius * span
        edge = max(loss_at([eps] + [0.0] * (dims - 1)), loss_at([-eps] + [0.0] * (dims - 1)))
        result["sharpness"] = float((edge - center_loss) / max(abs(center_loss), 1e-12))
        if init_state is not None and dims == 1 and mode == "adapter":
            start = {n: init_state[n].to(device) for n in center}
            alphas = torch.linspace(0, 1, steps)
            directions_backup, directions[:] = list(directions), [{n: center[n] - start[n] for n in center}]
            result["interpolation"] = torch.tensor([loss_at([float(a)], base=start) for a in alphas])
            result["alphas_interp"] = alphas
            directions[:] = directions_backup
    finally:
        if disabled is not None:
            disabled.__exit__(None, None, None)
        model.train(was_training)
    return result


class _Bound(torch.nn.Module):
    """``model`` called with some tensors replaced (``torch.func.functional_call``), as a module for task.loss."""

    def __init__(self, model: torch.nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self.__dict__["_model"], self.__dict__["_params"] = model, params

    def forward(self, *args, **kwargs):
        return functional_call(self._model, self._params, args, kwargs, strict=False)

    def parameters(self, recurse: bool = True):
        return self._model.parameters(recurse)
