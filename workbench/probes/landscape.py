"""Loss landscapes around a trained adapter: 1-D and 2-D slices, and a sharpness number.

Directions (Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets", §4: filter normalisation, as in the
reference code tomgoldstein/loss-landscape, ``net_plotter.normalize_directions_for_weights``): a Gaussian direction
whose every row ("filter") of a ≥2-D tensor is rescaled to the norm of the matching row of the tensor it is
normalised against.

* ``mode="adapter"``: random directions in the adapter's own trainable tensors, normalised against those tensors.
  LoRA's B starts at zero, so rows of zero norm stay zero there: this is what the adapter's own parameterisation can
  reach. 1-D tensors (DoRA magnitudes, VeRA's scaling vectors, gates) follow ``ignore_1d``:

  - ``"zero"`` (the default, as the reference's ``ignore='biasbn'``, the default of its
    ``create_random_direction`` and the setting of every example in its README): no movement along them;
  - ``"copy"``: the direction is the tensor itself (the reference's other branch, ``d.copy_(w)``, which its
    ``plot_surface.py`` command line takes when ``--xignore`` is left empty), so α scales the tensor by (1 + α);
  - ``"rescale"``: a Gaussian rescaled as a whole to the tensor's norm (this module's behaviour before; neither of
    the reference's options: it moves DoRA's magnitudes by their full norm in a random direction, which makes
    DoRA's slice several times higher at the edges than LoRA's).

  A variant whose trainable tensors are all 1-D (VeRA) has no direction under ``"zero"``: that is a ConfigError
  that names the other choices.
* ``mode="delta"``: directions on each module's merged weight W0 + ΔW, the same space for every variant (so
  landscapes of different variants are comparable), filter-normalised against **ΔW**: α = 1 moves each row of the
  weight by the norm of that row of the update (the change from the original W0, ``update()``: PiSSA's
  s·(B A − B0 A0), not its principal part s·B A). (Before, these directions were normalised against W0 + ΔW, which
  moves the weight by the size of the *pretrained* weight, many times the update on a real fine-tune.)
* ``mode="merged"``: the same merged weights, filter-normalised against W0 + ΔW (Li et al.'s normalisation applied
  to the merged model: the scale of a full fine-tune's landscape, not of the update).

The 1-D slice also offers the interpolation from the adapter's initial state to the trained one (Goodfellow et
al., 2015). Points are evaluated with ``torch.func.functional_call`` on one fixed batch, in a plain loop (on CPU a
loop was ~6x faster than ``vmap`` for a 25x25 grid of a small MLP, as measured in docs/DESIGN.md's notes), in eval
mode, with every module's training flag and the random generators restored afterwards, so a landscape computed from a
training callback does not change the run.

Sharpness (:func:`epsilon_sharpness`): Keskar et al.'s ε-sharpness (Keskar, Mudigere, Nocedal, Smelyanskiy & Tang,
2017, "On Large-Batch Training for Deep Learning: Generalization Gap and Sharp Minima", ICLR, Metric 2.1 with
A = I, the full space): the largest loss rise in the box C_ε = {δ : |δᵢ| ≤ ε(|wᵢ| + 1)} around the trained tensors w
that the landscape moves (the same tensors as ``mode``), relative to 1 + L(w), in percent::

    φ_ε = 100 · max_{δ ∈ C_ε} (L(w + δ) − L(w)) / (1 + L(w))

ε is its own argument (``epsilon``; the paper reports ε = 1e-3 and 5e-4), independent of the plot's ``span``. The
paper maximises with L-BFGS-B; here a few steps of projected sign-gradient ascent from a random point of the box
(every iterate is evaluated and the largest rise kept, so φ_ε is a lower bound on the maximum, as any ascent's is).
On a convex quadratic the first step reaches the maximising corner, which the tests check by hand. (Before, the
"sharpness" was the rise at 10% of the span along the first random direction divided by L(w): it read how small the
minimum was, not how sharp, and grew with the span.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import functional_call

from ..errors import ConfigError
from .base import isolated_rng, preserved_modes

__all__ = ["landscape", "landscape_directions", "filter_normalized_direction", "epsilon_sharpness", "MODES",
           "IGNORE_1D"]

MODES = ("adapter", "delta", "merged")
IGNORE_1D = ("zero", "copy", "rescale")


def filter_normalized_direction(params: dict[str, torch.Tensor], g: torch.Generator, ignore_1d: str = "zero",
                                against: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A Gaussian direction with each row of a ≥2-D tensor rescaled to the norm of the matching row of ``against``
    (default: ``params`` themselves); 1-D tensors as ``ignore_1d`` says (see the module docstring). A Gaussian is
    drawn for every tensor whatever ``ignore_1d``, so the ≥2-D directions do not depend on it."""
    if ignore_1d not in IGNORE_1D:
        raise ConfigError(f"landscape: ignore_1d={ignore_1d!r} is invalid; ignore_1d must be one of "
                          + ", ".join(repr(c) for c in IGNORE_1D))
    against = params if against is None else against
    out = {}
    for name, p in params.items():
        ref = against[name]
        d = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
        if p.dim() <= 1:
            if ignore_1d == "zero":
                d = torch.zeros_like(p)
            elif ignore_1d == "copy":
                d = ref.detach().clone().to(p.dtype)
            else:
                d = d * (ref.norm() / d.norm().clamp_min(1e-12))
        else:
            pr, dr = ref.reshape(ref.shape[0], -1), d.reshape(d.shape[0], -1)
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


