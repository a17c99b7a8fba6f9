"""Budget matching: the value of a variant's size field whose trainable-parameter count (or saved adapter size) on a
task's model is closest to a budget, so that comparisons are at matched sizes.

Two sizes of an adapter differ for many variants: what trains (:meth:`Adaptation.num_trainable`) and what its saved
file holds (:func:`saved_numbers`: every layer's adapter state, the shared module's persistent tensors and the
``modules_to_save``). LoRA-XS and LoRA-SB save their frozen B and A beside R, SVFit and LoLDU their frozen factors,
PiSSA both its factors and their initial copies; random bases regenerated from a seed are never saved.
``budget_on="trainable"`` (the default) or ``"saved"`` says which one a budget counts.

:func:`match_budget` searches the variant's size field (``Variant.budget_field``, else the first of
:data:`_SIZE_FIELDS` in its config) within the range it allows on the *adapted* layers (a classifier head or an
embedding that is not adapted never caps it) and warns (:class:`BudgetWarning`) when the result misses the budget by
more than one step of the field; :func:`config_for_budget` returns just the config.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .adapt import adapt, match_targets
from .errors import ConfigError
from .options import Options, param
from .variant import get_variant

__all__ = ["match_budget", "config_for_budget", "count_params", "saved_numbers", "BudgetOptions", "BudgetMatch",
           "BudgetWarning"]

#: the size field of a variant that declares no ``budget_field``: the first of these in its config
_SIZE_FIELDS = ("r", "n", "rank", "n_coefficients")


def _size_field(variant) -> str | None:
    """The config field that sizes ``variant``'s adapter: ``Variant.budget_field`` when the class declares it,
    else the first of :data:`_SIZE_FIELDS` in its config, else ``None`` (nothing to size: full fine-tuning)."""
    cls = get_variant(variant)
    names = cls.Config.field_names()
    explicit = cls.budget_field
    if explicit is not None:
        if explicit not in names:
            raise ConfigError(f"{cls.name}: budget_field={explicit!r} is not a field of its config; "
                              f"fields: {', '.join(names) or '(none)'}")
        return explicit
    return next((n for n in _SIZE_FIELDS if n in names), None)


@dataclass
class BudgetOptions(Options):
    """What a parameter budget counts."""

    owner = "compare"
    budget_on: str = param("trainable", choices=("trainable", "saved"),
                           help="what a budget counts: trainable parameters, or the numbers the saved adapter holds "
                                "(frozen factors and initial copies included; regenerated random bases not)")


def saved_numbers(adaptation) -> int:
    """The numbers in ``adaptation``'s saved state (``adapter.safetensors``): every layer's adapter state, the
    shared module's persistent tensors and the ``modules_to_save``."""
    return sum(v.numel() for v in adaptation.adapter_state().values())


def _size_of(adaptation, budget_on: str) -> int:
    return adaptation.num_trainable() if budget_on == "trainable" else saved_numbers(adaptation)


def _budget_on(value: str) -> str:
    BudgetOptions(budget_on=value).validate()
    return value


def count_params(task, variant, targets=None, *, budget_on: str = "trainable", **config) -> int:
    """Trainable parameters (``budget_on="saved"``: saved numbers) of ``variant`` with ``config`` on ``task``'s
    model (built and thrown away)."""
    ad = adapt(task.model(), variant, targets or task.targets, **config)
    return _size_of(ad, _budget_on(budget_on))


class BudgetWarning(UserWarning):
    """A parameter budget that matching could not come within one step of the size field of."""


@dataclass(frozen=True)
class BudgetMatch:
    """What budget matching chose for one variant: its size ``field`` set to ``value`` gives ``reached`` trainable
    parameters where ``budget`` were asked for. ``step`` is what one unit of the field adds near ``value`` (the
    larger of its two neighbours' differences), so ``missed`` means the budget lies outside the field's reach on
    these targets. ``field`` and ``value`` are ``None`` for a variant with nothing to size (full fine-tuning).
    ``budget_on`` says what ``budget``, ``reached`` and ``step`` count: trainable parameters or saved numbers."""

    variant: str
    budget: int
    field: str | None
    value: int | None
    reached: int
    step: int
    config: dict[str, Any]
    #: "lowest" or "highest" when ``value`` is the end of the range the field may take with this config on these
    #: targets (a budget beyond it cannot be reached), else ``None``
    limit: str | None = None
    budget_on: str = "trainable"

    @property
    def at_limit(self) -> bool:
        return self.limit is not None

    @property
    def missed(self) -> bool:
        return self.field is not None and abs(self.reached - self.budget) > self.step

    def message(self) -> str:
        """One sentence for a warning or a table cell."""
        unit, counted = (("parameters", "trainable parameters") if self.budget_on == "trainable"
                         else ("saved numbers", "saved numbers"))
        if not self.missed:
            return f"{self.variant}: {self.field}={self.value} gives {self.reached:,} of {self.budget:,} {unit}"
        short = self.reached < self.budget
        why = (f"{self.value} is the {self.limit} {self.field} these target layers allow" if self.at_limit
               else f"the count is not monotone in {self.field} here, so a value further away may come closer")
        return (f"{self.variant}: budget={self.budget:,} {'not reached' if short else 'exceeded'} by more than one "
                f"step of {self.field} ({self.step:,} {unit}): {self.field}={self.value} gives "
                f"{self.reached:,} {counted} and {why}")


