"""The one registry of claims: every ``CLAIMS`` tuple declared beside a variant family
(``workbench/variants/<family>/claims.py``) or the recipes (``workbench/recipes/claims.py``).

Declarations are data; importing them runs no experiment. :func:`claims` returns them in a stable order (family
modules in name order, then recipes; inside a module, as declared). A name declared twice is an error.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from ..errors import ConfigError
from .claim import Claim

__all__ = ["claims", "get_claim", "claim_names", "claims_of_variant", "CLAIM_MODULES"]


def _modules() -> list[str]:
    from .. import variants

    names = [f"workbench.variants.{m.name}.claims" for m in pkgutil.iter_modules(variants.__path__) if m.ispkg]
    return [*sorted(names), "workbench.recipes.claims"]


CLAIM_MODULES = tuple(_modules())


def claims() -> list[Claim]:
    """Every declared claim (see the module docstring)."""
    out: dict[str, Claim] = {}
    for mod in CLAIM_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        for claim in getattr(module, "CLAIMS", ()):
            claim.check_names()
            if claim.name in out:
                raise ConfigError(f"claim {claim.name!r} is declared twice (again in {mod})")
            out[claim.name] = claim
    return list(out.values())


def claim_names() -> list[str]:
    return [c.name for c in claims()]


def get_claim(name: str) -> Claim:
    found = {c.name: c for c in claims()}
    if name not in found:
        hint = difflib.get_close_matches(name, list(found), n=3)
        raise ConfigError(f"claims: unknown claim {name!r}" + (f"; did you mean {', '.join(map(repr, hint))}?"
                                                               if hint else "") + " (`workbench claims --list`)")
    return found[name]


def claims_of_variant(variant: str) -> list[Claim]:
    """The claims whose paper is ``variant``'s (``Claim.variant``) or that train it in an arm."""
    return [c for c in claims() if c.variant == variant]