def _merged_params(ad, mode: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The merged weights W0 + ΔW by their ``base.weight`` name, and what their directions are normalised against
    (ΔW for ``mode="delta"``, W0 + ΔW for ``"merged"``)."""
    if not all(layer.has_weight for _, layer in ad.named_layers()):
        raise ConfigError(f"landscape: mode={mode!r} needs a weight matrix per layer; {ad.variant.name}'s update "
                          "depends on the input: use mode='adapter'")
    with torch.no_grad():
        center = {f"{name}.base.weight": layer.effective_weight().detach().clone()
                  for name, layer in ad.named_layers()}
        if mode == "merged":
            return center, center
        against = {f"{name}.base.weight": layer.update().detach().clone().to(center[f"{name}.base.weight"])
                   for name, layer in ad.named_layers()}
    return center, against


def landscape_directions(adaptation, *, mode: str = "adapter", dims: int = 1, seed: int = 0,
                         ignore_1d: str = "zero") -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The centre (tensors by their name in ``adaptation.model``) and the ``dims`` filter-normalised directions a
    landscape of ``mode`` moves along (see the module docstring)."""
    if mode not in MODES:
        raise ConfigError(f"landscape: mode={mode!r} is invalid; mode must be one of "
                          + ", ".join(repr(m) for m in MODES))
    g = torch.Generator().manual_seed(seed)
    if mode == "adapter":
        center, against = _adapter_params(adaptation), None
    else:
        center, against = _merged_params(adaptation, mode)
    directions = [filter_normalized_direction(center, g, ignore_1d, against) for _ in range(dims)]
    if not any(float(d.abs().max()) > 0 for d in directions[0].values() if d.numel()):
        if mode == "adapter" and ignore_1d == "zero" and all(p.dim() <= 1 for p in center.values()):
            raise ConfigError(f"landscape: every trainable tensor of {adaptation.variant.name} is 1-D, and "
                              "ignore_1d='zero' keeps 1-D tensors fixed, so there is no direction to move along; "
                              "use ignore_1d='copy' or 'rescale', or mode='delta'")
        raise ConfigError(f"landscape: every direction of mode={mode!r} is zero (the tensors it is normalised "
                          "against are all zero, e.g. an untrained update in mode='delta'); train first or use "
                          "another mode")
    return center, directions


def epsilon_sharpness(loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor], center: dict[str, torch.Tensor],
                      epsilon: float = 1e-3, iterations: int = 10, seed: int = 0) -> float:
    """Keskar et al.'s (2017, Metric 2.1) ε-sharpness of ``loss_of`` at ``center``, in percent:
    100 · max over |δᵢ| ≤ ε(|wᵢ| + 1) of (L(w + δ) − L(w)) / (1 + L(w)).

    ``loss_of(params)`` returns the loss (a differentiable scalar tensor) with ``params`` substituted. Maximised by
    ``iterations`` steps of projected sign-gradient ascent (step: the box's half-width) from a uniformly random point
    of the half-box (seeded by ``seed``; at δ = 0 a coordinate with zero gradient would never move), keeping the
    largest loss seen.
    """
    if not epsilon > 0:
        raise ConfigError(f"landscape: epsilon={epsilon!r} is invalid; epsilon must be a number in (0, inf)")
    if not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"landscape: iterations={iterations!r} is invalid; iterations must be an integer ≥ 1")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = float(loss_of(center))
    box = {n: epsilon * (w.detach().abs() + 1) for n, w in center.items()}
    delta = {n: ((torch.rand(w.shape, generator=g) - 0.5).to(w.device, w.dtype)) * box[n] for n, w in center.items()}
    best = base
    for _ in range(iterations):
        moved = {n: (center[n].detach() + delta[n]).requires_grad_(True) for n in center}
        with torch.enable_grad():
            value = loss_of(moved)
            grads = torch.autograd.grad(value, list(moved.values()), allow_unused=True)
        best = max(best, float(value.detach()))
        with torch.no_grad():
            for (n, b), gr in zip(box.items(), grads):
                if gr is not None:
                    delta[n] = torch.maximum(torch.minimum(delta[n] + b * gr.sign(), b), -b)
    with torch.no_grad():
        best = max(best, float(loss_of({n: center[n].detach() + delta[n] for n in center})))
    return 100.0 * (best - base) / (1.0 + base)


