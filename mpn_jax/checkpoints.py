"""Orbax checkpoints of one training stage at workdir/checkpoints, and loading weights elsewhere.

Layout of a step: workdir/checkpoints/<step>/
  variables/  {'params': ..., 'batch_stats': ...}  (the same tree as an init_from / weights file)
  opt_state/  the optax state
  config/     the run's config as JSON
The last `keep` steps are kept, plus the best one by the evaluation metric when there is one.

Faults (docs/reliability.md):
  * saves are synchronous: a save that fails (disk full, unwritable folder) raises
    errors.CheckpointError naming the folder and the cause at that step, with the earlier steps
    intact (Orbax writes a step to a temporary folder and renames it when complete);
  * a step whose files do not read (a truncated metadata, metrics or array file) is "unreadable":
    training moves it aside to <step>.corrupt and resumes from the newest readable step; inference
    (`restore_stage`) falls back to the next candidate with a warning naming the bad step.

A model path (what `Predictor.load` and `python evaluate.py --model=PATH` take) is a folder holding
the two stage workdirs, PATH/branches and PATH/prn (what `python -m mpn_jax.quickstart` leaves); a
stage workdir alone also names its own stage. `restore_stage` picks a step of a stage (the latest,
the best by the run's config.train.best_metric, or a given one) and returns its variables with the
config saved beside them, so nothing outside the checkpoint is needed to rebuild the model.
"""

import glob
import json
import logging as pylogging
import os
import re
import shutil
import socket
import sys

from absl import logging
from etils import epath
import flax
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from mpn_jax import errors
from mpn_jax import parallel


_SPACE_MARGIN = 1 << 20  # bytes beyond the arrays: metadata, config, metrics


