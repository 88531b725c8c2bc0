"""The training loop of both stages: init or resume, jitted steps, logging, evaluation, checkpoints.

`train_and_evaluate(config, workdir)` builds the stage's `Task` (model, loss, data, evaluation) and
runs the generic `run(config, workdir, task)`, which knows nothing about either stage:

  * one ("data",) mesh over every device of every process; state replicated, batches sharded;
  * resume from the newest readable step of workdir/checkpoints (an unreadable one is moved aside
    with a warning), else start from config.init_from;
  * checkpoints are saved synchronously: a failed save stops training with errors.CheckpointError
    naming the folder and the cause, the earlier steps intact;
  * SIGTERM: the loop finishes the current step, saves a checkpoint and returns;
  * a non-finite loss or gradient stops training with an error naming the step and the last
    good checkpoint; a non-finite state is never saved.
"""

import contextlib
import dataclasses
import inspect
import itertools
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

from absl import logging
from clu import metric_writers
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mpn_jax import checkpoints
from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import logs
from mpn_jax import models
from mpn_jax import parallel
from mpn_jax import prn_grid
from mpn_jax.data import datasets
from mpn_jax.data import pipeline
from mpn_jax.data import prn_samples
from mpn_jax.evaluation import evaluators
from mpn_jax.training import state as state_lib
from mpn_jax.training import steps
from mpn_jax.training import workdir as workdir_lib


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training produced a NaN/Inf loss or gradient (the message says which step and what to do)."""


@dataclasses.dataclass
class Task:
  """What `run` needs from a stage.

  init_variables: rng -> {'params': ..., 'batch_stats': ...} (traced under jit).
  loss_fn: see mpn_jax.training.steps.
  train_iterator: start_step -> iterator of host-local numpy batches (batch `start_step` first).
  evaluate: optional (state, eval_step) -> dict of float metrics.
  frozen: optional path -> bool of variables that must not change.
  batch_size: the global training batch size (checked against the device count).
  """
  init_variables: Callable[[Any], dict]
  loss_fn: Callable
  train_iterator: Callable[[int], Any]
  evaluate: Optional[Callable] = None
  frozen: Optional[Callable[[tuple], bool]] = None
  batch_size: int = 0


@dataclasses.dataclass
class Result:
  state: Any
  losses: dict          # step -> training loss of the update that produced that step
  eval_metrics: dict    # step -> evaluation metrics
  stopped_early: bool   # True after SIGTERM


class _StopFlag:
  """Set by SIGTERM or a first Ctrl-C (SIGINT); the loop checkpoints and returns at the next step
  boundary. A second Ctrl-C interrupts at once (KeyboardInterrupt), as Ctrl-C usually does."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.event = threading.Event()
    self.previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.event.is_set():
      raise KeyboardInterrupt
    logging.warning("signal %d received: checkpointing and stopping after this step%s", signum,
                    " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT
                    else "")
    self.event.set()

  def __exit__(self, *exc):
    for s, handler in self.previous.items():
      if handler is not None:  # None: installed from C, not restorable from Python
        signal.signal(s, handler)

  def requested(self, sync):
    """Whether any process was asked to stop (a collective across processes when `sync`)."""
    local = self.event.is_set()
    if jax.process_count() == 1:
      return local
    # Every process must take the same branch (saving is collective): agree at sync points only.
    return sync and bool(np.any(multihost_utils.process_allgather(np.int32(local))))


