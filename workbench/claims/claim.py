"""A claim: one sentence of a paper and the small experiment that tests it here (issue 25).

A :class:`Claim` is data, declared next to its variant (``workbench/variants/<family>/claims.py``) or recipe
(``workbench/recipes/claims.py``) as ``CLAIMS = (Claim(...), ...)``. It names the task, the arms compared (each a
variant with its config and setting overrides, trained on the same seeds), the registered statistic read from each
finished run (:mod:`workbench.claims.statistics`), the claimed direction of the effect and the test that decides it
(:mod:`workbench.claims.verdict`):

* two arms ``a`` and ``b``: the effect is the per-seed difference d_s = stat(a, s) − stat(b, s) (paired: the same
  seed trains both arms), claimed ``"greater"`` or ``"less"`` than 0;
* one arm ``a``: the effect is d_s = stat(a, s) − ``threshold``, claimed ``"greater"`` or ``"less"`` than 0.

A two-arm claim of *non-inferiority* ("a matches b with fewer parameters") states a ``margin`` m ≥ 0 in advance:
the effect is d_s = stat(a, s) − stat(b, s) + m claimed ``"greater"`` than 0 (a is worse than b by less than m), or
d_s = stat(a, s) − stat(b, s) − m claimed ``"less"`` (a is higher than b by less than m, for a lower-is-better
statistic); ``threshold`` stays one-arm only.

A claim whose experiment is not "train each arm once per seed and read a statistic" (a sequence of stages, a
generator fitted on many runs, a computation with no training) names a registered ``experiment``
(:mod:`workbench.claims.experiments`) instead: ``fn(claim, seed, **experiment_options)`` returns both arms' values
for that seed, and ``statistic`` is then unused. The arms still name what is compared (their ``config`` and
``settings`` are what the experiment reads).

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
    margin: float = param(0.0, low=0.0, help="with two arms: the non-inferiority margin, stated in advance (a may "
                                             "be worse than b by less than this)")
    experiment: str = param("", help="a registered experiment run per seed instead of training the arms and reading "
                                     "the statistic (empty: train and read)")
    experiment_options: dict = param({}, help="keyword options of the experiment")
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
        if self.margin and len(keys) == 1:
            raise ConfigError(f"claim {self.name}: margin={self.margin!r} is invalid; a margin needs two arms (a "
                              f"one-arm claim states its threshold instead)")
        if self.experiment_options and not self.experiment:
            raise ConfigError(f"claim {self.name}: experiment_options={self.experiment_options!r} is invalid without "
                              f"an experiment; name a registered experiment or leave them empty")

    def check_names(self) -> None:
        """The arms' variants and recipes and the statistic exist (checked by the registry, not at declaration:
        the declarations are imported while the variants are still registering)."""
        from ..recipes import get_recipe
        from ..variant import get_variant
        from .experiments import get_experiment
        from .statistics import get_statistic

        for arm in self.arms.values():
            get_variant(arm.variant)
            if "recipe" in arm.settings:
                get_recipe(arm.settings["recipe"])
        if self.experiment:
            get_experiment(self.experiment)
        else:
            get_statistic(self.statistic)

    @property
    def two_armed(self) -> bool:
        return "b" in self.arms

    @property
    def quantity(self) -> str:
        """What is compared: the experiment's name when the claim runs one, else the statistic's."""
        return self.experiment or self.statistic

    @property
    def signed_margin(self) -> float:
        """The shift added to every a − b: +margin for "greater", −margin for "less" (see the module docstring)."""
        return self.margin if self.direction == "greater" else -self.margin

    def describe_effect(self) -> str:
        """The claimed inequality in words, e.g. ``rel_error(loca) − rel_error(fourierft) < 0``, or with a margin
        ``metric(vera) − metric(lora) > −0.05``."""
        sign = ">" if self.direction == "greater" else "<"
        a = f"{self.quantity}({self.arms['a'].name})"
        if self.two_armed:
            bound = f"{-self.signed_margin:g}".replace("-", "−") if self.margin else "0"
            return f"{a} − {self.quantity}({self.arms['b'].name}) {sign} {bound}"
        return f"{a} {sign} {self.threshold:g}"

    #: fields added after the first ledger was written, left out of :meth:`record` at their defaults so that the
    #: digests (and verdicts) of the claims declared before them stay valid
    LATER_FIELDS: ClassVar[dict[str, Any]] = {"margin": 0.0, "experiment": "", "experiment_options": {}}

    def record(self) -> dict[str, Any]:
        """The declaration as JSON-able data (what :meth:`digest` hashes)."""
        out = asdict(self)
        out["arms"] = {k: asdict(v) for k, v in self.arms.items()}
        for k, default in self.LATER_FIELDS.items():
            if out[k] == default:
                del out[k]
        return out

    def digest(self) -> str:
        """sha256 of the declaration (sorted JSON): a changed claim makes its recorded verdict stale."""
        text = json.dumps(self.record(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
