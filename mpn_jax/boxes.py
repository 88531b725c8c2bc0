"""Anchor and box geometry of the person detector: the one owner of anchors, box coding, IoU and NMS.

Training targets (`anchor_targets`) and inference (`decode`, `nms`) both import from here, so the
anchor order and the delta coding cannot disagree between the two.

Conventions (docs/design.md):
  * boxes are [..., 4] float32 (x1, y1, x2, y2) in input-image pixels, continuous coordinates (pixel
    i covers [i, i + 1)), so a box's width is simply x2 - x1;
  * a stride-s feature map's cell (i, j) is centred at the input point (s * (j + 0.5), s * (i + 0.5));
    level l has stride 2^l and ceil(H / 2^l) x ceil(W / 2^l) cells (SAME padding);
  * anchors of all levels are concatenated level by level, each level flattened [h, w, A] row-major
    (y, then x, then anchor); within a position the A = len(ratios) * len(scales) anchors are ordered
    ratio-major, then scale. `ratio` is height / width.

All functions except `generate_anchors` (whose output shape depends on static sizes, so it is built
with numpy at trace time) are jnp, jittable and vmappable.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_LEVELS = (3, 4, 5, 6, 7)
DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
BOX_STDS = (0.1, 0.1, 0.2, 0.2)
# Largest log-size change `decode` applies: an anchor may grow at most 1000/16 = 62.5x, which keeps
# exp() finite for untrained (or diverged) regression outputs.
MAX_LOG_SIZE_DELTA = math.log(1000.0 / 16.0)


def feature_map_sizes(image_size, levels=DEFAULT_LEVELS):
  """[(h, w)] of each level's feature map for an input of (H, W): ceil(H / 2^l), ceil(W / 2^l)."""
  h, w = image_size
  return [(-(-int(h) // 2 ** l), -(-int(w) // 2 ** l)) for l in levels]


def generate_anchors(image_size, levels=DEFAULT_LEVELS, sizes=DEFAULT_SIZES,
                     ratios=DEFAULT_RATIOS, scales=DEFAULT_SCALES):
  """All anchors of an (H, W) input, in the order the detection head emits its outputs.

  Args:
    image_size: (H, W) static ints, the network input size.
    levels: pyramid levels (stride 2^l).
    sizes: base anchor side per level (its square root of area at scale 1).
    ratios: height / width aspect ratios.
    scales: multipliers of the base size.
  Returns:
    [A, 4] float32 xyxy anchors (jnp), A = sum_l h_l * w_l * len(ratios) * len(scales).
  """
  if len(levels) != len(sizes):
    raise ValueError(f"generate_anchors: {len(levels)} levels but {len(sizes)} sizes; give one "
                     "anchor size per pyramid level")
  # Per-position anchor shapes, ratio-major then scale: area (size * scale)^2, h / w = ratio.
  per_level = []
  for l, size, (fh, fw) in zip(levels, sizes, feature_map_sizes(image_size, levels)):
    stride = 2.0 ** l
    wh = np.array([[size * s / math.sqrt(r), size * s * math.sqrt(r)]
                   for r in ratios for s in scales], np.float64)  # [A, 2]
    cy, cx = np.meshgrid(stride * (np.arange(fh) + 0.5), stride * (np.arange(fw) + 0.5),
                         indexing="ij")  # [fh, fw]
    ctr = np.stack([cx, cy], -1)[:, :, None, :]  # [fh, fw, 1, 2]
    half = wh[None, None] / 2.0
    per_level.append(np.concatenate([ctr - half, ctr + half], -1).reshape(-1, 4))
  return jnp.asarray(np.concatenate(per_level, 0), jnp.float32)


def _to_center(boxes):
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes, anchors, stds=BOX_STDS):
  """Regression targets of boxes [..., 4] relative to anchors [..., 4] -> deltas [..., 4] float32.

  (dx, dy) = centre offset / anchor size, (dw, dh) = log(size ratio), each divided by `stds`.
  Boxes need a positive width and height (the log of 0 is -inf).
  """
  bx, by, bw, bh = _to_center(boxes)
  ax, ay, aw, ah = _to_center(anchors)
  deltas = jnp.stack([(bx - ax) / aw, (by - ay) / ah, jnp.log(bw / aw), jnp.log(bh / ah)], -1)
  return (deltas / jnp.asarray(stds, deltas.dtype)).astype(jnp.float32)


def decode(deltas, anchors, stds=BOX_STDS):
  """Inverse of `encode`: deltas [..., 4] and anchors [..., 4] -> boxes [..., 4] float32 xyxy.

  The size deltas are clamped at log(1000 / 16) before exp() so that wild outputs stay finite.
  """
  d = deltas * jnp.asarray(stds, deltas.dtype)
  ax, ay, aw, ah = _to_center(anchors)
  cx = ax + d[..., 0] * aw
  cy = ay + d[..., 1] * ah
  w = aw * jnp.exp(jnp.minimum(d[..., 2], MAX_LOG_SIZE_DELTA))
  h = ah * jnp.exp(jnp.minimum(d[..., 3], MAX_LOG_SIZE_DELTA))
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1).astype(jnp.float32)


def area(boxes, xp=jnp):
  """[..., 4] -> [...] area; inverted boxes have area 0. xp: jnp, or np for host-side numpy."""
  return (xp.maximum(boxes[..., 2] - boxes[..., 0], 0.0) *
          xp.maximum(boxes[..., 3] - boxes[..., 1], 0.0))


def intersection(a, b, xp=jnp):
  """Pairwise intersection areas: a [N, 4], b [M, 4] -> [N, M]. xp: jnp, or np."""
  lt = xp.maximum(a[:, None, :2], b[None, :, :2])
  rb = xp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = xp.maximum(rb - lt, 0.0)
  return wh[..., 0] * wh[..., 1]


def iou(a, b):
  """Pairwise intersection over union: a [N, 4], b [M, 4] -> [N, M] float32 (0 for empty unions)."""
  inter = intersection(a, b)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def clip(boxes, height, width):
  """Clips [..., 4] boxes to the image [0, width] x [0, height] (scalars or broadcastable arrays)."""
  x1 = jnp.clip(boxes[..., 0], 0.0, width)
  y1 = jnp.clip(boxes[..., 1], 0.0, height)
  x2 = jnp.clip(boxes[..., 2], 0.0, width)
  y2 = jnp.clip(boxes[..., 3], 0.0, height)
  return jnp.stack([x1, y1, x2, y2], -1)


def flip_horizontal(boxes, width):
  """Boxes [..., 4] of an image of `width` -> boxes of the mirrored image (x -> width - x)."""
  return jnp.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], -1)


