"""Shared fixtures: a tiny teacher-student task that needs nothing but torch, and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_model(seed: int = 0) -> nn.Module:
    """Two linear layers of different shapes (32→64→32), so transposition mistakes show."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 32))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


class TinyTask:
    """A teacher-student regression: the teacher adds a rank-2 ΔW to each layer of ``tiny_model``."""

    name = "tiny"
    targets = ["0", "2"]
    metric = "rel_error"
    higher_is_better = False

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed + 1)
        self.deltas = {}
        teacher = tiny_model()
        for name in self.targets:
            lin = teacher.get_submodule(name)
            u = torch.randn(lin.out_features, 2, generator=g)
            v = torch.randn(2, lin.in_features, generator=g)
            self.deltas[name] = 0.5 * (u @ v) / lin.in_features ** 0.5
            with torch.no_grad():
                lin.weight += self.deltas[name]
        self.x = torch.randn(512, 32, generator=g)
        with torch.no_grad():
            self.y = teacher(self.x)

    def model(self) -> nn.Module:
        return tiny_model()

    def options(self) -> dict:
        return {}

    def batches(self, split="train", batch_size=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        while True:
            idx = torch.randint(0, len(self.x), (batch_size,), generator=g)
            yield {"x": self.x[idx], "y": self.y[idx]}

    def loss(self, model, batch):
        return nn.functional.mse_loss(model(batch["x"]), batch["y"])

    def evaluate(self, model, max_batches=None):
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(self.x), self.y).item()
        return {"loss": loss, "rel_error": loss / self.y.var().item()}

    def reference_delta(self):
        return dict(self.deltas)

    def describe(self) -> str:
        return "tiny teacher-student regression"


@pytest.fixture
def tiny_task():
    return TinyTask()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (it sits beside the repository in CI)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_leftover_path_limit():
    """A test that starts a server (``serve``/``configure``) sets the process-wide folder limit of
    :func:`workbench.tasks.base.restrict_paths`; lift it after every test so no later test on the same worker
    inherits a folder it never chose (CI's order put a dashboard-command test before the text-task tests)."""
    from workbench.tasks.base import restrict_paths

    yield
    restrict_paths(None)


def assert_matches_reference(layer: nn.Module, reference, params, x: torch.Tensor, seed: int = 11,
                             atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """``layer(x)`` and the gradients of ``params`` (and of x) under a random linear loss equal those of
    ``reference(x)``, a straightforward computation of the paper's formula from the same parameter tensors (for a
    linear layer: x (W0 + ΔW)ᵀ + b with a dense ΔW). For the performance rewrites of issue 24, which must keep what
    each variant computes."""
    x = x.detach().requires_grad_(True)
    y, y_ref = layer(x), reference(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    grads = torch.autograd.grad((y * w).sum(), [*params, x])
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [*params, x])
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=atol, rtol=rtol)
