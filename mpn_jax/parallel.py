"""Data parallelism over every device of every host: one ("data",) mesh, NamedSharding.

One code path for 1 device, several local devices and several hosts: the global batch is split over
processes by the input pipeline (each host loads batch_size // process_count examples) and assembled
into one global jax.Array sharded along the batch axis.
"""

import os

from absl import logging
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mpn_jax import errors

DATA_AXIS = "data"


def maybe_initialize_distributed(coordinator_address="", num_processes=0, process_id=-1):
  """Calls jax.distributed.initialize when the config or the environment asks for it.

  Explicit arguments win; otherwise MPN_COORDINATOR_ADDRESS / MPN_NUM_PROCESSES / MPN_PROCESS_ID are
  read; on managed clusters (TPU pods, SLURM) JAX_COORDINATOR_ADDRESS makes JAX auto-detect.
  Returns True when running multi-process.
  """
  addr = coordinator_address or os.environ.get("MPN_COORDINATOR_ADDRESS", "")
  n = int(num_processes or os.environ.get("MPN_NUM_PROCESSES", "0") or 0)
  pid = int(process_id if process_id >= 0 else os.environ.get("MPN_PROCESS_ID", "-1"))
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  if addr:
    if n <= 0 or pid < 0:
      raise errors.ConfigError("multi-host: set num_processes and process_id (config.distributed.* or "
                       "MPN_NUM_PROCESSES / MPN_PROCESS_ID) together with the coordinator address")
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
    logging.info("jax.distributed initialised: process %d of %d", jax.process_index(),
                 jax.process_count())
  elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
  return jax.process_count() > 1


def create_mesh(devices=None):
  """A 1-D ("data",) mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh):
  """Sharding that splits the leading (batch) axis over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh):
  """Sharding that replicates an array on every device of the mesh."""
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size, mesh=None, field="input.batch_size"):
  """Examples this process loads per step; checks the global batch divides over devices/processes
  (`field`: the config field named in the error)."""
  ndev = mesh.size if mesh is not None else jax.device_count()
  if global_batch_size % ndev:
    raise errors.ConfigError(f"{field.rpartition('.')[2]}={global_batch_size} must be divisible by "
                             f"the number of devices ({ndev}): set --config.{field} to a multiple "
                             f"of {ndev}")
  return global_batch_size // jax.process_count()


def shard_batch(batch, mesh):
  """Host-local numpy batch (pytree, leading axis = local batch) -> global jax.Arrays on the mesh."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh):
  """Host pytree (the same on every process) -> arrays replicated over the whole mesh.

  Unlike jax.device_put, this also works when the mesh spans devices of other processes.
  """
  sharding = replicated_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)
