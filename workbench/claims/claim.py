"""A claim: one sentence of a paper and the small experiment that tests it here (issue 25).

A :class:`Claim` is data, declared next to its variant (``workbench/variants/<family>/claims.py``) or recipe
(``workbench/recipes/claims.py``) as ``CLAIMS = (Claim(...), ...)``. It names the task, the arms compared (each a
variant with its config and setting overrides, trained on the same seeds), the registered statistic read from each
finished run (:mod:`workbench.claims.statistics`), the claimed direction of the effect and the test that decides it
(:mod:`workbench.claims.verdict`):

* two arms ``a`` and ``b``: the effect is the per-seed difference d_s = stat(a, s) − stat(b, s) (paired: the same
  seed trains both arms), claimed ``"greater"`` or ``"less"`` than 0;
* one arm ``a``: the effect is d_s = stat(a, s) − ``threshold``, claimed ``"greater"`` or ``"less"`` than 0.

The declaration's :meth:`Claim.digest` (a hash of every field) is recorded with each verdict, so a ledger written
for another declaration is stale (``tests/test_claims.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError
from ..options import Options, param

__all__ = ["Claim", "Arm", "TESTS", "DIRECTIONS"]

TESTS = ("paired-t", "bootstrap")
DIRECTIONS = ("greater", "less")


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a variant, its config, and setting overrides on top of the claim's ``settings``
    (a recipe, a rate); ``label`` is how the ledger names it (default: the variant)."""

    variant: str
    config: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.variant


@dataclass(frozen=True)
class Claim:
    """The declaration of one claim (see the module docstring). ``arms`` maps ``"a"`` (and ``"b"``) to an
    :class:`Arm` or a ``(variant, config)`` / ``(variant, config, settings)`` tuple.

    Declared with :func:`~workbench.options.param` and checked by :class:`~workbench.options.Options`' own
    validation (borrowed, since a frozen dataclass cannot subclass the mutable Options): errors name the field,
    the value and the allowed range."""

    owner: ClassVar[str] = "claim"
    fields_info = classmethod(Options.fields_info.__func__)
    validate = Options.validate
    _check_type = Options._check_type
    _check_range = Options._check_range

    name: str = param("", help="the claim's key, e.g. loca-beats-fourierft")
    variant: str = param("", help="the variant or recipe whose paper makes the claim (the Learn tab shows it there)")
    statement: str = param("", help="the paper's claim in one sentence")
    source: str = param("", help="where the paper says it (section, figure, table)")
    task: str = param("synthetic:lowrank", help="the task both arms train on")
    task_options: dict = param({}, help="the task's options")
    settings: dict = param({}, help="TrainSettings overrides shared by every arm (steps, lr, ...)")
    arms: dict = param({}, help="'a' (and 'b'): the variants compared")
    probes: list = param([], help="probes every run records (a statistic that reads logged values needs them)")
    presets: bool = param(True, help="apply the variants' presets for the task (train(presets=...))")
    statistic: str = param("metric", help="a registered statistic, read from each finished run")
    statistic_options: dict = param({}, help="keyword options of the statistic")
    direction: str = param("less", choices=DIRECTIONS, help="the claimed sign of a − b (or of a − threshold)")
    threshold: float | None = param(None, help="with one arm: the value the statistic is claimed to beat")
    seeds: int = param(3, low=2, high=20, help="training seeds per arm (0 … seeds−1, the same for every arm)")
    test: str = param("paired-t", choices=TESTS, help="paired t-test over seeds, or a bootstrap interval of the "
                                                       "mean difference")
    alpha: float = param(0.05, low=0.0, low_open=True, high=0.5, help="one-sided level of the test")
    note: str = param("", help="how the experiment is scaled down from the paper's, and what a reader should know")

    def __post_init__(self) -> None:
        arms = {k: v if isinstance(v, Arm) else Arm(*v) for k, v in dict(self.arms).items()}
        object.__setattr__(self, "arms", arms)
        self.validate()

    def check(self, shapes) -> None:
        if not self.name:
            raise ConfigError("claim: name is empty; give the claim a key such as 'loca-beats-fourierft'")
        keys = sorted(self.arms)
        if keys not in (["a"], ["a", "b"]):
            raise ConfigError(f"claim {self.name}: arms={keys} is invalid; arms must be 'a' (against threshold) or "
                              f"'a' and 'b'")
        if (len(keys) == 1) != (self.threshold is not None):
            raise ConfigError(f"claim {self.name}: threshold={self.threshold!r} is invalid; a one-arm claim needs a "
                              f"threshold and a two-arm claim must not have one")

    def check_names(self) -> None:
        """The arms' variants and recipes and the statistic exist (checked by the registry, not at declaration:
        the declarations are imported while the variants are still registering)."""
        from ..recipes import get_recipe
        from ..variant import get_variant
        from .statistics import get_statistic

        for arm in self.arms.values():
            get_variant(arm.variant)
            if "recipe" in arm.settings:
                get_recipe(arm.settings["recipe"])
        get_statistic(self.statistic)

    @property
    def two_armed(self) -> bool:
        return "b" in self.arms

    def describe_effect(self) -> str:
        """The claimed inequality in words, e.g. ``rel_error(loca) − rel_error(fourierft) < 0``."""
        sign = ">" if self.direction == "greater" else "<"
        a = f"{self.statistic}({self.arms['a'].name})"
        if self.two_armed:
            return f"{a} − {self.statistic}({self.arms['b'].name}) {sign} 0"
        return f"{a} {sign} {self.threshold:g}"

    def record(self) -> dict[str, Any]:
        """The declaration as JSON-able data (what :meth:`digest` hashes)."""
        out = asdict(self)
        out["arms"] = {k: asdict(v) for k, v in self.arms.items()}
        return out

    def digest(self) -> str:
        """sha256 of the declaration (sorted JSON): a changed claim makes its recorded verdict stale."""
        text = json.dumps(self.record(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
