"""The display order lists only registered variants, and a new variant needs no edit of the list to be shown."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import workbench.variant as core
from workbench.variant import CANONICAL_ORDER, Variant, VariantConfig, register, variant_infos, variant_names


def test_display_order_names_only_registered_variants():
    registered = {info.cls.name for info in variant_infos()}
    unregistered = [n for n in CANONICAL_ORDER if n not in registered]
    assert not unregistered, f"CANONICAL_ORDER lists names no variant registers: {unregistered}"
    assert len(set(CANONICAL_ORDER)) == len(CANONICAL_ORDER)


def test_every_registered_variant_is_displayed_once_in_the_listed_order():
    names = variant_names()
    assert sorted(names) == sorted(core._REGISTRY) and len(names) == len(set(names))
    listed = [n for n in names if n in CANONICAL_ORDER]
    assert listed == sorted(listed, key=CANONICAL_ORDER.index)


@pytest.fixture
def temporary_variants():
    added = []

    def add(name: str, family: str) -> None:
        config = dataclass(type(f"Config_{name}", (VariantConfig,), {}))
        register(name, family=family, paper="test")(type(f"V_{name}", (Variant,), {"Config": config}))
        added.append(name)

    yield add
    for name in added:
        core._REGISTRY.pop(name, None)


def test_an_unlisted_variant_is_shown_with_its_family_and_a_new_family_last(temporary_variants):
    last_rank = max((n for n in CANONICAL_ORDER if core._REGISTRY[n].family == "rank"), key=CANONICAL_ORDER.index)
    temporary_variants("zz-new-family-method", "zz-family")
    temporary_variants("zz-rank-method", "rank")
    temporary_variants("zz-rank-method-2", "rank")
    names = variant_names()
    at = names.index(last_rank)
    assert names[at + 1:at + 3] == ["zz-rank-method", "zz-rank-method-2"]  # after its family, in registration order
    assert names[-1] == "zz-new-family-method"
