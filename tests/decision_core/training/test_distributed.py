"""The training entry point under torchrun: 2 CPU processes (gloo), data sharded, one run logged by rank 0."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch

from decision_core.errors import SpecError
from decision_core.settings import CoreSettings
from decision_core.training import load_agent_from_uri
from decision_core.training.config import TrainConfig
from decision_core.training.distributed import DistContext, DistributedError, resolve_device, shard_episodes
from decision_core.training.models import configure_tracking


def test_shards_cover_every_episode_once() -> None:
    shards = [shard_episodes(11, DistContext(rank=r, world_size=3), seed=4) for r in range(3)]
    together = np.concatenate(shards)
    assert sorted(together.tolist()) == list(range(11))
    assert {len(s) for s in shards} <= {3, 4}


def test_device_auto_is_the_cpu_without_a_gpu_and_a_missing_gpu_is_named() -> None:
    if torch.cuda.is_available():
        assert resolve_device("auto", 0) == torch.device("cuda", 0)
        assert resolve_device("cpu") == torch.device("cpu")
        return
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DistributedError, match="no CUDA GPU"):
        resolve_device("cuda:0")


def test_a_bad_device_in_the_config_names_the_choices() -> None:
    with pytest.raises(SpecError, match="'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        TrainConfig(domain="chain", algo="bc", device="tpu")


@pytest.mark.slow
def test_torchrun_two_processes_trains_one_loadable_model(settings: CoreSettings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        DECISION_CORE_HOME=str(settings.home),
        DECISION_CORE_THREADS="1",
        OMP_NUM_THREADS="1",
        DECISION_CORE_DIST_BACKEND="gloo",
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
        "-m", "decision_core", "train", "--domain", "chain", "--algo", "bc", "--steps", "30",
        "--db", str(settings.db_path), "--no-progress",
        "--set", "log_every=10", "--set", "agent.hidden_dims=[16, 16]", "--set", "agent.batch_size=32",
        "--set", "fqe_steps=100", "--set", "model_steps=100", "--set", "ope_episodes=100",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("registered as chain v1") == 1  # only rank 0 reports and registers

    configure_tracking(settings)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("decision-core/chain")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["dist.world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "actor/loss")] == [10, 20, 30]
    agent, ref = load_agent_from_uri("models:/chain@champion", settings)
    assert ref.run_id == run.info.run_id and agent.n_updates == 30
    acts = agent.act(np.array([[0.0, 0.0], [2.0, 0.5]], np.float32), rng=np.random.default_rng(0)).actions
    assert acts.shape == (2,) and set(acts.tolist()) <= {0, 1}


@pytest.mark.slow
def test_torchrun_fits_the_reward_scale_on_all_the_data_not_one_shard(settings: CoreSettings) -> None:
    from decision_core.reward import rewards_for
    from decision_core.store import DecisionStore

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(DECISION_CORE_HOME=str(settings.home), DECISION_CORE_THREADS="1", OMP_NUM_THREADS="1")
    env.update(DECISION_CORE_DIST_BACKEND="gloo")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
        "-m", "decision_core", "train", "--domain", "chain", "--algo", "iql", "--steps", "10",
        "--db", str(settings.db_path), "--no-progress", "--set", "agent.hidden_dims=[16, 16]",
        "--set", "fqe_steps=10", "--set", "model_steps=10", "--set", "ope_episodes=20",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with DecisionStore(settings.db_path, read_only=True) as store:
        rewards = rewards_for(store.load_arrays("chain"))
    expected = 1.0 / float(torch.from_numpy(rewards).double().std())
    agent, _ = load_agent_from_uri("models:/chain@champion", settings)
    assert float(agent.nets["reward_scale"].scale) == pytest.approx(expected, rel=1e-6)


_EQUIVALENCE = r"""
# Under DDP two ranks training on their own shards must hold identical weights after every step; where an update
# is deterministic given its batch, they must equal one process training on both ranks' batches joined.
import copy, dataclasses
import numpy as np, torch
import torch.distributed as dist
from decision_core.algos import create_agent
from decision_core.data import OfflineDataset
from decision_core.data.synthetic import grid_arrays
from decision_core.training.distributed import data_parallel, from_env, release, shutdown

torch.set_num_threads(1)
ctx = from_env()
config = {"batch_size": 16, "hidden_dims": [16, 16], "lr": 1e-2}
for name, discrete, deterministic in [
    ("bc", True, True), ("iql", True, True), ("iql", False, True), ("gcbc", False, True), ("cql", False, False),
]:
    arrays = grid_arrays(16, 8, discrete=discrete, seed=1)
    stats = OfflineDataset(arrays).stats
    shards = [OfflineDataset(arrays.select_episodes(np.arange(r, arrays.n_episodes, 2))) for r in range(2)]
    for s in shards:
        s.stats = stats
    agent = create_agent(name, arrays.spec, stats, config, seed=ctx.rank)  # different inits: rank 0's wins
    samplers = [agent.sampler(s, seed=10 + r) for r, s in enumerate(shards)]
    data_parallel(agent)
    start = copy.deepcopy(agent.nets.state_dict())
    batches = [[sm.sample(16) for _ in range(4)] for sm in samplers]
    for b in batches[ctx.rank]:
        agent.update(b)
    release(agent)
    weights = torch.cat([p.detach().flatten() for p in agent.nets.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(2)]
    dist.all_gather(gathered, weights)
    if ctx.rank == 0:
        assert torch.equal(gathered[0], gathered[1]), f"{name}: ranks diverged"
        assert any(not torch.equal(p, start[k]) for k, p in agent.nets.named_parameters()), f"{name}: no update"
        if deterministic:
            ref = create_agent(name, arrays.spec, stats, config, seed=0)
            ref.nets.load_state_dict(start)
            for a, b in zip(*batches):
                pairs = {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)}
                joined = {k: None if x is None else torch.cat([x, y]) for k, (x, y) in pairs.items()}
                ref.update(type(a)(**joined))
            expected = torch.cat([p.detach().flatten() for p in ref.nets.parameters()])
            gap = float((weights - expected).abs().max())
            assert torch.allclose(weights, expected, atol=1e-5), f"{name}: {gap}"
        print("EQUIVALENT", name, "discrete" if discrete else "continuous", flush=True)
shutdown(ctx)  # waits for rank 1, which finishes first, before leaving the group
"""


def test_averaged_gradients_equal_one_process_on_the_joined_batch(tmp_path) -> None:
    script = tmp_path / "equivalence.py"
    script.write_text(_EQUIVALENCE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DECISION_CORE_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(script)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("EQUIVALENT") == 5, proc.stdout
