"""Several processes, one program: `jax.distributed` set up for jaxedit (DESIGN.md, sharding as data).

Each process calls `initialize(...)` before touching any device, then builds the same mesh over all
processes' devices (`jax.devices()` lists them all) and runs jaxedit's functions unchanged: params placed
with `jaxedit.core.sharding.shard` (every process passes the same full params and keeps its own shards), the
jitted programs run SPMD across the processes, and XLA inserts the collectives. On CPUs the collectives
go through Gloo (`jax_cpu_collectives_implementation`, as JAX documents for multi-process CPU runs); on
GPUs through NCCL and on TPUs through ICI without any setting here.
"""

from __future__ import annotations

import os

import numpy as np

from jaxedit.errors import InputError


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    cpu_devices: int | None = None,
) -> None:
    """Join a multi-process run; call before anything else uses JAX devices.

    Args:
      coordinator_address: `host:port` of process 0 (reachable by every process).
      num_processes: the run's size.
      process_id: this process's rank.
      cpu_devices: simulate this many CPU devices in this process (tests and laptops); None on
        accelerators.
    """
    if not 0 <= process_id < num_processes:
        raise InputError(f"process_id must lie in [0, {num_processes}), got {process_id}")
    if cpu_devices is not None:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cpu_devices}".strip()
    import jax

    if cpu_devices is not None or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def gather(x) -> np.ndarray:
    """The whole value of a (possibly cross-process sharded) array, on every process."""
    import jax
    from jax.experimental import multihost_utils

    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True)) if jax.process_count() > 1 else x
