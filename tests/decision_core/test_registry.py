"""Registries import lazily, refuse clashes, and help with unknown names."""

from __future__ import annotations

from pathlib import Path

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


# -- entry points: one bad plugin is set aside, the others still register ----------------------------------------


def install_fake(site: Path, dist: str, group: str, entries: dict[str, str], module: str = "") -> None:
    """A distribution's metadata as pip leaves it (``<dist>.dist-info`` with ``entry_points.txt``) and, optionally,
    the module its entry points name."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    if module:
        name, _, source = module.partition("\n")
        (site / f"{name}.py").write_text(source)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


GROUP = "decision_core_tests.things"


def test_an_entry_point_that_clashes_is_set_aside_and_the_other_plugins_still_register(site: Path):
    install_fake(site, "clash-plugin", GROUP, {"inventory": "json:loads"})
    install_fake(site, "good-plugin", GROUP, {"weather": "json:dumps", "bad name!": "json:dumps"})
    reg: Registry[object] = Registry("adapter", group=GROUP)
    reg.register("inventory", "json:JSONDecoder")
    assert reg.names() == ["inventory", "weather"]
    assert reg.names() == ["inventory", "weather"]  # the same on every call
    import json

    assert reg.get("weather") is json.dumps
    rejected = reg.rejected()
    assert sorted(rejected) == ["bad name!", "inventory"]
    assert (
        "entry point 'inventory' of clash-plugin claims the name already registered by built-in"
        in rejected["inventory"]
    )
    assert "must be alphanumeric" in rejected["bad name!"] and "good-plugin" in rejected["bad name!"]
    # asking for the clashing name says which distribution to remove or rename, rather than picking one silently
    with pytest.raises(RegistryError, match=r"adapter 'inventory' cannot be used: .*pip uninstall clash-plugin"):
        reg.get("inventory")


def test_an_entry_point_must_be_named_as_its_object_declares(site: Path):
    source = "tickets_plugin\nclass TicketRouting:\n    name = 'ticket_routing'\n"
    install_fake(site, "ticket-routing-adapter", GROUP, {"tickets": "tickets_plugin:TicketRouting"}, module=source)
    reg: Registry[object] = Registry("adapter", group=GROUP)
    with pytest.raises(RegistryError) as info:
        reg.get("tickets")
    message = str(info.value)
    assert "adapter 'tickets' (from entry point 'tickets' of ticket-routing-adapter) declares the name" in message
    assert "rename the entry point to 'ticket_routing'" in message
    with pytest.raises(RegistryError, match="declares the name 'ticket_routing'"):
        reg.get("tickets")  # refused every time, never cached
    reg.register("ticket_routing", "tickets_plugin:TicketRouting")
    assert reg.get("ticket_routing").name == "ticket_routing"  # type: ignore[attr-defined]
