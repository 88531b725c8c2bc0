"""Losses of both training stages: heatmap L2, RetinaNet focal + smooth-L1, PRN cross-entropy.

Every function returns a float32 scalar reduced over the GLOBAL batch (under jit with a sharded
batch the sums are global reductions), so the loss and its gradients do not depend on the device
count.
"""

import jax
import jax.numpy as jnp


def weighted_l2(pred, target, weights, peak_weight=0.0):
  """Masked squared error, summed over channels and averaged over batch and positions.

  Args:
    pred: [B, h, w, C] float32 raw outputs.
    target: [B, h, w, C] float32.
    weights: [B, h, w, 1] (or [B, h, w, C]) float32, 0 where the position is ignored.
    peak_weight: each cell's error also counts `peak_weight * target` times more (0: the plain L2
      of the paper), so that the few cells under the Gaussian peaks and the person mask weigh as
      much as the many background cells.
  Returns:
    scalar float32: sum(weights * (1 + peak_weight * target) * (pred - target)^2) / (B * h * w).
  """
  if pred.shape != target.shape:
    raise ValueError(f"prediction {pred.shape} and target {target.shape} shapes differ")
  b, h, w = pred.shape[:3]
  target = target.astype(jnp.float32)
  sq = jnp.square(pred.astype(jnp.float32) - target)
  if peak_weight:
    sq = sq * (1.0 + peak_weight * target)
  return jnp.sum(weights * sq) / (b * h * w)


def upsample_to(x, size, factor):
  """Bilinear upsampling of a native-resolution map by `factor`, cropped to the stride-4 `size`.

  A level-l map (stride 2^l, cell j centred at input 2^l (j + 0.5)) is resized by the integer
  factor 2^(l-2) with half-pixel centres and then cropped at the bottom/right, which keeps the
  cell-centre convention exact even when the input side is not a multiple of 2^l (SAME padding
  makes the level map ceil(H / 2^l) cells, slightly more than H / 2^l).

  Args:
    x: [B, hl, wl, C]. size: (h, w) target grid, h <= factor * hl. factor: int >= 1.
  Returns:
    [B, h, w, C].
  """
  b, hl, wl, c = x.shape
  h, w = size
  if h > hl * factor or w > wl * factor:
    raise ValueError(f"map {x.shape} upsampled x{factor} does not cover the target grid {size}")
  if factor > 1:
    x = jax.image.resize(x, (b, hl * factor, wl * factor, c), method="bilinear")
  return x[:, :h, :w]


def keypoint_loss(final, intermediate, target, weights, intermediate_weight=1.0, peak_weight=0.0):
  """Keypoint-subnet loss: L2 on the final output plus every intermediate (per-FPN-level) output.

  Intermediate outputs (native P2..P5 resolution) are upsampled bilinearly to the stride-4 target
  grid (`upsample_to`) rather than downsampling the targets, so every level is judged against the
  same sharp Gaussian peaks.

  Args:
    final: [B, h, w, 18] (17 heatmaps + person mask) at stride 4.
    intermediate: list of [B, hl, wl, 18] arrays for levels 2, 3, ... (stride 4, 8, ...).
    target: [B, h, w, 18]: heatmaps then mask.
    weights: [B, h, w, 1] loss-weight map (0 on ignored regions).
    intermediate_weight: factor on each intermediate term.
    peak_weight: `weighted_l2`'s extra weight of the cells under the targets (0: the paper's L2).
  Returns:
    (total scalar, {'keypoint_final': ..., 'keypoint_intermediate': ...}).
  """
  final_loss = weighted_l2(final, target, weights, peak_weight)
  inter = [weighted_l2(upsample_to(p, target.shape[1:3], 2**i), target, weights, peak_weight)
           for i, p in enumerate(intermediate)]
  inter_loss = sum(inter) if inter else jnp.zeros((), jnp.float32)
  total = final_loss + intermediate_weight * inter_loss
  return total, {"keypoint_final": final_loss, "keypoint_intermediate": inter_loss}


def focal_loss_terms(logits, labels, alpha=0.25, gamma=2.0):
  """Elementwise sigmoid focal loss (Lin et al. 2017), numerically stable.

  Args:
    logits: [...] float32. labels: [...] float32 in {0, 1}.
  Returns:
    [...] float32: alpha_t * (1 - p_t)^gamma * BCE(logits, labels).
  """
  logits = logits.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  ce = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = p * labels + (1 - p) * (1 - labels)
  alpha_t = alpha * labels + (1 - alpha) * (1 - labels)
  return alpha_t * jnp.power(1 - p_t, gamma) * ce


def smooth_l1(x, beta):
  """Smooth L1: 0.5 x^2 / beta for |x| < beta, else |x| - 0.5 beta (beta <= 0: plain L1)."""
  ax = jnp.abs(x)
  if beta <= 0:
    return ax
  return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def detection_loss(cls_logits, box_deltas, cls_targets, box_targets, alpha=0.25, gamma=2.0,
                   beta=0.11):
  """RetinaNet loss: focal loss on all non-ignored anchors, smooth-L1 on positives' box deltas.

  Both are normalised by the number of positive anchors in the whole (global) batch, at least 1.

  Args:
    cls_logits: [B, A, K] float32 (K=1 classes: person).
    box_deltas: [B, A, 4] float32.
    cls_targets: [B, A] int32: 1 positive (class 1), 0 negative, -1 ignored.
    box_targets: [B, A, 4] float32 encoded deltas (only positives matter).
  Returns:
    (focal scalar, box scalar, num_pos scalar float32).
  """
  k = cls_logits.shape[-1]
  # Class c (1-based) positive when cls_targets == c; with K=1 that is cls_targets == 1.
  onehot = (cls_targets[..., None] == jnp.arange(1, k + 1)).astype(jnp.float32)
  valid = (cls_targets >= 0).astype(jnp.float32)[..., None]
  pos = (cls_targets > 0).astype(jnp.float32)
  num_pos = jnp.sum(pos)
  norm = jnp.maximum(num_pos, 1.0)
  focal = jnp.sum(focal_loss_terms(cls_logits, onehot, alpha, gamma) * valid) / norm
  box = jnp.sum(smooth_l1(box_deltas.astype(jnp.float32) - box_targets, beta) * pos[..., None])
  return focal, box / norm, num_pos


def prn_loss(logits, targets, target_valid):
  """PRN cross-entropy between each channel's spatial target distribution and softmax(logits).

  Args:
    logits: [B, H, W, K] float32.
    targets: [B, H, W, K] float32, each channel a distribution over the H*W positions (or all 0).
    target_valid: [B, K] float32 (1 where the keypoint is labelled).
  Returns:
    scalar float32: -sum_pos target * log_softmax(logits) averaged over valid (example, channel).
  """
  b, h, w, k = logits.shape
  logp = jax.nn.log_softmax(logits.astype(jnp.float32).reshape(b, h * w, k), axis=1)
  ce = -jnp.sum(targets.reshape(b, h * w, k) * logp, axis=1)  # [B, K]
  return jnp.sum(ce * target_valid) / jnp.maximum(jnp.sum(target_valid), 1.0)
