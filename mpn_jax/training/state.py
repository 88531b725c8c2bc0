"""Train state, optimiser, learning-rate schedule and which parameters are trainable."""

import os
from typing import Any, Callable

import flax
from flax import struct
import jax
import jax.numpy as jnp
import optax

from mpn_jax import checkpoints
from mpn_jax import errors
from mpn_jax import parallel
from mpn_jax import weights

# Top-level MultiPoseNet subtrees trained by each `config.train.trainable` choice.
TRAINABLE_SUBTREES = {
    "all": None,  # everything
    "keypoints": ("backbone", "keypoint_fpn", "keypoint_head"),
    "detection": ("detection_fpn", "retina_head"),
}


@struct.dataclass
class TrainState:
  """Everything a training step reads and writes; a pytree (the optimiser itself is static).

  Attributes:
    step: int32 scalar, number of updates applied.
    params: the 'params' collection.
    batch_stats: the 'batch_stats' collection ({} for models without BatchNorm).
    opt_state: optax state of `tx`.
    tx: the optax GradientTransformation (not a pytree node).
    frozen_stats: callable path-tuple -> bool: batch_stats entries to keep fixed (static).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  frozen_stats: Callable[[tuple], bool] = struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, params, batch_stats, tx, frozen_stats=None):
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params), tx=tx, frozen_stats=frozen_stats)

  def apply_gradients(self, grads, batch_stats):
    """One optimiser update; new BatchNorm statistics are kept except on frozen parts."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    if self.frozen_stats is not None and batch_stats:
      batch_stats = _merge_by_path(batch_stats, self.batch_stats, self.frozen_stats)
    return self.replace(step=self.step + 1, params=params, batch_stats=batch_stats,
                        opt_state=opt_state)


def _merge_by_path(new, old, take_old):
  flat_new = flax.traverse_util.flatten_dict(flax.core.unfreeze(new))
  flat_old = flax.traverse_util.flatten_dict(flax.core.unfreeze(old))
  merged = {k: (flat_old[k] if take_old(k) else v) for k, v in flat_new.items()}
  return flax.traverse_util.unflatten_dict(merged)


def frozen_fn(trainable="all"):
  """Returns path-tuple -> bool, True for variables that must not change, or None for 'all'.

  `trainable` is config.train.trainable: 'all' | 'keypoints' | 'detection' (TRAINABLE_SUBTREES).
  (Freezing the first backbone stages is the model's own `backbone.freeze_at`.)
  """
  if trainable not in TRAINABLE_SUBTREES:
    raise errors.ConfigError(f"config.train.trainable={trainable!r}: use one of "
                     f"{sorted(TRAINABLE_SUBTREES)}")
  subtrees = TRAINABLE_SUBTREES[trainable]
  if subtrees is None:
    return None
  return lambda path: path[0] not in subtrees


def learning_rate_schedule(train_cfg):
  """optax schedule from config.train (learning_rate, schedule, warmup_steps, num_steps, ...)."""
  lr, n, warm = train_cfg.learning_rate, train_cfg.num_steps, train_cfg.warmup_steps
  if train_cfg.schedule == "cosine":
    if not warm:  # the same values; optax's warmup variant logs a notice for a 0-step warmup
      return optax.cosine_decay_schedule(lr, max(n, 1), alpha=0.0)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(n, warm + 1), end_value=0.0)
  if train_cfg.schedule == "piecewise":
    bounds = {int(f * n): train_cfg.decay_factor for f in train_cfg.decay_fractions
              if int(f * n) > 0}
    main = optax.piecewise_constant_schedule(lr, bounds)
  elif train_cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise errors.ConfigError(f"config.train.schedule={train_cfg.schedule!r}: use constant, piecewise or "
                     "cosine")
  if warm:
    # Boundaries stay in absolute steps: the main schedule is evaluated at the global step.
    return lambda step: jnp.minimum(1.0, (step + 1) / warm) * main(step)
  return main


def make_optimizer(train_cfg, frozen=None):
  """optax transformation for config.train; `frozen(path) -> bool` parameters get zero updates.

  Returns (tx, schedule).
  """
  schedule = learning_rate_schedule(train_cfg)
  name, wd = train_cfg.optimizer, train_cfg.weight_decay
  if name == "adam":
    base = optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(),
                       optax.adam(schedule))
  elif name == "adamw":
    base = optax.adamw(schedule, weight_decay=wd)
  elif name == "sgd":
    base = optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(),
                       optax.sgd(schedule, momentum=0.9))
  elif name == "plain_sgd":  # no momentum: update = -lr * grad (used by tests to read gradients)
    base = optax.sgd(schedule)
  else:
    raise errors.ConfigError(f"config.train.optimizer={name!r}: use adam, adamw or sgd")
  if train_cfg.grad_clip_norm:
    base = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm), base)
  if frozen is None:
    return base, schedule

  def labels(params):
    return flax.traverse_util.path_aware_map(
        lambda path, _: "frozen" if frozen(path) else "train", flax.core.unfreeze(params))

  tx = optax.multi_transform({"train": base, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule


def init_from(state, path, mesh, backbone_config=None):
  """Returns `state` with params/batch_stats overwritten by the matching subtrees at `path`.

  Converted ImageNet weights (`python -m mpn_jax.weights`) have a `path`.json beside them naming
  their backbone variant and BN epsilon; with `backbone_config` (config.model.backbone) those are
  checked first, because v1 and v1.5 weights have identical shapes and would load silently.
  """
  meta_file = os.path.abspath(os.path.expanduser(path)).rstrip("/") + ".json"
  if backbone_config is not None and os.path.exists(meta_file):
    weights.check_backbone_config(weights.read_metadata(path), backbone_config)
  params, batch_stats, _ = checkpoints.restore_variables(path)
  new_params = checkpoints.merge_pretrained(jax.device_get(state.params), params,
                                            f"init_from={path} params")
  new_stats = state.batch_stats
  if batch_stats:
    new_stats = checkpoints.merge_pretrained(jax.device_get(state.batch_stats), batch_stats,
                                             f"init_from={path} batch_stats")
  return state.replace(params=parallel.replicate(new_params, mesh),
                       batch_stats=parallel.replicate(new_stats, mesh))
