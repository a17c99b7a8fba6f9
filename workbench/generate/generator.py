"""ICM-LoRA's generator: fit a conditional VAE on a collection of LoRAs, then generate a LoRA for a condition.

Shao et al., "In-Context Meta LoRA Generation", IJCAI 2025 (github.com/YihuaJerry/ICM-LoRA). Pipeline (§3):

1. every checkpoint's tensors are flattened and z-scored per tensor (``utils/normalizeLoraWeight_small.py``) and
   concatenated into one vector x;
2. a CVAE (:mod:`workbench.generate.cvae`) learns p(x | c) with L = MSE + 0.005·KL (AdamW: the released script
   never creates its optimiser; cosine schedule as in the paper);
3. generation decodes z with the condition, de-normalises per tensor and reshapes into the LoRA's A and B, which are
   loaded into an ordinary ``adapt()``-ed model: every probe, figure and export treats it like a trained one.

Read from the released code, and where this module differs:

* **Normalisation statistics.** The released code z-scores each checkpoint with its own mean and std and
  de-normalises a generated vector with the statistics of one *stored checkpoint of the target task*
  (``ReconstructLora_cvae.py``, ``normalized_adapter_model_99.pth``), which a genuinely new condition does not have.
  Here each tensor's mean and std are pooled over the whole collection and saved with the generator.
* **z at generation.** The paper samples z ~ N(0, I); :func:`generate` decodes the prior's mean z = 0 unless
  ``sample=True`` (then z is drawn from a seeded stream), so a generated LoRA is a function of the condition.
* **"In-context meta-learning".** In the paper the *context* is the task's samples fed through the fine-tuned LLM,
  whose averaged last hidden state is the condition, and *meta* is one generator over many tasks. Here the condition
  is the family's option value itself (a given number, embedded by a learned MLP, see :mod:`.cvae`); there is no
  LLM to read a context with. Could not be confirmed from the code: how the task vectors of the paper's several
  tasks are combined for one CVAE (the released script trains on one folder of one task's checkpoints).
* **Out of range.** A condition outside the range the generator was trained on is refused with a ConfigError naming
  the range; ``extrapolate=True`` generates anyway and records ``extrapolated: true``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .. import devices, rng
from .. import tasks as task_registry
from ..adapt import Adaptation, load_adaptation
from ..budget import saved_numbers
from ..errors import ConfigError
from ..events import StepContext
from ..io import atomic_save_safetensors, atomic_write_json
from ..options import Options, param
from ..probes import ProbeContext, get_probes
from ..runs import Run, RunStore, new_run_id
from .collect import Collection
from .cvae import CVAE

__all__ = ["GeneratorConfig", "Generator", "GeneratedAdaptation", "fit_generator", "generate", "generate_run",
           "load_generator", "load_generated"]

FORMAT_VERSION = 1


@dataclass
class GeneratorConfig(Options):
    """The CVAE's shape and training (paper values in the help; defaults scaled for a CPU and a few dozen LoRAs)."""

    owner = "generator"
    blocks: int = param(4, low=1, high=12, help="Conv1d blocks of the encoder (paper 12), stride 2 each")
    channels: int = param(8, low=1, high=256, help="channels of the first block, doubling to the middle (paper 8)")
    kernel: int = param(7, low=1, high=31, help="Conv1d kernel size (paper 7)")
    latent: int = param(4, low=1, high=4096, help="latent width (paper 256)")
    embed: int = param(16, low=1, high=4096, help="width of the learned condition embedding")
    kl_weight: float = param(0.005, low=0.0, high=10.0, help="β of MSE + β·KL (paper 0.005)")
    steps: int = param(1500, low=1, high=1_000_000, help="optimizer steps (paper: 2000 epochs at batch 2)")
    lr: float = param(3e-3, low=0.0, low_open=True, high=1.0, help="AdamW learning rate, cosine decay (paper 2e-4)")
    batch_size: int = param(8, low=1, high=65536, help="checkpoints per batch (paper 2)")
    weight_decay: float = param(0.0, low=0.0, high=1.0, help="AdamW weight decay")
    seed: int = param(0, low=0, high=2**31 - 1, help="seed of the CVAE's init, batches and z draws")

    def check(self, shapes) -> None:
        if self.kernel % 2 == 0:
            raise ConfigError(f"generator: kernel={self.kernel} is invalid; kernel must be an odd integer in [1, 31]")