def anchor_targets(gt_boxes, gt_labels, anchors, pos_iou=0.5, neg_iou=0.4, crowd_ioa=0.5):
  """RetinaNet classification and regression targets of one image (vmap over the batch).

  Matching rules:
    * an anchor is positive if its best IoU with a person box (label 1) is >= pos_iou, negative if
      it is < neg_iou, ignored in between;
    * additionally every person box's best anchor(s) (all anchors tied at its maximum IoU) are
      positive and regress to that box, provided that IoU is > 0, so that no person (e.g. a tiny or
      very elongated one) is left without a positive anchor;
    * anchors that are not positive and whose intersection with a crowd box (label -1) covers at
      least `crowd_ioa` of the anchor's own area are ignored (crowd regions hold unlabelled people,
      so calling them background would teach the detector to miss people). Positives stay positive;
    * padding boxes (label 0) take no part at all.

  Args:
    gt_boxes: [M, 4] float32 xyxy input pixels.
    gt_labels: [M] int32, 1 person, 0 padding, -1 crowd.
    anchors: [A, 4] float32 from `generate_anchors`.
  Returns:
    cls_targets: [A] int32, 1 positive, 0 negative, -1 ignore.
    box_targets: [A, 4] float32 `encode`d deltas of the matched person box (0 where not positive).
  """
  num_anchors = anchors.shape[0]
  if gt_boxes.shape[0] == 0:  # Static: an image batch padded to zero boxes has only negatives.
    return jnp.zeros((num_anchors,), jnp.int32), jnp.zeros((num_anchors, 4), jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  gt_labels = jnp.asarray(gt_labels)
  anchors = jnp.asarray(anchors, jnp.float32)
  person = gt_labels == 1
  crowd = gt_labels == -1

  ious = jnp.where(person[None, :], iou(anchors, gt_boxes), -1.0)  # [A, M]
  best_iou = jnp.max(ious, axis=1)
  matched = jnp.argmax(ious, axis=1)

  # Each person's best anchors (ties included), if they overlap it at all.
  gt_best = jnp.max(ious, axis=0)  # [M]
  is_best = (ious == gt_best[None, :]) & (gt_best[None, :] > 0) & person[None, :]
  forced = jnp.any(is_best, axis=1)
  forced_gt = jnp.argmax(jnp.where(is_best, ious, -1.0), axis=1)

  positive = (best_iou >= pos_iou) | forced
  # A forced anchor below pos_iou regresses to the person it is the best anchor of.
  matched = jnp.where(best_iou >= pos_iou, matched, forced_gt)

  crowd_inter = jnp.where(crowd[None, :], intersection(anchors, gt_boxes), 0.0)
  ioa = jnp.max(crowd_inter, axis=1) / jnp.maximum(area(anchors), 1e-6)
  ignore = ~positive & ((best_iou >= neg_iou) | (ioa >= crowd_ioa))
  cls_targets = jnp.where(positive, 1, jnp.where(ignore, -1, 0)).astype(jnp.int32)

  # Non-positive anchors regress to themselves, which encodes to exactly 0 (and avoids log(0) on
  # padding boxes).
  target_boxes = jnp.where(positive[:, None], gt_boxes[matched], anchors)
  return cls_targets, encode(target_boxes, anchors)


def nms(boxes, scores, iou_threshold, max_output):
  """Greedy non-maximum suppression with a fixed output shape (jittable, vmappable).

  Repeatedly takes the highest-scoring remaining box and removes every box whose IoU with it
  exceeds `iou_threshold` (the same rule as torchvision / tf.image.non_max_suppression). Each of the
  `max_output` steps is O(N), so memory stays O(N) (no N x N IoU matrix) even for all anchors.

  Args:
    boxes: [N, 4] float32 xyxy.
    scores: [N] float32; entries equal to -inf (e.g. below a score threshold) are never kept.
    iou_threshold: boxes overlapping a kept box with IoU > this are suppressed.
    max_output: static number of output slots.
  Returns:
    keep_idx: [max_output] int32 indices into boxes, in decreasing score order (0 where not valid).
    valid: [max_output] bool, False for slots left over when fewer boxes survive.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
  box_area = area(boxes)

  def step(remaining, _):
    i = jnp.argmax(remaining)  # The first of tied maxima, like a stable sort.
    ok = remaining[i] > -jnp.inf
    b = boxes[i]
    lt = jnp.maximum(boxes[:, :2], b[:2])
    rb = jnp.minimum(boxes[:, 2:], b[2:])
    inter = jnp.prod(jnp.maximum(rb - lt, 0.0), axis=-1)
    union = box_area + box_area[i] - inter
    overlap = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    suppress = (overlap > iou_threshold) | (jnp.arange(boxes.shape[0]) == i)
    remaining = jnp.where(ok & suppress, -jnp.inf, remaining)
    return remaining, (jnp.where(ok, i, 0).astype(jnp.int32), ok)

  if boxes.shape[0] == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  _, (keep_idx, valid) = jax.lax.scan(step, scores, None, length=max_output)
  return keep_idx, valid
