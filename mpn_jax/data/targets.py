"""Training targets of the keypoint and detection subnets, from an augmented example (TF ops).

Stride-4 maps follow preprocess.py: cell j covers input [4j, 4j + 4) and is centred at heatmap
coordinate j + 0.5, a keypoint at input x sits at heatmap coordinate x / 4. Each keypoint's
Gaussian is centred exactly there (not snapped to a cell), so the rendered maximum is 1 only when
the keypoint is at a cell centre, and at worst (a cell corner) exp(-1 / (4 sigma^2)): 0.78 for
sigma = 1, 0.94 for sigma = 2. The sub-cell position survives in the neighbouring values.
"""

import math

from mpn_jax import cli  # pylint: disable=g-bad-import-order
cli.import_tensorflow_quietly()  # before TensorFlow first loads: its native start-up notices off
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from mpn_jax import coco
from mpn_jax.data import preprocess

def gaussian_heatmaps(keypoints, out_hw, sigma, stride=preprocess.HEATMAP_STRIDE):
  """One Gaussian per labelled keypoint, max over people.

  Args:
    keypoints: [P, 17, 3] float32 input-pixel (x, y, v); v > 0 marks labelled keypoints.
    out_hw: (h, w) of the heatmaps.
    sigma: standard deviation in heatmap cells.
    stride: input pixels per heatmap cell.
  Returns:
    [h, w, 17] float32 in [0, 1].
  """
  keypoints = tf.convert_to_tensor(keypoints, tf.float32)
  h, w = out_hw
  u = keypoints[..., 0] / stride  # [P, K] heatmap coordinates
  v = keypoints[..., 1] / stride
  lab = keypoints[..., 2] > 0
  xs = tf.range(w, dtype=tf.float32) + 0.5
  ys = tf.range(h, dtype=tf.float32) + 0.5
  denom = 2.0 * float(sigma) ** 2
  # Separable: exp(-(dx^2 + dy^2) / 2s^2) = gx * gy; an unlabelled keypoint contributes 0.
  # People whose every labelled keypoint lies so far outside the map that exp() underflows to 0
  # (exponent below -110) would add exact zeros: left out of the fold (crops show a few people of
  # crowded images).
  reach = math.sqrt(110.0 * denom)
  dx = tf.maximum(0.5 - u, u - (tf.cast(w, tf.float32) - 0.5))  # from the first / last centre
  dy = tf.maximum(0.5 - v, v - (tf.cast(h, tf.float32) - 0.5))
  near = tf.reduce_any(lab & (dx <= reach) & (dy <= reach), axis=-1)  # [P]
  u, v, lab = (tf.boolean_mask(t, near) for t in (u, v, lab))
  gx = tf.exp(-tf.square(xs - u[..., None]) / denom) * tf.cast(lab, tf.float32)[..., None]
  gy = tf.exp(-tf.square(ys - v[..., None]) / denom)

  def add_person(acc, g):
    gx_p, gy_p = g  # [K, w], [K, h]
    return tf.maximum(acc, gy_p[:, :, None] * gx_p[:, None, :])

  # A fold keeps memory at [K, h, w] however many people the image holds.
  maps = tf.foldl(add_person, (gx, gy),
                  initializer=tf.zeros([coco.NUM_KEYPOINTS, h, w], tf.float32))
  return tf.transpose(maps, [1, 2, 0])


def downsample_mean(mask, stride=preprocess.HEATMAP_STRIDE):
  """[H, W, C] -> [H/s, W/s, C] fraction of each cell covered (average pooling)."""
  return tf.nn.avg_pool2d(tf.cast(mask, tf.float32)[None], stride, stride, "VALID")[0]


def loss_weights(ignore_mask, stride=preprocess.HEATMAP_STRIDE):
  """1 - (any ignored pixel in the cell): [H, W, 1] 0/1 -> [H/s, W/s, 1] float32 in {0, 1}.

  A cell touching a crowd region or an unlabelled person is left out of the loss altogether:
  its target would otherwise say "no keypoint" where there may well be one.
  """
  ignored = tf.nn.max_pool2d(tf.cast(ignore_mask, tf.float32)[None], stride, stride, "VALID")[0]
  return 1.0 - tf.cast(ignored > 0, tf.float32)