class Generator:
    """A fitted CVAE with what it takes to turn its output into an adaptation: the tensor layout (names, shapes),
    the per-tensor statistics, the condition's name and trained range, and the collection's LoRA setup."""

    def __init__(self, cvae: CVAE, config: GeneratorConfig, meta: dict[str, Any], mean: torch.Tensor,
                 std: torch.Tensor, history: list[float] | None = None):
        self.cvae, self.config, self.meta = cvae, config, meta
        self.mean, self.std = mean, std
        self.history = list(history or [])
        self.path: Path | None = None
        self.id = self._fingerprint()

    # -- views ---------------------------------------------------------------------------------------------------
    @property
    def condition(self) -> str:
        return self.meta["condition"]

    @property
    def range(self) -> tuple[float, float]:
        return tuple(self.meta["range"])

    @property
    def layout(self) -> list[tuple[str, list[int]]]:
        return [(k, list(s)) for k, s in self.meta["layout"]]

    def num_parameters(self) -> int:
        """Numbers stored to generate: the CVAE's parameters and buffers and the per-tensor mean and std."""
        return sum(v.numel() for v in self.cvae.state_dict().values()) + self.mean.numel() + self.std.numel()

    def task_at(self, value: float):
        return task_registry.get(self.meta["task"], **{**self.meta["task_options"], self.condition: value})

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.cvae.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return "cvae-" + h.hexdigest()[:12]

    # -- decoding ------------------------------------------------------------------------------------------------
    def scaled(self, value: float) -> torch.Tensor:
        lo, hi = self.range
        return torch.tensor([[(value - lo) / (hi - lo) if hi > lo else 0.0]])

    def check_condition(self, value: float, extrapolate: bool = False) -> bool:
        """Whether ``value`` lies outside the trained range; raises ConfigError there unless ``extrapolate``."""
        lo, hi = self.range
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"generate: {self.condition}={value!r} is invalid; {self.condition} must be a number "
                              f"in [{lo:g}, {hi:g}]")
        outside = not lo <= value <= hi
        if outside and not extrapolate:
            raise ConfigError(f"generate: {self.condition}={value:g} is outside the generator's trained range; "
                              f"{self.condition} must be a number in [{lo:g}, {hi:g}] (the conditions its LoRAs "
                              "were collected at). Pass extrapolate=True to generate anyway (the result is flagged).")
        return outside

    @torch.no_grad()
    def state(self, value: float, *, sample: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
        """The generated adapter state at condition ``value`` (no range check: see :func:`generate`)."""
        self.cvae.eval()
        dev = next(self.cvae.parameters()).device
        c = self.scaled(float(value)).to(dev)
        with rng.seeded(seed):
            z = (torch.randn(1, self.cvae.latent, generator=rng.generator(dev), device=dev) if sample
                 else torch.zeros(1, self.cvae.latent, device=dev))
        x = self.cvae.decode(z, c)[0].cpu()
        return unflatten(x, self.layout, self.mean, self.std)

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """``generator.safetensors`` (CVAE state, mean, std) and ``generator.json`` into the folder ``path``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"cvae.{k}": v for k, v in self.cvae.state_dict().items()}
        tensors.update({"stats.mean": self.mean, "stats.std": self.std})
        atomic_save_safetensors(tensors, out / "generator.safetensors")
        atomic_write_json(out / "generator.json", {"format": FORMAT_VERSION, "id": self.id,
                                                   "config": self.config.to_dict(), "meta": self.meta,
                                                   "history": self.history})
        self.path = out
        return out


def flatten(state: dict[str, torch.Tensor], layout, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One vector: each tensor of ``layout`` z-scored with its own (pooled) mean and std, concatenated."""
    return torch.cat([((state[k].float() - mean[i]) / std[i]).flatten() for i, (k, _) in enumerate(layout)])


def unflatten(x: torch.Tensor, layout, mean: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for i, (k, shape) in enumerate(layout):
        n = math.prod(shape)
        out[k] = (x[at:at + n] * std[i] + mean[i]).reshape(shape).contiguous()
        at += n
    return out


def fit_generator(collection: Collection, config: GeneratorConfig | dict | None = None, *, device: str = "cpu",
                  **overrides: Any) -> Generator:
    """Train a CVAE on every checkpoint of ``collection``.

    Args:
        collection: from :func:`~workbench.generate.collect` or :func:`~workbench.generate.load_collection`.
        config: a :class:`GeneratorConfig` or its fields as a dict; ``overrides`` are more fields.

    Returns:
        The fitted :class:`Generator`; ``history`` holds the training loss per step.

    Raises:
        ConfigError: unknown or out-of-range fields, or an empty collection.
    """
    fields = config.to_dict() if isinstance(config, GeneratorConfig) else dict(config or {})
    cfg = GeneratorConfig.from_kwargs({**fields, **overrides})
    cfg.validate()
    cks = collection.checkpoints
    if not cks:
        raise ConfigError("fit_generator: the collection holds no checkpoints")
    layout = [(k, list(v.shape)) for k, v in cks[0].state.items()]
    stacked = {k: torch.stack([c.state[k].float() for c in cks]) for k, _ in layout}
    mean = torch.stack([stacked[k].mean() for k, _ in layout])
    std = torch.stack([stacked[k].std().clamp_min(1e-8) for k, _ in layout])
    x = torch.stack([flatten(c.state, layout, mean, std) for c in cks])
    lo, hi = collection.range()
    meta = {"task": collection.task, "condition": collection.condition, "task_options": collection.task_options,
            "range": [lo, hi], "conditions": collection.conditions(), "layout": layout,
            "variant": collection.variant, "config": collection.config, "targets": collection.targets,
            "seed": collection.seed, "checkpoints": len(cks), "stored_numbers": collection.stored_numbers(),
            "collection": collection.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    dev = devices.resolve(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), rng.seeded(cfg.seed):
        torch.manual_seed(cfg.seed)  # nn.Module's default init draws from the global generator: forked, seeded
        cvae = CVAE(x.shape[1], 1, blocks=cfg.blocks, channels=cfg.channels, kernel=cfg.kernel,
                    latent=cfg.latent, embed=cfg.embed).to(dev)
        gen = Generator(cvae, cfg, meta, mean, std)
        c = torch.cat([gen.scaled(ck.condition) for ck in cks]).to(dev)
        x = x.to(dev)
        history = _fit(cvae, x, c, cfg, dev)
    gen.history = history
    gen.id = gen._fingerprint()
    return gen


def _fit(cvae: CVAE, x: torch.Tensor, c: torch.Tensor, cfg: GeneratorConfig, dev: torch.device) -> list[float]:
    opt = torch.optim.AdamW(cvae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    n, bs = x.shape[0], min(cfg.batch_size, x.shape[0])
    order, at, losses = torch.randperm(n, generator=rng.generator("cpu")), 0, []
    cvae.train()
    for _ in range(cfg.steps):
        if at + bs > n:
            order, at = torch.randperm(n, generator=rng.generator("cpu")), 0
        idx = order[at:at + bs].to(dev)
        at += bs
        loss, _, _ = cvae.loss(x[idx], c[idx], cfg.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    cvae.eval()
    return torch.stack(losses).tolist()  # one sync, at the end


def load_generator(path: str | os.PathLike, device: str = "cpu") -> Generator:
    """A generator saved by :meth:`Generator.save`."""
    path = Path(path)
    meta_file, tensor_file = path / "generator.json", path / "generator.safetensors"
    if not meta_file.exists() or not tensor_file.exists():
        raise FileNotFoundError(f"{path} is not a saved generator (needs generator.json and generator.safetensors)")
    saved = json.loads(meta_file.read_text())
    cfg = GeneratorConfig.from_kwargs(saved["config"])
    cfg.validate()
    tensors = load_file(str(tensor_file))
    length = sum(math.prod(s) for _, s in saved["meta"]["layout"])
    cvae = CVAE(length, 1, blocks=cfg.blocks, channels=cfg.channels, kernel=cfg.kernel, latent=cfg.latent,
                embed=cfg.embed)
    cvae.load_state_dict({k[len("cvae."):]: v for k, v in tensors.items() if k.startswith("cvae.")})
    gen = Generator(cvae.to(device).eval(), cfg, saved["meta"], tensors["stats.mean"], tensors["stats.std"],
                    saved.get("history"))
    gen.path = path
    return gen


class GeneratedAdaptation(Adaptation):
    """An :class:`Adaptation` whose tensors came from a generator: ``generated`` records which generator (id and
    folder), the condition, whether z was sampled and whether the condition was outside the trained range, and
    ``adaptation.json`` carries it (``load_generated`` reads it back; ``load_adaptation`` ignores it)."""

    generated: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "generated": self.generated}


def generate(generator: Generator, model: torch.nn.Module, condition: float, *, sample: bool = False,
             seed: int = 0, extrapolate: bool = False) -> GeneratedAdaptation:
    """A LoRA for ``condition`` from ``generator``, adapted onto ``model`` (a fresh ``task.model()``).

    Args:
        condition: the value of the generator's condition option (``t`` for ``synthetic-family:path``).
        sample: draw z ~ N(0, I) with ``seed`` (the paper) instead of decoding z = 0.
        extrapolate: generate outside the trained range instead of refusing (``generated["extrapolated"]``).

    Returns:
        An adaptation built by :func:`workbench.adapt` with the generated tensors loaded.

    Raises:
        ConfigError: ``condition`` outside the trained range (the message names it), or a model that does not
            fit the generator's layout.
    """
    outside = generator.check_condition(condition, extrapolate)
    state = generator.state(float(condition), sample=sample, seed=seed)
    ad = _adapt_like(generator, model)
    dev = next(ad.model.parameters()).device
    for n, layer in ad.named_layers():
        prefix = n + "."
        layer.load_adapter_state({k[len(prefix):]: v.to(dev) for k, v in state.items() if k.startswith(prefix)})
    ad.__class__ = GeneratedAdaptation  # the same object, whose record says where its tensors came from
    ad.generated = {"generator": generator.id, "path": str(generator.path) if generator.path else None,
                    "condition": {generator.condition: float(condition)}, "sample": bool(sample), "seed": seed,
                    "extrapolated": bool(outside), "trained_range": list(generator.range)}
    return ad


def _adapt_like(generator: Generator, model: torch.nn.Module) -> Adaptation:
    from ..adapt import adapt

    m = generator.meta
    ad = adapt(model, m["variant"], m["targets"], seed=m["seed"], **m["config"])
    have = [(k, list(v.shape)) for k, v in ad.adapter_state().items()]
    if have != generator.layout:
        raise ConfigError(f"generate: the model's adapter tensors {have[:4]}... do not match the generator's layout "
                          f"{generator.layout[:4]}...; use the task the generator was trained on ({m['task']})")
    return ad


def load_generated(model: torch.nn.Module, path: str | os.PathLike) -> Adaptation:
    """:func:`workbench.load_adaptation`, keeping the ``generated`` record of a generated adaptation."""
    ad = load_adaptation(model, path)
    meta = json.loads((Path(path) / "adaptation.json").read_text())
    if "generated" in meta:
        ad.__class__ = GeneratedAdaptation
        ad.generated = meta["generated"]
    return ad


def generate_run(generator: Generator, condition: float, *, store: RunStore | str | None = None,
                 sample: bool = False, seed: int = 0, extrapolate: bool = False,
                 probes: str | list[str] | None = "default") -> Run:
    """A :class:`Run` holding the generated LoRA at ``condition``, evaluated on the family's task there, so the
    Runs list, Inspect and the exporters treat it like a trained run; ``config["generated"]`` says where it came
    from (``steps`` is 0: nothing was trained). ``probes`` run once, at step 0, with the task's true ΔW as the
    reference where it is known (spectra, subspace similarity). Saved to ``store`` when given."""
    generator.check_condition(condition, extrapolate)  # before building a task at a condition it may not accept
    task = generator.task_at(condition)
    ad = generate(generator, task.model(), condition, sample=sample, seed=seed, extrapolate=extrapolate)
    ad.eval()
    result = task.evaluate(ad.model)
    m = generator.meta
    run = Run(id=new_run_id(m["variant"], task.name), adaptation=ad, status="completed", config={
        "task": task.name, "task_options": task.options(), "variant": m["variant"], "config": m["config"],
        "targets": m["targets"], "steps": 0, "lr": None, "batch_size": None, "seed": m["seed"],
        "probes": [p.name for p in get_probes(probes)], "generated": ad.generated,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    for key, value in result.items():
        run.log(0, "eval", "", key, value)
    _probe_once(run, ad, task, probes)
    metric = getattr(task, "metric", "loss")
    run.summary = {"status": "completed", "steps_done": 0, "trainable_params": ad.num_trainable(),
                   "saved_numbers": saved_numbers(ad), "final_loss": result.get("loss"), "metric": metric,
                   "metric_value": result.get(metric), "higher_is_better": getattr(task, "higher_is_better", False),
                   "generator_numbers": generator.num_parameters()}
    if store is not None:
        (RunStore(store) if not isinstance(store, RunStore) else store).save(run)
    return run


def _probe_once(run: Run, ad: Adaptation, task, probes) -> None:
    """Run ``probes`` once on the generated adaptation, recording into ``run`` at step 0 as train() would."""
    probe_list = get_probes(probes)
    if not probe_list:
        return
    reference = task.reference_delta()
    batch = next(iter(task.batches("train", batch_size=32, seed=0)))
    loop = StepContext.standalone(ad, total_steps=1, lr=0.0, task=task)
    with rng.seeded(0):
        for probe in probe_list:
            ctx = ProbeContext(adaptation=ad, task=task, step=0, batch=batch, reference=reference, loop=loop)
            out = probe.after_step(ctx)  # no before_step: nothing is trained, so there is no gradient to read
            if out is None:
                continue
            for module, key, value in out.records:
                run.log(0, probe.name, module, key, value)
            for (module, name), tensor in out.arrays.items():
                run.add_snapshot(0, probe.name, module, name, tensor)