def _target_shapes(model, targets) -> list[tuple[int, int]]:
    """(out, in) of the layers ``adapt()`` would wrap: the one target matcher, so non-adapted layers (a
    classifier head, an embedding) never bound the size field."""
    if targets is None:
        targets = getattr(model, "default_targets", None)
        if targets is None:
            raise ConfigError("targets is required (glob patterns of nn.Linear module names, e.g. 'layers.*')")
    modules = [model.get_submodule(n) for n in match_targets(model, targets)]
    return [(m.out_features, m.in_features) for m in modules]


def _field_range(info: dict[str, Any], shapes: list[tuple[int, int]]) -> tuple[int, int | None]:
    """The integer range a size field may take on every target layer; ``None`` as the top when unbounded."""
    low, high = info["low"], info["high"]
    lo = max(low(s) for s in shapes) if callable(low) else (1 if low is None else low)
    lo = math.floor(lo) + 1 if info["low_open"] else math.ceil(lo)
    hi = min(high(s) for s in shapes) if callable(high) else high
    return max(int(lo), 0), (None if hi is None else math.floor(hi))


#: the top of a size field declared without one (VeRA's r): the search gallops up from the bottom, so the top costs
#: nothing unless a budget needs it, and it keeps a budget beyond reach from building gigabyte-sized bases
_UNBOUNDED = 2**16
_POLISH = 2  # values either side of the crossing pair that are also tried


def _first(pred: Callable[[int], bool], lo: int, hi: int) -> int:
    """The smallest v in [lo, hi] with ``pred(v)`` for a predicate that is false, then true (hi + 1 if never):
    doubling steps from ``lo``, then bisection, so the cost follows the answer rather than the range."""
    if pred(lo):
        return lo
    prev, step = lo, 1
    while True:
        v = min(lo + step, hi)
        if pred(v):
            break
        if v == hi:
            return hi + 1
        prev, step = v, step * 2
    lo, hi = prev + 1, v  # pred(prev) is false, pred(hi) is true
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _crossing(cost: Callable[[int], int | None], budget: int, growing: bool, lo: int, hi: int) -> int:
    """The smallest v in [lo, hi] whose count reaches ``budget`` (at least it when ``growing``, at most it when
    not; a value the config refuses counts as reached, so the search stays below it), hi + 1 if none does.

    The counts are close to affine in the size field (r·(in + out) per layer, k + l per layer, ...), so each guess
    is where the line through the last two counts meets the budget, at least doubling the distance while
    bracketing, then alternating with halving inside the bracket: an affine count is matched in about four model
    builds, and the builds near the answer, the expensive ones for NoLA's thousands of bases, are the only large
    ones. Counts that are not affine still take O(log value) builds."""
    sign = 1 if growing else -1

    def gap(v: int) -> float | None:  # < 0: not reached yet
        c = cost(v)
        return None if c is None else sign * (c - budget)

    def reached(v: int) -> bool:
        g = gap(v)
        return g is None or g >= 0

    def meet(a: int, ga: float, b: int, gb: float) -> int:  # where the line through (a, ga), (b, gb) crosses 0
        return b + math.ceil(-gb * (b - a) / (gb - ga)) if gb != ga else b + (b - a)

    if reached(lo):
        return lo
    if lo >= hi:
        return hi + 1
    a, b = lo, lo + 1
    while not reached(b):  # bracket: (a, b] with gap(a) < 0
        if b == hi:
            return hi + 1
        guess = min(max(meet(a, gap(a), b, gap(b)), b + (b - a)), hi)
        a, b = b, guess
    bisect = False
    while b - a > 1:
        gb = gap(b)
        if bisect or gb is None:
            m = (a + b) // 2
        else:
            m = min(max(meet(a, gap(a), b, gb) - 1, a + 1), b - 1)  # the last value below the line's crossing
        if reached(m):
            b = m
        else:
            a = m
        bisect = not bisect
    return b


def _affine_slope(counts: dict[int, int]) -> int | None:
    """The count per unit of the field when every measured (value, count) lies on one line, else ``None``."""
    if len(counts) < 2:
        return None
    (v0, c0), (v1, c1), *_ = sorted(counts.items())
    if any((c - c0) * (v1 - v0) != (c1 - c0) * (v - v0) for v, c in counts.items()):
        return None
    return abs(c1 - c0) // (v1 - v0)


def _copy(model, task):
    """A fresh copy of the task's model to adapt (cheaper than building it again, e.g. loading MiniLM)."""
    try:
        return copy.deepcopy(model)
    except (TypeError, RuntimeError, copy.Error):  # a model that cannot be copied: build another
        return task.model()


