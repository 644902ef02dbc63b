"""The training config: file + flags + --set overrides, validated with messages that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from decision_core.errors import SpecError
from decision_core.training.config import TrainConfig, build_config, parse_override


def test_file_flags_and_overrides_combine_in_order(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text('domain = "chain"\nalgo = "iql"\nsteps = 500\n[agent]\nlr = 0.001\nhidden_dims = [64, 64]\n')
    cfg = build_config(file=f, sets=["agent.lr=3e-4", "eval_every=100", "task=next.x"], steps=700)
    assert cfg.steps == 700  # the flag wins over the file
    assert cfg.agent == {"lr": 3e-4, "hidden_dims": [64, 64]}
    assert cfg.eval_every == 100
    assert cfg.task == "next.x"  # not a TOML literal: kept as text
    params = cfg.flat_params()
    assert params["agent.lr"] == "0.0003" and params["steps"] == "700"


def test_json_config_and_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "run.json"
    f.write_text('{"domain": "chain", "algo": "gcbc", "ope_estimators": ["snips", "fqe"], "ope_periodic": "fqe"}')
    cfg = build_config(file=f)
    assert cfg.ope_estimators == ("snips", "fqe") and cfg.ope_periodic == ("fqe",)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"domain": "chain", "algo": "iql", "stesp": 5}, r"unknown keys \['stesp'\].*steps"),
        ({"algo": "iql"}, r"missing \['domain'\]"),
        ({"domain": "chain", "algo": "iql", "steps": 0}, r"'steps' must be an integer >= 1"),
        ({"domain": "chain", "algo": "iql", "steps": "many"}, r"'steps' must be an integer"),
        ({"domain": "chain", "algo": "iql", "ope_estimators": ["magic"]}, r"unknown \['magic'\].*snips"),
        ({"domain": "chain", "algo": "iql", "ope_periodic": ["fqe", "magic"]}, r"'ope_periodic' names unknown"),
        ({"domain": "chain", "algo": "iql", "ope_gamma": 0}, r"'ope_gamma' must be in \(0, 1\]"),
        ({"domain": "chain", "algo": "iql", "ope_refits": -1}, r"'ope_refits' must be an integer >= 0"),
        ({"domain": "chain", "algo": "iql", "ope_refits": 1.5}, r"'ope_refits' must be an integer"),
        ({"domain": "chain", "algo": "iql", "precision": "fp16"}, r"'precision' must be 'fp32' or 'bf16'"),
        ({"domain": "chain", "algo": "iql", "model_rollouts": "all"}, r"'model_rollouts' must be one of every, one"),
        ({"domain": "chain", "algo": "iql", "model_rollouts": 1}, r"'model_rollouts' must be"),
    ],
)
def test_config_errors_name_the_key_and_rule(data: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        TrainConfig.from_dict(data)


def test_bad_files_and_overrides_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("domain = \n")
    with pytest.raises(SpecError, match=r"bad.toml is not valid TOML"):
        build_config(file=bad)
    with pytest.raises(SpecError, match="cannot read config file"):
        build_config(file=tmp_path / "missing.toml")
    with pytest.raises(SpecError, match="key=value"):
        parse_override("steps")
    assert parse_override("agent.hidden_dims=[8, 8]") == (["agent", "hidden_dims"], [8, 8])
