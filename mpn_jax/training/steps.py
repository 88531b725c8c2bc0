"""Jitted train / eval steps over the ("data",) mesh, and the two stages' loss functions.

A loss function has the signature
  loss_fn(params, batch_stats, batch, rng, train) -> (loss scalar, (new_batch_stats, metrics dict))
and is closed over the model and the loss config. Under jit with the batch sharded over the mesh,
every mean/sum in it (BatchNorm statistics included) is a reduction over the global batch.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from mpn_jax import boxes
from mpn_jax import losses
from mpn_jax import parallel


def _apply(model, params, batch_stats, x, rng, train):
  """model.apply with BatchNorm state mutable in training; returns (outputs, new batch_stats)."""
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  rngs = {"dropout": rng} if train else {}
  if train and batch_stats:
    out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return out, mutated["batch_stats"]
  return model.apply(variables, x, train=train, rngs=rngs), batch_stats


def branches_loss_fn(model, anchors, loss_cfg, trainable="all"):
  """Keypoint-subnet L2 (final + intermediate) plus RetinaNet focal + smooth-L1 loss.

  Batch keys (see docs/design.md, data): image [B,S,S,3], heatmaps [B,S/4,S/4,17], mask
  [B,S/4,S/4,1], weights [B,S/4,S/4,1], boxes [B,M,4], box_labels [B,M] int32.
  `anchors`: [A, 4] of the S x S input, or None to generate them for each batch's (static) image
  size, so that training crops and full-size validation batches share one loss.
  `trainable` drops the loss terms of frozen parts ('keypoints' / 'detection').
  """
  fixed = None if anchors is None else jnp.asarray(anchors)

  def loss_fn(params, batch_stats, batch, rng, train):
    anchors = fixed if fixed is not None else boxes.generate_anchors(batch["image"].shape[1:3])
    out, new_stats = _apply(model, params, batch_stats, batch["image"], rng, train)
    target = jnp.concatenate([batch["heatmaps"], batch["mask"]], axis=-1)
    kp, kp_parts = losses.keypoint_loss(out["keypoints"], out.get("keypoints_intermediate", []),
                                        target, batch["weights"], loss_cfg.intermediate_weight,
                                        loss_cfg.get("peak_weight", 0.0))
    cls_t, box_t = jax.vmap(
        functools.partial(boxes.anchor_targets, pos_iou=loss_cfg.pos_iou, neg_iou=loss_cfg.neg_iou),
        in_axes=(0, 0, None))(batch["boxes"], batch["box_labels"], anchors)
    focal, box, num_pos = losses.detection_loss(
        out["cls_logits"], out["box_deltas"], cls_t, box_t, alpha=loss_cfg.focal_alpha,
        gamma=loss_cfg.focal_gamma, beta=loss_cfg.smooth_l1_beta)
    kp_term = loss_cfg.keypoint_weight * kp
    det_term = loss_cfg.focal_weight * focal + loss_cfg.box_weight * box
    total = {"all": kp_term + det_term, "keypoints": kp_term, "detection": det_term}[trainable]
    metrics = {"loss": total, "keypoint_loss": kp, "focal_loss": focal, "box_loss": box,
               "num_pos_anchors": num_pos / batch["image"].shape[0], **kp_parts}
    return total, (new_stats, metrics)

  return loss_fn


def prn_loss_fn(model):
  """PRN cross-entropy; batch keys inputs/targets [B,56,36,17], target_valid [B,17]."""

  def loss_fn(params, batch_stats, batch, rng, train):
    logits, new_stats = _apply(model, params, batch_stats, batch["inputs"], rng, train)
    loss = losses.prn_loss(logits, batch["targets"], batch["target_valid"])
    return loss, (new_stats, {"loss": loss})

  return loss_fn


def make_train_step(loss_fn, mesh, schedule=None, seed=0):
  """Jitted (state, batch) -> (state, metrics); state replicated, batch sharded, state donated.

  The dropout key of step t is fold_in(key(seed), t), made inside the step (nothing to transfer
  between hosts), so a resumed run draws the same keys.
  """
  repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (new_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, batch, rng, True)
    grad_norm = optax.global_norm(grads)
    new_state = state.apply_gradients(grads, new_stats)
    metrics = dict(metrics, grad_norm=grad_norm,
                   finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    return new_state, metrics

  return jax.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl),
                 donate_argnums=(0,))


def make_eval_step(loss_fn, mesh):
  """Jitted (state, batch) -> metrics with train=False (BatchNorm running statistics)."""
  repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)

  def step(state, batch):
    _, (_, metrics) = loss_fn(state.params, state.batch_stats, batch, jax.random.key(0), False)
    return metrics

  return jax.jit(step, in_shardings=(repl, data), out_shardings=repl)