def _drop_closed_loop_reports():
  """Installs (once) an unraisable-exception hook that drops the echoes of a failed Orbax save or
  restore: "RuntimeError: Event loop is closed", and Orbax's own coroutines collected unfinished.

  After a failed save Orbax closes its asyncio loops while TensorStore still completes the
  cancelled writes; each completion then reports that error as unraisable, a dozen tracebacks
  around the one-line CheckpointError. A failed restore leaves its other array reads unfinished;
  each reports its error when it is collected. Every other unraisable exception reaches the
  previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_mpn_jax", False):
    return

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and (
        str(unraisable.exc_value) == "Event loop is closed"):
      return
    if _orbax_coroutine(unraisable.object):
      return
    previous(unraisable)

  hook._mpn_jax = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  # The write tasks that failed beside the one whose error was raised are never awaited; asyncio
  # reports each when it is collected (under load, after the one-line error): the same failure.
  pylogging.getLogger("asyncio").addFilter(_orbax_unretrieved_task_filter)


def _orbax_coroutine(obj):
  code = getattr(obj, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _orbax_unretrieved_task_filter(record):
  message = record.getMessage()
  return not (message.startswith("Task exception was never retrieved") and "orbax" in message)


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


def saved_steps(directory):
  """Sorted steps (ints) of the step folders in a checkpoints `directory` ([] when absent): the
  one way steps are listed (`checkpoint_dir(workdir)` gives a workdir's directory)."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


# The JSON files of a step: Orbax's step metadata, the saved config and metrics, and each item's
# tree / sharding / array metadata. Every one must parse for the step to be usable.
_JSON_FILES = ("_CHECKPOINT_METADATA", "config/metadata", "metrics/metrics", "*/_METADATA",
               "*/_sharding", "*/array_metadatas/*")


def metadata_problem(step_dir):
  """None when every JSON file of a step folder parses, else 'FILE: what is wrong'."""
  for pattern in _JSON_FILES:
    for path in sorted(glob.glob(os.path.join(step_dir, pattern))):
      if not os.path.isfile(path):
        continue
      try:
        with open(path, "rb") as f:
          json.loads(f.read().decode("utf-8"))
      except (ValueError, UnicodeDecodeError) as e:
        return f"{path}: unreadable ({errors.first_line(e, 120)}; truncated or corrupt)"
      except OSError as e:
        return f"{path}: {e.strerror}"
  return None


# What TensorStore / Orbax say when an array file is truncated or damaged, as opposed to a file
# that cannot be read just now (permissions, I/O, a stale network mount: an error, nothing is set
# aside) or a checkpoint of another model (a config error).
# A step folder without one of the items every save writes (or an empty one) is damaged too.
_CORRUPT_SIGNS = ("OUT_OF_RANGE", "DATA_LOSS", "Failed to decode", "JSONDecodeError",
                  "Expecting value", "Unterminated string", "was not found in the checkpoint")
# Another optimizer or stage changes the tree of the saved state, not only an array's shape.
_MISMATCH_SIGNS = ("not compatible with the stored shape", "Dict key mismatch",
                   "tree structures do not match")


def read_problem(step_dir, exc):
  """Why restoring the step at `step_dir` raised `exc`: a CheckpointError to raise at once (the
  checkpoint is of another model, or a file cannot be read just now), 'FOLDER: cause' when the
  files are damaged (the step is then set aside), or None when the exception is no checkpoint
  fault (a bug: re-raise it)."""
  text = f"{type(exc).__name__}: {exc}"
  chain = exc.__cause__ or exc.__context__
  while chain is not None:
    text += f"\n{type(chain).__name__}: {chain}"
    chain = chain.__cause__ or chain.__context__
  if any(sign in text for sign in _MISMATCH_SIGNS):
    line = next((ln for ln in text.splitlines() if any(s in ln for s in _MISMATCH_SIGNS)), text)
    return errors.CheckpointError(
        f"the checkpoint {step_dir} holds another model than the config describes "
        f"({errors.first_line(line, 240)}): use the run's own config, or another --workdir")
  if isinstance(exc, OSError) and exc.filename:
    return errors.CheckpointError(f"cannot read the checkpoint {step_dir} ({exc.filename}: "
                                  f"{exc.strerror}): fix the file's permissions or the disk and run "
                                  "again (nothing was changed)")
  if any(sign in text for sign in _CORRUPT_SIGNS):
    # TensorStore names the array and the folder of its database: say that, shortly.
    m = re.search(r'(OUT_OF_RANGE|DATA_LOSS)[^"]*"([^"]+)" in OCDBT database at local file "([^"]+)"',
                  text)
    if m:
      return f"{m.group(3).rstrip('/')}: array {m.group(2)!r} is truncated or damaged ({m.group(1)})"
    line = next((ln for ln in text.splitlines() if any(s in ln for s in _CORRUPT_SIGNS)), text)
    return f"{step_dir}: {errors.first_line(line, 300)}"
  return None


def on_process_zero(fn, what):
  """Runs fn() on process 0 only and returns its result there (None elsewhere). With several
  processes, a failure on process 0 is raised on every process (process 0's own error there, a
  CheckpointError naming `what` elsewhere), so that no process is left waiting in a collective."""
  error, result = None, None
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except  (re-raised below, on every process)
      error = e
  if jax.process_count() > 1:
    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      raise errors.CheckpointError(f"{what} failed on process 0 (its log says why)")
  if error is not None:
    raise error
  return result


def set_aside(step_dir):
  """Renames an unreadable step folder to <step>.corrupt[-N] (kept for inspection; Orbax only
  lists numeric folders, so it no longer counts as a step). Returns the new path."""
  target, n = f"{step_dir}.corrupt", 1
  while os.path.exists(target):
    n += 1
    target = f"{step_dir}.corrupt-{n}"
  os.rename(step_dir, target)
  return target


class StageCheckpoints:
  """One CheckpointManager for a stage: save/restore a TrainState, keep last N + best."""

  def __init__(self, workdir, keep=3, best_metric=None, best_mode="min"):
    policies = [pp.LatestN(max(1, keep))]
    self.best_metric = best_metric
    if best_metric:
      if best_mode not in ("min", "max"):
        raise errors.ConfigError(f"config.train.best_mode={best_mode!r}: use 'min' or 'max'")
      policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                               n=1, keep_checkpoints_without_metrics=False))
    # best_fn makes Orbax write each step's metrics next to it (<step>/metrics/metrics), so the
    # best step stays known after a restart, to the BestN policy and to restore_stage.
    best = dict(best_fn=lambda m: m[best_metric], best_mode=best_mode) if best_metric else {}
    # Synchronous saves: an asynchronous one that fails (disk full) is only seen at the next save
    # or at exit, where Orbax's signalling threads then wait out their 300 s timeout.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies), create=True,
        enable_async_checkpointing=False,
        # Half-written steps of a failed or killed save (<step>.orbax-checkpoint-tmp) are removed.
        cleanup_tmp_directories=True, **best)
    self.directory = checkpoint_dir(workdir)
    _drop_closed_loop_reports()
    on_process_zero(lambda: check_writable(self.directory), "checking the checkpoint folder")
    # Every process knows which steps existed, so all agree when none of them is readable.
    self.initial_steps = saved_steps(self.directory)
    self.set_aside = []  # (step, problem) of the unreadable steps moved aside (process 0)

    def scan():
      for step in self.initial_steps:
        problem = metadata_problem(os.path.join(self.directory, str(step)))
        if problem:
          self._set_aside(step, problem)
    if jax.process_count() > 1:  # every process has listed the steps before any is renamed
        multihost_utils.sync_global_devices("mpn_jax checkpoints: steps listed")
    on_process_zero(scan, "checking the saved steps")
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def _set_aside(self, step, problem):
    moved = set_aside(os.path.join(self.directory, str(step)))
    self.set_aside.append((step, problem))
    logging.warning("checkpoint step %d is unreadable (%s): moved it to %s, the earlier steps are "
                    "used", step, problem, moved)

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def restore_latest_readable(self, state):
    """(state restored from the newest readable step, that step), or (state, None) when there is
    no step. Unreadable steps are moved aside (see the module docstring) with a warning; a
    checkpoint of another model is a CheckpointError."""
    while True:
      step = self.latest_step()
      if step is None:
        if self.initial_steps:
          raise errors.CheckpointError(
              f"no readable checkpoint in {self.directory}: steps {self.initial_steps} were moved "
              "aside as <step>.corrupt (the warnings above say why); run again to start from "
              "scratch, or restore the folder from a backup")
        return state, None
      try:
        return self.restore(state, step), step
      except Exception as e:  # pylint: disable=broad-except
        problem = read_problem(os.path.join(self.directory, str(step)), e)
        if isinstance(problem, errors.CheckpointError):
          raise problem from e
        if problem is None:
          raise
        on_process_zero(lambda step=step, problem=problem: self._set_aside(step, problem),
                        f"setting aside checkpoint step {step}")
        self.manager.reload()

  def save(self, state, config=None, metrics=None):
    """Saves `state` at state.step (synchronously); `metrics` ranks it for the best-N policy.
    A save that fails for an operating-system cause (disk full, permissions) is a CheckpointError
    naming the folder and the cause; any other failure is re-raised as it is."""
    step = int(jax.device_get(state.step))
    items = {
        "variables": ocp.args.StandardSave({"params": state.params,
                                            "batch_stats": state.batch_stats}),
        "opt_state": ocp.args.StandardSave(state.opt_state),
    }
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    if metrics and self.best_metric and self.best_metric not in metrics:
      # Saving matters more than ranking: keep the checkpoint, say why it is not ranked.
      logging.warning("config.train.best_metric=%r is not among the evaluation metrics %s: "
                      "step %d is kept as one of the last N only", self.best_metric,
                      sorted(metrics), step)
      metrics = None
    metrics = {k: float(v) for k, v in metrics.items()} if metrics and self.best_metric else None
    self._check_space(state, step)
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many types)
      if errors.os_cause(e, default=False) is None:
        raise
      kept = [s for s in saved_steps(self.directory) if s != step]
      raise errors.CheckpointError(
          f"could not save checkpoint step {step} in {self.directory}: {errors.os_cause(e)}. "
          f"Training stopped; the earlier steps {kept or '(none)'} are intact. Free space or fix "
          "the folder, then run the same command to resume") from e
    return step

  def _check_space(self, state, step):
    """CheckpointError before writing when the disk has less free space than the step's arrays
    take uncompressed: a clean stop instead of a failure half-way through Orbax's writers."""
    need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(
        (state.params, state.batch_stats, state.opt_state)))
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      return
    if free < need + _SPACE_MARGIN:
      kept = saved_steps(self.directory)
      raise errors.CheckpointError(
          f"could not save checkpoint step {step} in {self.directory}: No space left on device "
          f"(it needs about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free). Training "
          f"stopped; the earlier steps {kept or '(none)'} are intact. Free space or fix the "
          "folder, then run the same command to resume")

  def restore(self, state, step=None):
    """Restores step (default latest) into the structure/shardings of `state`."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore({"params": abstract.params,
                                            "batch_stats": abstract.batch_stats}),
        opt_state=ocp.args.StandardRestore(abstract.opt_state)))
    return state.replace(step=parallel.replicate(np.int32(step), state.step.sharding.mesh),
                         params=restored.variables["params"],
                         batch_stats=restored.variables["batch_stats"],
                         opt_state=restored.opt_state)

  def close(self):
    """Waits for pending writes and closes; a failure here is logged, not raised (it runs in the
    training loop's `finally`, where it must not hide the error that ended training)."""
    try:
      self.manager.wait_until_finished()
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("closing the checkpoints in %s: %s", self.directory, errors.os_cause(e))


def check_writable(directory):
  """Creates `directory` if needed and writes a probe file there; CheckpointError naming the
  folder and the cause when it cannot (a file in the way, no permission, read-only, disk full)."""
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write_probe_{socket.gethostname()}_{os.getpid()}")
    with open(probe, "wb") as f:
      f.write(b"ok")
    os.remove(probe)
  except OSError as e:
    where = e.filename or directory
    raise errors.CheckpointError(
        f"cannot write checkpoints to {directory} ({where}: {e.strerror or e}): choose a "
        "--workdir on a writable disk with free space") from e


def _variables_dir(path):
  """Finds the {'params', 'batch_stats'} checkpoint under a workdir, checkpoints dir or step dir."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise errors.MissingFileError(f"no checkpoint at {path}")
  for candidate in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(os.path.join(candidate, "variables")):
      return os.path.join(candidate, "variables"), candidate
    steps = saved_steps(candidate)
    if steps:
      step_dir = os.path.join(candidate, str(max(steps)))
      return os.path.join(step_dir, "variables"), step_dir
  return path, None  # a plain pytree checkpoint (e.g. converted ImageNet weights)


def restore_variables(path):
  """Loads (params, batch_stats, config-dict or None) for inference or initialisation.

  Args:
    path: a training workdir (latest step), its checkpoints/ folder, one step folder, or a plain
      Orbax pytree checkpoint holding {'params': ..., 'batch_stats': ...} (batch_stats optional).
  Returns:
    host numpy pytrees (params, batch_stats) and the saved config as a dict (None if absent).
  """
  var_dir, step_dir = _variables_dir(path)
  _drop_closed_loop_reports()
  problem = metadata_problem(step_dir) if step_dir else None
  if problem:
    raise errors.UnreadableCheckpointError(f"checkpoint {step_dir} is unreadable: {problem}")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      tree = ckptr.restore(var_dir, _single_device_target(var_dir))
  except Exception as e:  # orbax raises several types for a folder that is no checkpoint
    problem = read_problem(step_dir or var_dir, e)
    if isinstance(problem, str):
      raise errors.UnreadableCheckpointError(f"checkpoint {step_dir or var_dir} is unreadable: "
                                   f"{problem}") from e
    raise errors.CheckpointError(f"{path} is not a training workdir or an Orbax checkpoint of "
                                 f"{{'params', 'batch_stats'}}: {errors.first_line(e, 300)}") from e
  if not isinstance(tree, dict) or "params" not in tree:
    raise errors.CheckpointError(f"checkpoint {var_dir} must hold a tree {{'params': ..., 'batch_stats': ...}}"
                     f", got top-level keys {list(tree) if isinstance(tree, dict) else type(tree)}")
  tree = jax.device_get(tree)
  return tree["params"], tree.get("batch_stats", {}) or {}, saved_config(step_dir)


def saved_config(step_dir):
  """The config dict saved with a training step (None if absent)."""
  path = os.path.join(step_dir or "", "config", "metadata")
  if not step_dir or not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise errors.UnreadableCheckpointError(f"{path}: unreadable ({errors.first_line(e, 120)}; truncated or "
                                 "corrupt)") from e


def _single_device_target(directory):
  """Shapes/dtypes of a saved tree, placed on this process's first device: restores a checkpoint
  written by any number of processes/devices."""
  # The tree's own metadata (the handler's): a step's `variables/` item has no step metadata file
  # of its own, which Checkpointer.metadata would warn about on every restore.
  meta = ocp.StandardCheckpointHandler().metadata(epath.Path(directory))
  tree = getattr(meta, "tree", meta)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                      tree)


def merge_pretrained(target, source, name="init_from"):
  """Copies every leaf of `source` into `target` (same paths); returns the merged tree.

  Leaves of `target` absent from `source` keep their value (e.g. only a backbone is pretrained).
  Raises ValueError listing every source path missing from `target` or of another shape.
  """
  flat_t = flax.traverse_util.flatten_dict(flax.core.unfreeze(target), sep="/")
  flat_s = flax.traverse_util.flatten_dict(flax.core.unfreeze(source), sep="/")
  problems = []
  for k, v in flat_s.items():
    if k not in flat_t:
      problems.append(f"{k}: not in the model")
    elif tuple(np.shape(v)) != tuple(np.shape(flat_t[k])):
      problems.append(f"{k}: checkpoint {tuple(np.shape(v))} vs model {tuple(np.shape(flat_t[k]))}")
  if problems:
    shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
    raise errors.ConfigError(f"{name}: {len(problems)} variables do not match the model:\n  "
                             f"{shown}")
  copied = sum(1 for k in flat_s)
  logging.info("%s: copied %d of %d variables", name, copied, len(flat_t))
  flat_t.update({k: np.asarray(v, dtype=np.asarray(flat_t[k]).dtype) for k, v in flat_s.items()})
  return flax.traverse_util.unflatten_dict(flat_t, sep="/")


# --- model paths: which step of which stage ------------------------------------------------------

STAGES = ("branches", "prn")
TRAIN_COMMANDS = {
    "branches": "python train.py --config=configs/branches.py --workdir={workdir}",
    "prn": "python train.py --config=configs/prn.py --workdir={workdir}",
}
# The step `restore_stage` loads when not told: the PRN run keeps its best step by
# config.train.best_metric (coco_small: prn_gt_AP), so the PRN is used at that step.
DEFAULT_STEP = {"branches": "latest", "prn": "best"}


def has_checkpoint(workdir):
  """Whether `workdir` holds at least one saved step."""
  return bool(workdir) and bool(saved_steps(checkpoint_dir(workdir)))


def stage_workdir(model, stage):
  """The workdir of `stage` in a model path: MODEL/<stage> when it holds checkpoints, else MODEL
  itself when it is a stage workdir (`restore_stage` checks that its saved config is of `stage`).

  Raises:
    errors.MissingFileError: neither holds a checkpoint; the message names the training command.
  """
  model = os.path.abspath(os.path.expanduser(model)) if model else ""
  for candidate in (os.path.join(model, stage), model) if model else ():
    if has_checkpoint(candidate):
      return candidate
  where = os.path.join(model, stage) if model else "MODEL/" + stage
  cmd = TRAIN_COMMANDS[stage].format(workdir=where)
  raise errors.MissingFileError(
      f"no {stage} checkpoint in --model={model or '(none given)'} (expected {where}/checkpoints/"
      f"<step>/, or a {stage} workdir itself): train it first with `{cmd}`")


def _event_scalars(workdir, tag):
  """{step: value} of scalar `tag` in workdir's TensorBoard event files (later files win)."""
  paths = sorted(glob.glob(os.path.join(os.path.abspath(os.path.expanduser(workdir)),
                                        "events.out.tfevents.*")), key=os.path.getmtime)
  if not paths:
    return {}
  # TensorFlow is imported only here: reading events is the rare fallback for old runs.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  values = {}
  for path in paths:
    try:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        event = event_pb2.Event.FromString(record)
        for v in event.summary.value:
          if v.tag == tag:
            values[int(event.step)] = float(
                tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value)
    except tf.errors.DataLossError:  # a run killed mid-write leaves a truncated last record
      logging.warning("event file %s is truncated; using the records before the damage", path)
  return values


def step_metrics(workdir, metric):
  """{step: value of `metric`} for the saved steps that have one.

  Orbax's per-step metrics (<step>/metrics/metrics). A run that keeps them saves them with every
  step it evaluated, so the evaluation scalars of workdir's event files (`eval/<metric>`; reading
  them needs TensorFlow) fill in the steps without one only when no saved step has the metric
  (runs saved before the checkpoints kept their metrics) or a metrics file is unreadable (skipped
  with a warning).
  """
  steps = saved_steps(checkpoint_dir(workdir))
  values, unreadable = {}, False
  for step in steps:
    path = os.path.join(checkpoint_dir(workdir), str(step), "metrics", "metrics")
    if os.path.isfile(path):
      try:
        with open(path) as f:
          found = json.load(f)
      except ValueError as e:
        logging.warning("%s is unreadable (%s): step %d is looked up in the event files", path, e,
                        step)
        unreadable = True
        continue
      if metric in found:
        values[step] = float(found[metric])
  if not values or unreadable:
    logged = _event_scalars(workdir, f"eval/{metric}")
    values.update({s: logged[s] for s in steps if s not in values and s in logged})
  return values


def _run_config(workdir, steps):
  """The config saved with the newest step whose config file reads ({} when none does)."""
  for step in reversed(steps):
    try:
      saved = saved_config(os.path.join(checkpoint_dir(workdir), str(step)))
    except errors.CheckpointError:
      continue
    if saved:
      return saved
  return {}


def select_step(workdir, which="latest"):
  """The step `restore_stage` loads: (step, reason).

  which: 'latest', 'best' (the saved step best by the run's config.train.best_metric /
  best_mode, falling back to the latest when the run kept no metric) or a step number.
  """
  steps = saved_steps(checkpoint_dir(workdir))
  if not steps:
    raise errors.MissingFileError(f"no checkpoint steps under {workdir}/checkpoints")
  if str(which).isdigit():
    if int(which) not in steps:
      raise errors.MissingFileError(f"step {which} is not saved in {workdir}/checkpoints (saved: "
                                    f"{steps})")
    return int(which), "requested"
  if which not in ("latest", "best"):
    raise errors.ConfigError(f"checkpoint to restore must be 'latest', 'best' or a step, got "
                             f"{which!r}")
  latest = steps[-1]
  if which == "latest":
    return latest, "latest"
  train = _run_config(workdir, steps).get("train") or {}
  metric, mode = train.get("best_metric"), train.get("best_mode", "min")
  if not metric:
    return latest, "latest (the run kept no best_metric)"
  values = step_metrics(workdir, metric)
  if not values:
    return latest, f"latest (no saved step has {metric})"
  pick = max if mode == "max" else min
  best = pick(values, key=lambda s: (values[s], s if mode == "max" else -s))
  return best, f"best {metric}={values[best]:.4f} ({mode}) of steps {sorted(values)}"


def restore_stage(workdir, stage, which=None):
  """(variables {'params'[, 'batch_stats']} as host numpy, saved config dict or None) of one step.

  which: 'latest', 'best' or a step (see `select_step`); None = DEFAULT_STEP[stage]. The step and
  why it was chosen are logged and printed. When the chosen step is unreadable (damaged files),
  the newest readable step is restored instead, with a warning naming the bad step; a requested
  step number that is unreadable is an error naming it and the intact steps. A saved config of
  another stage (config.stage) is an errors.ConfigError.
  """
  if not has_checkpoint(workdir):
    cmd = TRAIN_COMMANDS[stage].format(workdir=workdir or "DIR")
    raise errors.MissingFileError(
        f"no {stage} checkpoint in workdir {workdir or '(none given)'!r} (expected "
        f"{checkpoint_dir(workdir) if workdir else 'WORKDIR/checkpoints'}/<step>/): train it "
        f"first with `{cmd}`")
  which = which or DEFAULT_STEP.get(stage, "latest")
  step, reason = select_step(workdir, which)
  candidates = [(step, reason)]
  if not str(which).isdigit():
    candidates += [(s, f"the newest readable step (step {step}, {reason}, is unreadable)")
                   for s in reversed(saved_steps(checkpoint_dir(workdir))) if s != step]
  bad = []
  for step, reason in candidates:
    step_dir = os.path.join(checkpoint_dir(workdir), str(step))
    try:
      params, batch_stats, saved = restore_variables(step_dir)
    except errors.UnreadableCheckpointError as e:
      bad.append((step, str(e)))
      message = f"warning: {stage} checkpoint step {step} is unreadable, skipped: {e}"
      if jax.process_index() == 0:  # printed, not logged too: each message once
        print(message, file=sys.stderr)
      continue
    if saved and saved.get("stage", stage) != stage:
      raise errors.ConfigError(f"{workdir} holds a {saved['stage']} checkpoint, not a {stage} one: "
                               f"give the {stage} workdir (or the model folder holding {stage}/)")
    if jax.process_index() == 0:  # printed, not logged too: each message once
      print(f"restored the {stage} checkpoint of step {step} from {workdir}: {reason}")
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    return variables, saved
  ckpt_dir = checkpoint_dir(workdir)
  bad_steps = [s for s, _ in bad]
  intact = [s for s in saved_steps(ckpt_dir) if s not in bad_steps and
            metadata_problem(os.path.join(ckpt_dir, str(s))) is None]
  raise errors.UnreadableCheckpointError(
      f"no readable {stage} checkpoint to restore in {ckpt_dir}: "
      + "; ".join(f"step {s}: {problem}" for s, problem in bad)
      + f". Steps whose metadata reads: {intact or 'none'}")
