"""experiments/aot_memory.py (per-device bytes, HLO collectives) and ssljax.distributed's
argument handling."""

import doctest
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import tiny_config
from ssljax import distributed, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import aot_memory  # noqa: E402


def test_aot_memory_doctests():
    assert doctest.testmod(aot_memory).failed == 0


def test_collectives_of_a_compiled_sharded_sum():
    mesh = sharding.make_mesh(8)
    x = jax.device_put(np.ones((64, 32), np.float32), NamedSharding(mesh, P("data")))
    hlo = jax.jit(lambda x: x.sum(0), out_shardings=NamedSharding(mesh, P())).lower(x) \
        .compile().as_text()
    ops = aot_memory.collectives(hlo, 8)
    # Each device sums its 8 rows, then one all-reduce of a 32-float vector over 8 devices.
    assert [(c.op, c.result_bytes, c.group) for c in ops] == [("all-reduce", 128, 8)]
    assert ops[0].sent_bytes == 2 * 7 / 8 * 128


@pytest.mark.parametrize("fsdp", [1, pytest.param(4, marks=pytest.mark.slow)])  # 4: about 23 s
def test_aot_memory_counts_the_state_per_device(fsdp):
    cfg = tiny_config("simclr", **{"sharding.fsdp_min_size": 0, "optimizer.name": "lars"})
    compiled, abstract, shardings, batch = aot_memory.compile_step(cfg, 8, fsdp)
    mem = aot_memory.step_memory(compiled, abstract, shardings, batch)
    total_params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.params))
    # Replicated: every device holds all parameters; FSDP 4: a quarter (tiny net: every
    # parameter has a dimension divisible by 4).
    assert mem.params == total_params // fsdp
    assert 0 <= mem.opt_state - mem.params <= 16  # LARS: a momentum per parameter, a count
    assert mem.batch == 16 // 8 * 2 * 16 * 16 * 1 * 4 + 16 // 8 * 4  # views + labels
    # The compiler's argument bytes are the state, the batch and the key, no more.
    assert mem.arguments >= mem.params + mem.opt_state + mem.other_state + mem.batch
    assert mem.arguments < 1.1 * (mem.params + mem.opt_state + mem.other_state + mem.batch) + 1024
    assert mem.temporaries > 0 and mem.peak > mem.arguments


def test_distributed_off_and_bad_arguments(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize("off", coordinator_address="h:1") is False
    with pytest.raises(ValueError, match="is not one of"):
        distributed.initialize("maybe")
    with pytest.raises(ValueError, match="needs all three.*--process_id"):
        distributed.initialize("auto", coordinator_address="localhost:1234", num_processes=2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize("auto")


def test_distributed_auto_without_a_cluster_is_one_process():
    # A fresh process: jax.distributed.initialize must run before any backend starts.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_PROC",
                                "JAX_PROCESS_ID", "TPU_", "MEGASCALE"))}
    code = ("import jax; from ssljax import distributed; "
            "print(distributed.initialize('auto'), jax.process_count())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(env, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "1"]