def landscape(adaptation, task, *, mode: str = "adapter", dims: int = 1, steps: int = 25, span: float = 1.0,
              batch=None, seed: int = 0, init_state: dict[str, torch.Tensor] | None = None, epsilon: float = 1e-3,
              ignore_1d: str = "zero", progress: Callable[[float], None] | None = None) -> dict:
    """Loss on a 1-D or 2-D grid of ``steps`` points per axis over ``[-span, span]`` around the trained adapter.

    Returns ``{"mode", "dims", "alphas", ("betas"), "loss", "center_loss", "sharpness", "epsilon",
    ("interpolation")}``; ``sharpness`` is Keskar et al.'s ε-sharpness (:func:`epsilon_sharpness`, in percent) with
    box half-width ``epsilon`` (relative, ε(|w| + 1)), whatever the plot's ``span``;
    ``interpolation`` (1-D, adapter mode, when ``init_state`` is given) is the loss from init (α=0) to the trained
    adapter (α=1), with ``alphas_interp``. ``ignore_1d`` ("zero", "copy" or "rescale") says what the directions do on
    1-D tensors in ``mode="adapter"`` (see the module docstring).
    """
    if mode not in MODES:
        raise ConfigError(f"landscape: mode={mode!r} is invalid; mode must be one of "
                          + ", ".join(repr(m) for m in MODES))
    if dims not in (1, 2):
        raise ConfigError(f"landscape: dims={dims!r} is invalid; dims must be 1 or 2")
    if not isinstance(steps, int) or not 3 <= steps <= 101:
        raise ConfigError(f"landscape: steps={steps!r} is invalid; steps must be an integer in [3, 101]")
    if not span > 0:
        raise ConfigError(f"landscape: span={span!r} is invalid; span must be a number in (0, inf)")
    if not epsilon > 0:
        raise ConfigError(f"landscape: epsilon={epsilon!r} is invalid; epsilon must be a number in (0, inf)")
    model = adaptation.model
    with isolated_rng(model, adaptation), preserved_modes(model, adaptation):
        return _landscape(adaptation, task, mode=mode, dims=dims, steps=steps, span=span, batch=batch, seed=seed,
                          init_state=init_state, epsilon=epsilon, ignore_1d=ignore_1d, progress=progress)


def _landscape(adaptation, task, *, mode, dims, steps, span, batch, seed, init_state, epsilon, ignore_1d,
               progress) -> dict:
    model = adaptation.model
    device = next(model.parameters()).device
    center, directions = landscape_directions(adaptation, mode=mode, dims=dims, seed=seed, ignore_1d=ignore_1d)
    if batch is None:
        batch = next(iter(task.batches("val", batch_size=256)))
    batch = {k: v.to(device) for k, v in batch.items()} if isinstance(batch, dict) else batch
    # merged modes evaluate plain linears with the merged weights substituted for base.weight
    disabled = adaptation.disabled() if mode != "adapter" else None
    axis = torch.linspace(-span, span, steps)
    total = steps ** dims + 1 + (steps if init_state is not None and dims == 1 else 0)
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
        result["sharpness"] = epsilon_sharpness(lambda params: task.loss(_Bound(model, params), batch), center,
                                                epsilon=epsilon, seed=seed)
        result["epsilon"] = epsilon
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