def _host(x):
  """A replicated global array -> numpy (works when it spans devices of other processes)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def create_state(task, tx, seed, mesh):
  """Initialises the variables (from key(seed)) and optimiser state replicated on the mesh."""
  repl = parallel.replicated_sharding(mesh)

  def init():
    variables = task.init_variables(jax.random.key(seed))
    return state_lib.TrainState.create(variables["params"], variables.get("batch_stats", {}), tx,
                                       frozen_stats=task.frozen)

  return jax.jit(init, out_shardings=repl)()


def _check_finite(pending, losses, last_good, ckpt_dir):
  """Fetches the pending per-step metrics; raises NonFiniteLossError at the first bad step."""
  if not pending:
    return {}
  fetched = [(s, jax.tree.map(_host, m)) for s, m in pending]
  for s, m in fetched:
    if not bool(m["finite"]):
      where = (f"the last good checkpoint is step {last_good} in {ckpt_dir} (left intact)"
               if last_good is not None else "no checkpoint was written yet")
      raise NonFiniteLossError(
          f"non-finite loss or gradient at step {s} (loss={float(m['loss'])}, "
          f"grad_norm={float(m['grad_norm'])}): training stopped; {where}. Lower "
          "--config.train.learning_rate, set --config.train.grad_clip_norm, or check the data.")
    losses[s] = float(m["loss"])
  keys = [k for k in fetched[-1][1] if k != "finite"]
  summary = {k: float(np.mean([m[k] for _, m in fetched])) for k in keys}
  if "learning_rate" in summary:
    summary["learning_rate"] = float(fetched[-1][1]["learning_rate"])
  return summary


def run(config, workdir, task, mesh=None):
  """Trains `task` for config.train.num_steps; returns a Result. See the module docstring."""
  tcfg = config.train
  mesh = mesh if mesh is not None else parallel.create_mesh()
  if task.batch_size:
    parallel.local_batch_size(task.batch_size, mesh)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  tx, schedule = state_lib.make_optimizer(tcfg, task.frozen)
  state = create_state(task, tx, config.seed, mesh)

  ckpt = checkpoints.StageCheckpoints(workdir, keep=tcfg.keep_checkpoints,
                                      best_metric=tcfg.get("best_metric", ""),
                                      best_mode=tcfg.get("best_mode", "min"))
  state, latest = ckpt.restore_latest_readable(state)
  if latest is not None:
    logging.info("resumed from %s/%d", ckpt.directory, latest)
  elif config.get("init_from"):
    backbone_cfg = (config.get("model", {}).get("backbone")
                    if config.get("stage") == "branches" else None)
    state = state_lib.init_from(state, config.init_from, mesh, backbone_cfg)
    logging.info("initialised from %s", config.init_from)
  start = int(_host(state.step))

  train_step = steps.make_train_step(task.loss_fn, mesh, schedule, seed=config.seed)
  # TensorBoard only: the console gets the one progress line below per interval (clu's default
  # writer would log every scalar again, and the whole config once).
  writer = (metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
            if jax.process_index() == 0 else metric_writers.MultiWriter([]))
  if start == 0:
    writer.write_hparams({k: v for k, v in _flat_config(config).items()})

  num_steps, log_every = tcfg.num_steps, max(1, tcfg.log_every_steps)
  eval_every, ckpt_every = tcfg.eval_every_steps, tcfg.checkpoint_every_steps
  losses, evals, pending = {}, {}, []
  last_good = latest
  stopped = False
  data = task.train_iterator(start)
  t0, s0 = time.time(), start
  try:
    with _StopFlag() as stop:
      for step in range(start, num_steps):
        batch = parallel.shard_batch(next(data), mesh)
        state, metrics = train_step(state, batch)
        pending.append((step + 1, metrics))
        done = step + 1
        last = done == num_steps
        do_log = done % log_every == 0 or last
        do_eval = task.evaluate is not None and (
            (eval_every and done % eval_every == 0) or last)
        do_ckpt = (ckpt_every and done % ckpt_every == 0) or last or do_eval
        stopping = stop.requested(sync=do_log)
        if not (do_log or do_eval or do_ckpt or stopping):
          continue
        summary = _check_finite(pending, losses, last_good, ckpt.directory)
        pending = []
        if do_log or stopping:
          rate = (done - s0) / max(time.time() - t0, 1e-9)
          eta = (num_steps - done) / max(rate, 1e-9)
          summary["steps_per_sec"] = rate
          writer.write_scalars(done, {f"train/{k}": v for k, v in summary.items()})
          terms = {k: v for k, v in summary.items() if k not in ("loss", "steps_per_sec")}
          logging.info("step %d/%d: loss %.5f (%s), %.2f steps/s, ETA %s", done, num_steps,
                       summary["loss"], _pairs(terms), rate, _duration(eta))
          t0, s0 = time.time(), done
        eval_metrics = None
        if do_eval:
          try:
            eval_metrics = task.evaluate(state, done)
          except BaseException:
            # The steps since the last checkpoint are kept (unranked) before the error ends the
            # run; a failed save must not hide the evaluation's error.
            with contextlib.suppress(Exception):
              ckpt.save(state, config)
              logging.warning("evaluation at step %d failed; step %d saved in %s", done, done,
                              ckpt.directory)
            raise
          evals[done] = eval_metrics
          writer.write_scalars(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
          logging.info("eval at step %d: %s", done, _pairs(eval_metrics))
        if do_ckpt or stopping:
          ckpt.save(state, config, eval_metrics)
          last_good = done
        if stopping:
          logging.warning("stopped at step %d on request; checkpoint saved in %s", done,
                          ckpt.directory)
          stopped = True
          break
  finally:
    ckpt.close()
    writer.flush()
  return Result(state=state, losses=losses, eval_metrics=evals, stopped_early=stopped)


def _pairs(metrics):
  """'name value, ...' of a dict of scalars, sorted by name, 4 significant digits."""
  return ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()))


def _duration(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _flat_config(config, prefix=""):
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flat_config(v, f"{prefix}{k}."))
    elif isinstance(v, (int, float, str, bool)):
      out[f"{prefix}{k}"] = v
    else:
      out[f"{prefix}{k}"] = str(v)
  return out


# --------------------------------------------------------------------------------------------------
# Evaluation helpers.


def host_variables(state):
  """{'params', 'batch_stats'} of a (replicated) state as numpy, for single-device inference."""
  variables = {"params": jax.tree.map(_host, state.params)}
  if state.batch_stats:
    variables["batch_stats"] = jax.tree.map(_host, state.batch_stats)
  return variables


# --------------------------------------------------------------------------------------------------
# The two stages.


def check_dataset(dataset_cfg):
  """Raises FileNotFoundError naming the path and the build command when the data is missing."""
  builder = datasets.make_builder(dataset_cfg)
  prepared = os.path.exists(os.path.join(os.fspath(builder.data_path), "dataset_info.json"))
  if prepared or dataset_cfg.name != "coco_keypoints":
    return  # mpn_synthetic builds itself in seconds
  coco_dir = os.path.expanduser(dataset_cfg.get("coco_dir") or "")
  needed = [os.path.join(coco_dir, "annotations")]
  missing = [p for p in needed if not os.path.isdir(p)]
  if missing:
    raise errors.MissingFileError(
        f"dataset coco_keypoints: no prepared records in {builder.data_path} and no COCO "
        f"annotations at {missing[0]}: set --config.dataset.coco_dir to the COCO 2017 root "
        "(annotations/, train2017/, val2017/), the records are then built into "
        f"--config.dataset.data_dir={dataset_cfg.data_dir} on the first run; or use "
        "--config=configs/branches.py:synthetic")


def branches_task(config, mesh):
  """MultiPoseNet (backbone + keypoint subnet + RetinaNet) on the TFDS pipeline."""
  check_dataset(config.dataset)
  size = config.input.size
  model = models.build_multiposenet(config.model)
  # Anchors follow each batch's size: training crops (input.crop_size) and S x S validation batches.
  loss_fn = steps.branches_loss_fn(model, None, config.loss, config.train.trainable)

  def init_variables(rng):
    return model.init(rng, np.zeros((1, size, size, 3), np.float32), train=False)

  def train_iterator(start_step):
    # The stream is a function of the step: a resumed run sees the batches it would have seen.
    return pipeline.make_train_iterator(config, mesh, start_step=start_step)

  val_loss = evaluators.LossEvaluator(
      steps.make_eval_step(loss_fn, mesh),
      evaluators.branches_loss_batches(config, mesh, config.train.eval_batches), mesh)

  def evaluate(state, step):
    del step
    return val_loss.run(state)

  return Task(init_variables=init_variables, loss_fn=loss_fn, train_iterator=train_iterator,
              evaluate=evaluate if config.train.eval_batches else None,
              frozen=state_lib.frozen_fn(config.train.trainable),
              batch_size=config.input.batch_size)


def prn_task(config, mesh):
  """The Pose Residual Network on samples rendered from keypoint annotations."""
  config = evaluators.resolve_prn_files(config)
  for f in list(config.data.train_files) + [config.data.val_file]:
    prn_samples.resolve(config.data.data_dir, f)  # fail now, naming the file, if it is missing
  model = models.build_prn(config.model)
  loss_fn = steps.prn_loss_fn(model)
  shape = (1, prn_grid.GRID_H, prn_grid.GRID_W, coco.NUM_KEYPOINTS)

  def init_variables(rng):
    return model.init(rng, np.zeros(shape, np.float32), train=False)

  def train_iterator(start_step):
    make = prn_samples.make_prn_iterator
    if "start_step" in inspect.signature(make).parameters:
      return make(config, mesh, start_step=start_step)
    return itertools.islice(make(config, mesh), start_step, None)

  def weighted_loss_fn(params, batch_stats, batch, rng, train):
    loss, (stats, metrics) = loss_fn(params, batch_stats, batch, rng, train)
    return loss, (stats, dict(metrics, weight=batch["target_valid"].sum()))

  val_set = {}

  def val_batches():
    if not val_set:
      val_set.update(prn_samples.make_prn_eval_set(config.data))
    return _prn_eval_batches(val_set, config, mesh)

  val_loss = evaluators.LossEvaluator(steps.make_eval_step(weighted_loss_fn, mesh), val_batches,
                                      mesh)
  prn_gt = None
  if config.train.get("prn_gt_ap"):
    prn_gt = evaluators.PrnGtEvaluator(
        prn_samples.resolve(config.data.data_dir, config.data.val_file), model, assign="prn",
        method=config.inference.assign_method, window=config.inference.assign_window,
        score_mode=config.get("eval", {}).get("score_mode") or "keypoints",
        widen=config.data.widen, input_sigma=config.data.input_sigma)

  def evaluate(state, step):
    del step
    metrics = val_loss.run(state)
    if prn_gt is not None:
      metrics.update({f"prn_gt_{k}": float(v)
                      for k, v in prn_gt.run(host_variables(state)).items()})
    return metrics

  return Task(init_variables=init_variables, loss_fn=loss_fn, train_iterator=train_iterator,
              evaluate=evaluate, batch_size=config.data.batch_size)


def _prn_eval_batches(val_set, config, mesh):
  """This process's slices of fixed-size global batches over the validation samples (zero padded;
  padding has target_valid 0 and so no weight)."""
  gb = config.train.get("eval_batch_size", 0) or config.data.batch_size
  gb = max(mesh.size, gb // mesh.size * mesh.size)
  local = gb // jax.process_count()
  lo = jax.process_index() * local
  n = len(val_set["inputs"])
  num = -(-n // gb)
  if config.train.get("eval_batches"):
    num = min(num, config.train.eval_batches)
  for b in range(num):
    out = {}
    for key, arr in val_set.items():
      chunk = arr[b * gb + lo: b * gb + lo + local]
      pad = local - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + arr.shape[1:], arr.dtype)])
      out[key] = chunk
    yield out


TASKS = {"branches": branches_task, "prn": prn_task}


def check_train_config(config):
  """Raises errors.ConfigError naming the field when config.train holds an unusable value (before
  any data is built or any checkpoint is touched)."""
  tcfg = config.train

  def need(ok, field, what):
    if not ok:
      raise errors.ConfigError(f"config.train.{field}={tcfg.get(field)!r}: {what} (set "
                               f"--config.train.{field})")

  def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

  need(is_int(tcfg.num_steps) and tcfg.num_steps >= 1, "num_steps", "must be a positive number "
       "of steps")
  for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps"):
    if field in tcfg:
      need(is_int(tcfg[field]) and tcfg[field] >= 0, field, "must be >= 0 (0: only at the end)")
  if "keep_checkpoints" in tcfg:
    need(is_int(tcfg.keep_checkpoints) and tcfg.keep_checkpoints >= 1, "keep_checkpoints",
         "must be >= 1")
  lr = tcfg.learning_rate
  need(isinstance(lr, (int, float)) and np.isfinite(lr) and lr >= 0, "learning_rate",
       "must be a finite number >= 0")
  need(tcfg.get("best_mode", "min") in ("min", "max"), "best_mode", "use 'min' or 'max'")
  state_lib.make_optimizer(tcfg)  # optimizer and schedule names
  if config.get("stage") == "branches":
    state_lib.frozen_fn(tcfg.get("trainable", "all"))


def check_start(config, workdir):
  """Refuses (errors.ConfigError) a stage-one run that would start without the weights it needs:
  from scratch with frozen BatchNorm (normalisation by the initial running statistics, mean 0 and
  variance 1, for ever: C5 activations of std ~13 at initialisation), or the detection phase
  (train.trainable='detection') without the keypoint phase's weights. Resuming is always allowed."""
  if config.get("stage") != "branches" or config.get("init_from"):
    return
  if checkpoints.saved_steps(checkpoints.checkpoint_dir(workdir)):
    return
  if config.train.get("trainable", "all") == "detection":
    raise errors.ConfigError(
        "config.train.trainable='detection' trains the person detector on a frozen backbone and "
        "keypoint subnet: pass the keypoint phase's workdir as --config.init_from=DIR "
        "(README, Training)")
  if config.model.backbone.get("frozen_bn", False):
    raise errors.ConfigError(
        "config.model.backbone.frozen_bn=True with no config.init_from would train from scratch "
        "with BatchNorm frozen at its initial statistics: pass --config.init_from=<converted "
        "ImageNet weights (python -m mpn_jax.weights) or a workdir>, or train normalisation too "
        "with --config.model.backbone.frozen_bn=False")