def pad_to(x, n, axis=0):
  """Keeps the first n entries along `axis` and zero-pads to exactly n (static shape)."""
  x = tf.convert_to_tensor(x)
  x = tf.gather(x, tf.range(tf.minimum(tf.shape(x)[axis], n)), axis=axis)
  pad = [[0, 0]] * len(x.shape)
  pad[axis] = [0, n - tf.shape(x)[axis]]
  out = tf.pad(x, pad)
  shape = x.shape.as_list()
  shape[axis] = n
  return tf.ensure_shape(out, shape)


def box_targets(boxes, valid, iscrowd, max_boxes):
  """Valid boxes first, padded to M, with labels 1 person / -1 crowd / 0 padding.

  Args:
    boxes: [P, 4] float32 xyxy; valid: [P] bool; iscrowd: [P] bool; max_boxes: M.
  Returns:
    (boxes [M, 4] float32, labels [M] int32).
  """
  labels = tf.where(iscrowd, -1, 1)
  keep = tf.where(valid)[:, 0]
  boxes = tf.gather(tf.cast(boxes, tf.float32), keep)
  labels = tf.gather(labels, keep)
  return pad_to(boxes, max_boxes), tf.cast(pad_to(labels, max_boxes), tf.int32)


def keypoint_targets(keypoints, iscrowd, max_people):
  """Keypoints of non-crowd people that keep at least one labelled keypoint, padded to P.

  Returns [P, 17, 3] float32 (zeros = padding).
  """
  has = tf.reduce_any(keypoints[..., 2] > 0, axis=-1) & ~iscrowd
  kept = tf.gather(tf.cast(keypoints, tf.float32), tf.where(has)[:, 0])
  return pad_to(kept, max_people)


def make_targets(augmented, sigma, max_boxes, max_people, stride=preprocess.HEATMAP_STRIDE):
  """All training targets of one augmented S x S example (see docs/design.md, data).

  Args:
    augmented: dict from `augment.augment_example` ('image' [S, S, 3] normalised, 'person_mask',
      'ignore_mask' [S, S, 1], 'keypoints' [P, 17, 3], 'boxes' [P, 4], 'box_valid', 'iscrowd' [P]).
    sigma: heatmap Gaussian sigma in output cells.
    max_boxes: M. max_people: P.
  Returns:
    dict 'image' [S, S, 3] f32, 'heatmaps' [S/4, S/4, 17] f32, 'mask' [S/4, S/4, 1] f32 (fraction
    of the cell on a person), 'weights' [S/4, S/4, 1] f32, 'boxes' [M, 4] f32, 'box_labels' [M] i32,
    'keypoints' [P, 17, 3] f32.
  """
  image = augmented["image"]
  size = image.shape[0]
  if size is None or size % stride or image.shape[1] != size:
    raise ValueError(f"input size must be a square with a side divisible by {stride} (it is "
                     f"{image.shape[:2]}): set config.input.size to a multiple of {stride}")
  out = size // stride
  boxes, labels = box_targets(augmented["boxes"], augmented["box_valid"], augmented["iscrowd"],
                              max_boxes)
  return dict(
      image=tf.ensure_shape(image, [size, size, 3]),
      heatmaps=tf.ensure_shape(
          gaussian_heatmaps(augmented["keypoints"], (out, out), sigma, stride),
          [out, out, coco.NUM_KEYPOINTS]),
      mask=tf.ensure_shape(downsample_mean(augmented["person_mask"], stride), [out, out, 1]),
      weights=tf.ensure_shape(loss_weights(augmented["ignore_mask"], stride), [out, out, 1]),
      boxes=boxes,
      box_labels=labels,
      keypoints=keypoint_targets(augmented["keypoints"], augmented["iscrowd"], max_people),
  )
