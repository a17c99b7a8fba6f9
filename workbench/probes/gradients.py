"""Gradient norms per module and per tensor, and how well each step follows the full-weight gradient.

Norms (``before_step``: after the backward pass and *before* the loop clips gradients, so they are the gradient the
loss produced; the loop logs the total the clip saw as ``train``/``grad_norm_before_clip``). Every trainable tensor
of the adaptation is counted exactly once (by identity): a layer's own tensors under the layer's module name, the
variant's :class:`~workbench.variant.Shared` tensors (Uni-LoRA's global vector, shared factors) under the module
``"shared"``, the tensors of ``modules_to_save`` under their module's name, and the total over all of them under
module ``""`` — the same set of tensors ``clip_grad_norm_`` sees in the loop, so with clipping on the two totals
agree.

The full-weight gradient G = ∂L/∂W of an adapted layer is Σ g_outᵀ x over the batch (g_out the gradient of the
layer's output, x its input), summed over every call of the layer in the forward pass: a layer applied twice (weight
sharing, as in ALBERT) contributes both calls. It is measured with one extra forward/backward on the probe step
through forward hooks and ``torch.autograd.grad`` (the parameters' ``.grad`` is left alone). That extra forward runs
in training mode, so it draws dropout masks: it runs inside :func:`~workbench.probes.base.isolated_rng`, and the run
with this probe is bit-identical to the run without it. (Its masks are therefore not the ones of the step's own
forward: G is the gradient on the step's batch under an independent dropout draw.)

After the optimizer step, the cosine between the effective step ΔW_after − ΔW_before and −G says how much of the step
goes where full fine-tuning's gradient descent would go (1 for full fine-tuning with SGD). G is the gradient of the
*task* loss alone, ∂L_task/∂W: the step also follows the variant's regulariser (SoRA's sparsity term on the gates,
AdaLoRA's orthogonality penalty, ...), its ``on_step`` (proximal steps, pruning, rank growth) and the optimizer's
preconditioning (Adam), so ``step_grad_cosine`` < 1 measures all of these together, not the parameterisation alone.

Memory (issue 24): between the two hooks the probe holds G (one fp32 matrix per adapted layer, what the cosine needs)
and, of ΔW_before, only what the adapter itself holds: the factors of ``update_factors()`` where the layer has them,
else the layer's (and the shared module's) own tensors, from which ΔW_before is re-evaluated after the step with
``torch.func.functional_call`` (the live parameters are never written). Each dense ΔW_before is then built for one
layer at a time. No second fp32 copy of every target weight is kept (≈ 26 GB more on a 7B model). A layer whose
tensors change names or shapes in the step (rank growth or pruning in ``on_step``) and has no factors gets no
``step_grad_cosine`` for that step.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Probe, ProbeContext, ProbeResult, isolated_rng, preserved_modes


def full_weight_gradients(adaptation, task, batch) -> dict[str, torch.Tensor]:
    """∂L/∂W for every adapted layer's (effective) weight, on ``batch``, summed over all calls of each layer."""
    inputs: dict[str, list[torch.Tensor]] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = []

    def hook(module_name):
        def fn(module, args, output):
            inputs.setdefault(module_name, []).append(args[0].detach())
            outputs.setdefault(module_name, []).append(output)
        return fn

    for name, layer in adaptation.named_layers():
        handles.append(layer.register_forward_hook(hook(name)))
    try:
        with torch.enable_grad():
            loss = task.loss(adaptation.model, batch)
            calls = [(n, i) for n, outs in outputs.items() for i, o in enumerate(outs) if o.requires_grad]
            grads = torch.autograd.grad(loss, [outputs[n][i] for n, i in calls], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, torch.Tensor] = {}
    for (n, i), g in zip(calls, grads):
        if g is None:
            continue
        x = inputs[n][i]
        term = g.reshape(-1, g.shape[-1]).t().float() @ x.reshape(-1, x.shape[-1]).float()
        out[n] = out[n] + term if n in out else term
    return out


def tensor_groups(adaptation) -> list[tuple[str, list[tuple[str, torch.Tensor]]]]:
    """``(module, [(tensor name, tensor), ...])`` covering every trainable tensor of ``adaptation`` exactly once:
    the layers' own, the shared module's (as module ``"shared"``), the modules trained in full, and any tensor of
    ``adaptation.parameters()`` none of those names (as module ``"other"``)."""
    seen: set[int] = set()
    groups: list[tuple[str, list[tuple[str, torch.Tensor]]]] = []

    def collect(module: str, named) -> None:
        tensors = []
        for pname, p in named:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                tensors.append((pname, p))
        if tensors:
            groups.append((module, tensors))

    for module, layer in adaptation.named_layers():
        collect(module, layer.named_parameters())
    if getattr(adaptation, "shared", None) is not None:
        collect("shared", adaptation.shared.named_parameters())
    for module, saved in adaptation.saved_modules():
        collect(module, saved.named_parameters())
    collect("other", adaptation.named_parameters())
    return groups


