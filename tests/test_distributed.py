"""Data parallelism: the same global batch gives the same loss, gradients and BatchNorm statistics
on 1 and on 4 devices, and two processes joined by jax.distributed train like one process.

Run as a script, this file is one worker process of the two-process test.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_STEPS = 6


def _sgd_config(toy_config):
  # Plain SGD with lr 1: new params = params - gradient, so comparing states compares gradients.
  return toy_config(optimizer="plain_sgd", learning_rate=1e-2, num_steps=1)


def _one_step(mesh, task, cfg, batch):
  import jax  # pylint: disable=g-import-not-at-top
  from mpn_jax import parallel  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import loop  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import steps  # pylint: disable=g-import-not-at-top
  tx, schedule = state_lib.make_optimizer(cfg.train)
  state = loop.create_state(task, tx, 0, mesh)
  before = jax.device_get(state.params)
  step = steps.make_train_step(task.loss_fn, mesh, schedule)
  state, metrics = step(state, parallel.shard_batch(batch, mesh))
  grads = jax.tree.map(lambda b, a: (b - a) / cfg.train.learning_rate, before,
                       jax.device_get(state.params))
  return float(metrics["loss"]), grads, jax.device_get(state.batch_stats)


def _assert_same(a, b, rtol=1e-5, atol=1e-6):
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_one_and_four_devices_agree_toy_batchnorm():
  import jax  # pylint: disable=g-import-not-at-top
  import test_training as tt  # pylint: disable=g-import-not-at-top
  from mpn_jax import parallel  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 4
  cfg = _sgd_config(tt.toy_config)
  # A batch whose halves differ a lot: per-device BatchNorm statistics would differ from global.
  batch = tt.toy_batch(0, 8)
  batch["x"][4:] = batch["x"][4:] * 5 + 3
  one = _one_step(parallel.create_mesh(jax.devices()[:1]), tt.toy_task(), cfg, batch)
  four = _one_step(parallel.create_mesh(), tt.toy_task(), cfg, batch)
  assert one[0] == pytest.approx(four[0], rel=1e-6)
  _assert_same(one[1], four[1])
  _assert_same(one[2], four[2])


def test_one_and_four_devices_agree_prn(coco_dir):
  del coco_dir
  import jax  # pylint: disable=g-import-not-at-top
  import test_training as tt  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(HERE))
  from configs import prn  # pylint: disable=g-import-not-at-top
  from mpn_jax import parallel  # pylint: disable=g-import-not-at-top
  from mpn_jax.data import prn_samples  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = prn.get_config("smoke")
  config.data.data_dir = os.path.join(os.path.dirname(HERE), config.data.data_dir)
  batch = next(prn_samples.make_prn_iterator(config))
  task = loop.prn_task(config, parallel.create_mesh())
  cfg = _sgd_config(tt.toy_config)  # dropout keys come from fold_in(rng, step): same on any mesh
  one = _one_step(parallel.create_mesh(jax.devices()[:1]), task, cfg, batch)
  four = _one_step(parallel.create_mesh(), task, cfg, batch)
  assert one[0] == pytest.approx(four[0], rel=1e-5)
  _assert_same(one[1], four[1], rtol=1e-4, atol=1e-6)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
  import conftest  # pylint: disable=g-import-not-at-top  (not in the worker processes: this file)
  import test_training as tt  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import loop  # pylint: disable=g-import-not-at-top
  reference = loop.run(tt.toy_config(num_steps=NUM_STEPS, checkpoint_every_steps=3),
                       tmp_path / "single", tt.toy_task())  # 4 devices, one process
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env["XLA_FLAGS"] = conftest.TEST_XLA_FLAGS  # not the 4 simulated devices of this process
  procs = [subprocess.Popen(
      [sys.executable, __file__, f"127.0.0.1:{port}", str(pid), str(tmp_path / "multi"),
       str(tmp_path / f"out{pid}.npz")], env=env, cwd=HERE, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for pid in range(2)]
  logs = []
  for p in procs:
    out, _ = p.communicate(timeout=300)
    logs.append(out)
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  for pid in range(2):
    got = np.load(tmp_path / f"out{pid}.npz")
    want = [reference.losses[s] for s in range(1, NUM_STEPS + 1)]
    np.testing.assert_allclose(got["losses"], want, rtol=1e-5)
    want_kernel = np.asarray(reference.state.params["backbone"]["kernel"])
    np.testing.assert_allclose(got["kernel"], want_kernel, rtol=1e-5, atol=1e-6)
  # One checkpoint directory, written jointly, readable afterwards.
  from mpn_jax import checkpoints  # pylint: disable=g-import-not-at-top
  params, _, _ = checkpoints.restore_variables(tmp_path / "multi")
  np.testing.assert_allclose(params["backbone"]["kernel"],
                             np.asarray(reference.state.params["backbone"]["kernel"]), rtol=1e-5,
                             atol=1e-6)


def _worker(address, pid, workdir, out):
  """One of two processes with 2 CPU devices each: trains the toy task on its half of the batch."""
  import itertools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", 2)
  sys.path.insert(0, HERE)
  import test_training as tt  # pylint: disable=g-import-not-at-top
  from mpn_jax import parallel  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import loop  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed(address, 2, pid)
  assert jax.process_count() == 2 and jax.device_count() == 4
  task = tt.toy_task()
  half = 4

  def local_slices(start):
    for s in itertools.count(start):
      batch = tt.toy_batch(s, 8)
      yield {k: v[pid * half:(pid + 1) * half] for k, v in batch.items()}

  task.train_iterator = local_slices
  result = loop.run(tt.toy_config(num_steps=NUM_STEPS, checkpoint_every_steps=3), workdir, task)
  kernel = np.asarray(result.state.params["backbone"]["kernel"].addressable_data(0))
  np.savez(out, losses=[result.losses[s] for s in range(1, NUM_STEPS + 1)], kernel=kernel)
  jax.distributed.shutdown()


if __name__ == "__main__":
  _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
