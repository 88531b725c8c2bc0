"""Orbax checkpoints of one training stage at workdir/checkpoints, and loading weights elsewhere.

Layout of a step: workdir/checkpoints/<step>/
  variables/  {'params': ..., 'batch_stats': ...}  (the same tree as an init_from / weights file)
  opt_state/  the optax state
  config/     the run's config as JSON
The last `keep` steps are kept, plus the best one by the evaluation metric when there is one.
"""

import json
import os

from absl import logging
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from mpn_jax import parallel


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


class StageCheckpoints:
  """One CheckpointManager for a stage: save/restore a TrainState, keep last N + best."""

  def __init__(self, workdir, keep=3, best_metric=None, best_mode="min"):
    policies = [pp.LatestN(max(1, keep))]
    self.best_metric = best_metric
    if best_metric:
      if best_mode not in ("min", "max"):
        raise ValueError(f"config.eval.best_mode={best_mode!r}: use 'min' or 'max'")
      policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                               n=1, keep_checkpoints_without_metrics=False))
    # best_fn makes Orbax write each step's metrics next to it (<step>/metrics/metrics), so the
    # best step stays known after a restart, to the BestN policy and to predict.restore.
    best = dict(best_fn=lambda m: m[best_metric], best_mode=best_mode) if best_metric else {}
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies), create=True,
        enable_async_checkpointing=True, **best)
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, state, config=None, metrics=None):
    """Saves `state` at state.step (asynchronously); `metrics` ranks it for the best-N policy."""
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
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    return step

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

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _variables_dir(path):
  """Finds the {'params', 'batch_stats'} checkpoint under a workdir, checkpoints dir or step dir."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  for candidate in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(os.path.join(candidate, "variables")):
      return os.path.join(candidate, "variables"), candidate
    names = os.listdir(candidate) if os.path.isdir(candidate) else []
    steps = [int(d) for d in names if d.isdigit()]
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
  try:
    with ocp.StandardCheckpointer() as ckptr:
      tree = ckptr.restore(var_dir, _single_device_target(ckptr, var_dir))
  except Exception as e:  # orbax raises several types for a folder that is no checkpoint
    raise ValueError(f"{path} is not a training workdir or an Orbax checkpoint of "
                     f"{{'params', 'batch_stats'}}: {e}") from e
  if not isinstance(tree, dict) or "params" not in tree:
    raise ValueError(f"checkpoint {var_dir} must hold a tree {{'params': ..., 'batch_stats': ...}}"
                     f", got top-level keys {list(tree) if isinstance(tree, dict) else type(tree)}")
  tree = jax.device_get(tree)
  return tree["params"], tree.get("batch_stats", {}) or {}, saved_config(step_dir)


def saved_config(step_dir):
  """The config dict saved with a training step (None if absent)."""
  path = os.path.join(step_dir or "", "config", "metadata")
  if not step_dir or not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _single_device_target(ckptr, directory):
  """Shapes/dtypes of a saved tree, placed on this process's first device: restores a checkpoint
  written by any number of processes/devices."""
  meta = ckptr.metadata(directory).item_metadata
  tree = getattr(meta, "tree", meta)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                      tree)


def restore_latest(workdir):
  """(params, batch_stats) of the newest checkpoint in `workdir` (contract for inference)."""
  params, batch_stats, _ = restore_variables(workdir)
  return params, batch_stats


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
    raise ValueError(f"{name}: {len(problems)} variables do not match the model:\n  {shown}")
  copied = sum(1 for k in flat_s)
  logging.info("%s: copied %d of %d variables", name, copied, len(flat_t))
  flat_t.update({k: np.asarray(v, dtype=np.asarray(flat_t[k]).dtype) for k, v in flat_s.items()})
  return flax.traverse_util.unflatten_dict(flat_t, sep="/")


def init_from(state, path, mesh, backbone_config=None):
  """Returns `state` with params/batch_stats overwritten by the matching subtrees at `path`.

  Converted ImageNet weights (`python -m mpn_jax.weights`) have a `path`.json beside them naming
  their backbone variant and BN epsilon; with `backbone_config` (config.model.backbone) those are
  checked first, because v1 and v1.5 weights have identical shapes and would load silently.
  """
  meta_file = os.path.abspath(os.path.expanduser(path)).rstrip("/") + ".json"
  if backbone_config is not None and os.path.exists(meta_file):
    from mpn_jax import weights  # pylint: disable=g-import-not-at-top
    weights.check_backbone_config(weights.read_metadata(path), backbone_config)
  params, batch_stats, _ = restore_variables(path)
  new_params = merge_pretrained(jax.device_get(state.params), params, f"init_from={path} params")
  new_stats = state.batch_stats
  if batch_stats:
    new_stats = merge_pretrained(jax.device_get(state.batch_stats), batch_stats,
                                 f"init_from={path} batch_stats")
  return state.replace(params=parallel.replicate(new_params, mesh),
                       batch_stats=parallel.replicate(new_stats, mesh))