class _Update(nn.Module):
    """``forward()`` is the layer's ``update()``, so ``functional_call`` can evaluate it at saved tensors."""

    def __init__(self, layer, shared):
        super().__init__()
        self.layer = layer
        if shared is not None:
            self.shared = shared

    def forward(self) -> torch.Tensor:
        return self.layer.update()


def _eval_context(adaptation):
    """No gradient, the adaptation in eval mode (a variant that samples its update while training, like
    Bayesian-LoRA's gates, is read at its deterministic ΔW), the random generators left alone."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(preserved_modes(adaptation))
    stack.enter_context(isolated_rng(adaptation.model, adaptation))
    adaptation.eval()
    return stack


def _own_tensors(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().clone() for k, v in module.named_parameters() if not k.startswith("base.")} | {
        f"{prefix}{k}": v.detach().clone() for k, v in module.named_buffers() if not k.startswith("base.")}


def _saved_updates(adaptation) -> dict[str, tuple[str, object]]:
    """ΔW before the step, compactly: ``("factors", (B, A))`` or ``("tensors", {name: tensor})`` per layer."""
    shared = getattr(adaptation, "shared", None)
    saved: dict[str, tuple[str, object]] = {}
    with _eval_context(adaptation):
        for n, layer in adaptation.named_layers():
            if not layer.has_weight:
                continue
            f = layer.update_factors()
            if f is not None:
                saved[n] = ("factors", tuple(t.detach().float().clone() for t in f))
            else:
                own = _own_tensors(layer, "layer.")
                if shared is not None:
                    own.update(_own_tensors(shared, "shared."))
                saved[n] = ("tensors", own)
    return saved


def _dense_before(adaptation, layer, saved: tuple[str, object]) -> torch.Tensor | None:
    """ΔW_before of one layer from what :func:`_saved_updates` kept; None when its tensors no longer fit."""
    kind, value = saved
    if kind == "factors":
        b, a = value
        return b @ a
    shared = getattr(adaptation, "shared", None)
    wrapper = _Update(layer, shared)
    current = dict(wrapper.named_parameters()) | dict(wrapper.named_buffers())
    if any(k not in current or current[k].shape != v.shape for k, v in value.items()):
        return None
    return torch.func.functional_call(wrapper, value, (), strict=False).detach().float()


def _dense_now(layer, kind: str) -> torch.Tensor:
    """ΔW after the step, computed the way ΔW_before was (through the factors when those were kept), so that the
    difference of the two carries no rounding of two different formulas."""
    f = layer.update_factors() if kind == "factors" else None
    if f is not None:
        b, a = (t.detach().float() for t in f)
        return b @ a
    return layer.update().detach().float()


class GradientsProbe(Probe):
    name = "gradients"

    def before_step(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult()
        keys, squares = [], []
        for module, tensors in tensor_groups(ctx.adaptation):
            for pname, p in tensors:
                if p.grad is not None:
                    keys.append((module, pname))
                    squares.append(p.grad.detach().float().pow(2).sum())
        values = torch.stack(squares).tolist() if squares else []  # one device sync for all the norms
        per_module: dict[str, float] = {}
        for (module, pname), sq in zip(keys, values):
            out.add(module, f"grad_norm/{pname}", sq ** 0.5)
            per_module[module] = per_module.get(module, 0.0) + sq
        for module, _ in ctx.adaptation.named_layers():
            per_module.setdefault(module, 0.0)  # a layer without gradient this step still has a (zero) row
        for module, sq in per_module.items():
            out.add(module, "grad_norm", sq ** 0.5)
        out.add("", "grad_norm", sum(values) ** 0.5)
        if ctx.task is not None and ctx.batch is not None:
            with isolated_rng(ctx.adaptation.model, ctx.adaptation):
                ctx.state["G"] = full_weight_gradients(ctx.adaptation, ctx.task, ctx.batch)
            ctx.state["before"] = _saved_updates(ctx.adaptation)
            for module, g in ctx.state["G"].items():
                out.add(module, "full_grad_norm", float(torch.linalg.matrix_norm(g)))
        return out

    def after_step(self, ctx: ProbeContext) -> ProbeResult | None:
        grads, before = ctx.state.pop("G", None), ctx.state.pop("before", None)
        if not grads or before is None:
            return None
        out = ProbeResult()
        layers = dict(ctx.adaptation.named_layers())
        with _eval_context(ctx.adaptation):
            for module in ctx.adaptation.module_names:
                if module not in grads or module not in before or module not in layers:
                    continue
                old = _dense_before(ctx.adaptation, layers[module], before[module])
                if old is None:
                    continue
                step = _dense_now(layers[module], before[module][0]) - old
                del old
                out.add(module, "update_norm", float(torch.linalg.matrix_norm(step)))
                g = grads[module]
                denom = float(torch.linalg.matrix_norm(step) * torch.linalg.matrix_norm(g))
                if denom > 0:
                    out.add(module, "step_grad_cosine", float(-(step * g).sum()) / denom)
        return out
