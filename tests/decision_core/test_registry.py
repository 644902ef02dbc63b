"""Registries import lazily, refuse clashes, and help with unknown names."""

from __future__ import annotations

import pytest

from decision_core.errors import RegistryError
from decision_core.registry import Registry


def test_unknown_name_lists_known_ones_and_suggests_the_closest():
    reg: Registry[object] = Registry("adapter")
    reg.register("recommender", "json:dumps")
    reg.register("inventory", "json:loads")
    with pytest.raises(RegistryError, match=r"unknown adapter 'recomender'.*inventory, recommender.*'recommender'"):
        reg.get("recomender")


def test_name_clash_is_an_error_not_an_override():
    reg: Registry[object] = Registry("algorithm")
    reg.register("iql", "json:dumps")
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("iql", "json:loads", origin="plugin x")


def test_targets_are_imported_on_first_use_and_validated():
    seen = []

    def validate(name, obj):
        seen.append(name)
        if not callable(obj):
            raise RegistryError(f"{name} is not callable")
        return obj

    reg: Registry[object] = Registry("thing", validate=validate)
    reg.register("dumps", "json:dumps")
    reg.register("broken", "json:no_such_attribute")
    reg.register("version", "decision_core:__version__")
    assert seen == []  # nothing imported or validated at registration
    import json

    assert reg.get("dumps") is json.dumps
    with pytest.raises(RegistryError, match="has no attribute 'no_such_attribute'"):
        reg.get("broken")
    with pytest.raises(RegistryError, match="not callable"):
        reg.get("version")