def match_budget(task, variant, budget: int, targets=None, *, budget_on: str = "trainable", **config) -> BudgetMatch:
    """Set ``variant``'s size field (:func:`_size_field`) to the value whose trainable-parameter count on
    ``task``'s model is closest to ``budget``, within the range its declaration allows on the *adapted* layers.
    ``budget_on="saved"`` matches the saved adapter's size (:func:`saved_numbers`) instead; ``reached`` and
    ``step`` then count saved numbers.

    The count is monotone in the size field (growing for most variants, falling for RandLoRA, whose bases get
    fewer as r grows), and the values the config accepts form one interval around the given (or default) value:
    :func:`_first` finds that interval's bottom and :func:`_crossing` the first value that reaches the budget, in a
    few model builds on copies of one model; unless every count measured lies on one line, the values next to that
    crossing are tried too. RandLoRA's count is monotone only at a coarse scale (ceil(d/r) bases of r + d
    parameters: it rises within each run of r with the same number of bases), so its match is the closest value
    near the crossing, not always the closest overall (the warning then says so).

    Warns (:class:`BudgetWarning`) when the result misses the budget by more than one step of the field, e.g. when
    the targets cap a rank below what the budget would pay for.
    """
    if budget < 1:
        raise ConfigError(f"compare: budget={budget} is invalid; budget must be an integer in [1, inf)")
    _budget_on(budget_on)
    cls = get_variant(variant)
    name = _size_field(variant)
    targets = targets or getattr(task, "targets", None)
    model = task.model()
    memo: dict[int | None, int | None] = {}

    def cost(v: int | None) -> int | None:
        """Trainable parameters with the field at ``v``; ``None`` where the config refuses ``v``."""
        if v not in memo:
            cfg = config if name is None else {**config, name: v}
            try:
                memo[v] = _size_of(adapt(_copy(model, task), variant, targets, **cfg), budget_on)
            except ConfigError:
                memo[v] = None
        return memo[v]

    if name is None:  # nothing to size: the config as it is
        return BudgetMatch(cls.name, budget, None, None, cost(None), 0, dict(config), budget_on=budget_on)
    info = next(f for f in cls.Config.fields_info() if f["name"] == name)
    lo, hi = _field_range(info, _target_shapes(model, targets))
    if hi is not None and hi < lo:
        raise ConfigError(f"{cls.name}: {name} has no allowed value on these target layers ([{lo}, {hi}])")
    top = _UNBOUNDED if hi is None else hi
    anchor = min(max(int(config.get(name, info["default"])), lo), top)
    start = next((v for v in (anchor, lo) if cost(v) is not None), None)
    if start is None:  # no value works with the rest of the config: let adapt() say why
        count_params(task, variant, targets, budget_on=budget_on, **{**config, name: anchor})
        raise ConfigError(f"{cls.name}: no {name} in [{lo}, {hi}] gives a valid config for budget matching")
    bottom = _first(lambda v: cost(v) is not None, lo, start)
    other = start if start > bottom else (bottom + 1 if bottom < top and cost(bottom + 1) is not None else bottom)
    growing = cost(other) >= cost(bottom)

    def valid(v: int) -> bool:
        return bottom <= v <= top and cost(v) is not None

    first = _crossing(cost, budget, growing, bottom, top)
    slope = _affine_slope({v: c for v, c in memo.items() if v is not None and c is not None})
    if slope is not None:  # an affine count: the crossing pair holds the closest value, one field step apart
        candidates = [v for v in (first - 1, first) if bottom <= v <= top and memo.get(v) is not None]  # measured
        value = min(candidates, key=lambda v: (abs(cost(v) - budget), v))
        step = slope
        above = value == top or (value == first - 1 and (first > top or cost(first) is None))
    else:  # the values around the pair too: a count monotone only at a coarser scale (RandLoRA's sawtooth)
        around = range(max(bottom, first - 1 - _POLISH), min(top, first + _POLISH) + 1)
        value = min((v for v in around if cost(v) is not None), key=lambda v: (abs(cost(v) - budget), v))
        step = max((abs(cost(v) - cost(value)) for v in (value - 1, value + 1) if valid(v)), default=0)
        above = value == top or not valid(value + 1)
    limit = "highest" if above else "lowest" if value == bottom else None
    match = BudgetMatch(cls.name, budget, name, value, cost(value), step, {**config, name: value}, limit, budget_on)
    if match.missed:
        warnings.warn(match.message(), BudgetWarning, stacklevel=2)
    return match


def config_for_budget(task, variant, budget: int, targets=None, *, budget_on: str = "trainable",
                      **config) -> dict[str, Any]:
    """The config (``config`` plus the size field) whose parameter count (``budget_on``) is closest to ``budget``:
    the ``config`` of :func:`match_budget`, which says how close it came."""
    return match_budget(task, variant, budget, targets, budget_on=budget_on, **config).config