def train_and_evaluate(config, workdir, mesh=None, log_config=False):
  """Trains the stage `config.stage` ('branches' or 'prn') in `workdir`; returns a Result.

  The workdir is locked for the run (`workdir.WorkdirLock`): a second run on it stops at once.
  With `log_config` the config is logged once the lock is held (so a refused run prints only its
  error line).
  """
  logs.quiet_library_logs()
  if config.get("stage") not in TASKS:
    raise errors.ConfigError(f"config.stage={config.get('stage')!r}: use one of {sorted(TASKS)} "
                             "(configs/branches.py or configs/prn.py)")
  if not workdir:
    raise errors.ConfigError("--workdir is required: the folder for checkpoints and TensorBoard "
                             "logs")
  check_train_config(config)
  dist = config.get("distributed", {})
  parallel.maybe_initialize_distributed(dist.get("coordinator_address", ""),
                                        dist.get("num_processes", 0), dist.get("process_id", -1))
  workdir = workdir_lib.prepare(workdir)
  check_start(config, workdir)
  with workdir_lib.WorkdirLock(workdir):
    if log_config:
      logging.info("config:\n%s", config)
    mesh = mesh if mesh is not None else parallel.create_mesh()
    logging.info("stage %s on %d devices (%d processes), workdir %s", config.stage, mesh.size,
                 jax.process_count(), workdir)
    task = TASKS[config.stage](config, mesh)
    return run(config, workdir, task, mesh)
