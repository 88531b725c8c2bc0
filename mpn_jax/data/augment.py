"""Geometric and photometric augmentation of one example, as TensorFlow ops (tf.data map friendly).

One affine matrix per example maps ORIGINAL image coordinates to INPUT coordinates (the S x S
network input). Image, masks, keypoints and boxes all go through that one matrix, so they cannot
drift apart:

  M = T(c + t S) . R(angle) . Z(scale) . T(-c) . L . F

read right to left: F optionally mirrors the original image (x -> W - x); L is the letterbox scale
S / max(H, W) that puts the image in the top-left corner with its longest side = S (exactly
`preprocess.letterbox` at eval); then, about the centre c of the letterboxed picture, a zoom by
`scale`, a rotation by `angle` degrees (positive = counter-clockwise on screen) and a shift by
`t * S` pixels. With scale=1, angle=0, t=0, no flip, M is the eval letterbox.

With config.input.augment.center = "person" (`person_matrix`), the crop is centred on one
annotated person instead, scaled to a fixed fraction of S (OpenPose-style, as in the paper's
reference implementation):

  M = T(S/2 + t S) . R(angle) . Z(zoom * scale) . T(-F p) . F

where p is the chosen person's box centre (F p: mirrored with the image), zoom =
min(person_height * S / box height, max_zoom * L) makes that person person_height * S tall before
the random `scale`. The cap keeps a 10 px person from being blown up 30x (its pixels would be mush);
no lower cap is needed, since a box no taller than the image gives zoom >= person_height * L. The
person is drawn per example with a stateless op (`sample_params`): among non-crowd people with a
labelled keypoint, else among non-crowd people, else there is none and M is the letterbox matrix
above with the same scale, angle, shift and flip.

Coordinates are continuous (pixel i covers [i, i + 1), see preprocess.py). The warp samples the
source at M^-1 of each output pixel centre, so points and pixels agree to float precision.

Boxes after the warp: the bounding box of the transformed ellipse inscribed in the original box,
grown to contain the person's transformed labelled keypoints, then clipped to the canvas. For flips,
scales and shifts this is exactly the transformed box; under rotation it is much tighter than the
box of the four rotated corners (which for a 40 degree rotation adds ~40% of empty margin) while the
keypoints stay inside it.
"""

import math

import numpy as np
from mpn_jax import cli  # pylint: disable=g-bad-import-order
cli.import_tensorflow_quietly()  # before TensorFlow first loads: its native start-up notices off
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax.configs import defaults


# ---------------------------------------------------------------------------------------------------
# Matrices.


def _mat(rows):
  return tf.convert_to_tensor(rows, tf.float32)


def letterbox_scale(height, width, size):
  """S / max(H, W) as a float32 scalar tensor (the scale `preprocess.letterbox` uses)."""
  hw = tf.cast(tf.stack([height, width]), tf.float32)
  return tf.cast(size, tf.float32) / tf.reduce_max(hw)


def _rotate_zoom(src, dst, zoom, angle):
  """[3, 3] similarity moving point `src` to `dst`, zooming by `zoom` and turning by `angle`.

  Args:
    src, dst: (x, y) float32 (scalars or [2] tensors).
    zoom: scalar float32. angle: degrees, positive = counter-clockwise on screen.
  """
  a = tf.cast(angle, tf.float32) * (math.pi / 180.0)
  z = tf.cast(zoom, tf.float32)
  cos, sin = z * tf.cos(a), z * tf.sin(a)
  sx, sy = tf.cast(src[0], tf.float32), tf.cast(src[1], tf.float32)
  dx, dy = tf.cast(dst[0], tf.float32), tf.cast(dst[1], tf.float32)
  # y points down, so a counter-clockwise turn on screen is x' = x cos + y sin, y' = -x sin + y cos.
  return _mat([[cos, sin, dx - (cos * sx + sin * sy)],
               [-sin, cos, dy - (-sin * sx + cos * sy)],
               [0.0, 0.0, 1.0]])


def _flip(width, flip):
  """The mirror x -> W - x when `flip` (bool scalar), else the identity; [3, 3] float32."""
  f = tf.where(tf.cast(flip, tf.bool), -1.0, 1.0)
  return _mat([[f, 0.0, tf.where(f < 0, tf.cast(width, tf.float32), 0.0)],
               [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def affine_matrix(height, width, size, scale=1.0, angle=0.0, translate=(0.0, 0.0), flip=False):
  """The [3, 3] float32 matrix mapping original image coordinates to S x S input coordinates.

  Args:
    height, width: original image size (ints or scalar tensors).
    size: S, the side of the square input.
    scale: zoom relative to the letterbox scale.
    angle: rotation in degrees, positive = counter-clockwise on screen (y axis points down).
    translate: (tx, ty) shift as a fraction of S.
    flip: mirror the original image horizontally first (x -> W - x).
  Returns:
    [3, 3] float32 tensor M, homogeneous column vectors: [x', y', 1]^T = M [x, y, 1]^T.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  lb = letterbox_scale(height, width, size)
  lb_m = _mat([[lb, 0.0, 0.0], [0.0, lb, 0.0], [0.0, 0.0, 1.0]])
  c = tf.stack([w * lb / 2.0, h * lb / 2.0])
  t = tf.cast(translate, tf.float32) * tf.cast(size, tf.float32)
  return _rotate_zoom(c, c + t, scale, angle) @ lb_m @ _flip(width, flip)


def person_zoom(height, width, size, box, person_height=0.6, max_zoom=4.0):
  """Original -> input zoom that makes a person box `person_height * S` tall, capped.

  Args:
    height, width: original image size. size: S.
    box: [4] float32 COCO (x, y, w, h) original pixels.
    person_height: target box height as a fraction of S; 0: no normalisation (the letterbox
      scale).
    max_zoom: cap relative to the letterbox scale S / max(H, W).
  Returns:
    scalar float32: min(person_height * S / box height, max_zoom * letterbox scale).
  """
  box = tf.cast(box, tf.float32)
  letterbox = letterbox_scale(height, width, size)
  # A degenerate (0 px) box is simply capped. person_height 0: the letterbox scale, i.e. centred
  # on the person without normalising its size (people as large as evaluation shows them).
  wanted = tf.where(tf.cast(person_height, tf.float32) > 0,
                    tf.cast(person_height, tf.float32) * tf.cast(size, tf.float32) /
                    tf.maximum(box[3], 1e-3), letterbox)
  return tf.minimum(wanted, tf.cast(max_zoom, tf.float32) * letterbox)


def person_matrix(height, width, size, box, scale=1.0, angle=0.0, translate=(0.0, 0.0),
                  flip=False, person_height=0.6, max_zoom=4.0):
  """The [3, 3] float32 matrix of a crop centred on one person (module docstring, center="person").

  The person's box centre (mirrored when `flip`) goes to the canvas centre + translate * S, zoomed
  by `person_zoom(...) * scale` and rotated by `angle` about it.

  Args:
    height, width: original image size. size: S.
    box: [4] float32 COCO (x, y, w, h) of the person, original pixels (before any flip).
    scale, angle, translate, flip: as in `affine_matrix` (scale multiplies the person zoom).
    person_height, max_zoom: see `person_zoom`.
  Returns:
    [3, 3] float32 original -> input coordinates.
  """
  box = tf.cast(box, tf.float32)
  centre = tf.stack([box[0] + box[2] / 2.0, box[1] + box[3] / 2.0, 1.0])
  flip_m = _flip(width, flip)
  centre = tf.linalg.matvec(flip_m, centre)[:2]
  s = tf.cast(size, tf.float32)
  dst = s / 2.0 + tf.cast(translate, tf.float32) * s
  zoom = person_zoom(height, width, size, box, person_height, max_zoom) * tf.cast(scale, tf.float32)
  return _rotate_zoom(centre, dst, zoom, angle) @ flip_m


def params_matrix(height, width, size, params):
  """The matrix of a params dict from `sample_params` (or hand-made).

  Args:
    height, width: original image size. size: S.
    params: dict with scale, angle, translate, flip; person-centred when it also holds
      'person' (int32 index, -1: none, then the letterbox matrix), 'box' [4] xywh, 'person_height'
      and 'max_zoom'.
  Returns:
    [3, 3] float32 original -> input coordinates.
  """
  geo = {k: params[k] for k in ("scale", "angle", "translate", "flip")}
  letterbox = affine_matrix(height, width, size, **geo)
  if "person" not in params:
    return letterbox
  person = person_matrix(height, width, size, params["box"], person_height=params["person_height"],
                         max_zoom=params["max_zoom"], **geo)
  return tf.where(tf.cast(params["person"], tf.int32) >= 0, person, letterbox)


def flip_matrix(width):
  """[3, 3] matrix of a horizontal flip of an image `width` wide (x -> W - x)."""
  return _flip(width, True)


def choose_person(seed, people):
  """Stateless pick of the person to centre a crop on.

  Uniform among non-crowd people with at least one labelled keypoint, else among non-crowd people.

  Args:
    seed: [2] int stateless seed.
    people: dict with 'bbox' [P, 4] xywh, 'keypoints' [P, 17, 3], 'iscrowd' [P] (tensors or arrays).
  Returns:
    (index int32 scalar, -1 when no non-crowd person exists; box [4] float32 xywh, zeros if none).
  """
  boxes = tf.reshape(tf.cast(people["bbox"], tf.float32), [-1, 4])
  kp = tf.reshape(tf.cast(people["keypoints"], tf.float32), [-1, coco.NUM_KEYPOINTS, 3])
  crowd = tf.reshape(tf.cast(people["iscrowd"], tf.bool), [-1])
  labelled = ~crowd & tf.reduce_any(kp[..., 2] > 0, axis=-1)
  pool = tf.where(tf.reduce_any(labelled), labelled, ~crowd)
  candidates = tf.cast(tf.where(pool)[:, 0], tf.int32)
  n = tf.shape(candidates)[0]
  u = tf.random.stateless_uniform([], tf.cast(seed, tf.int64), 0.0, 1.0, tf.float32)
  pick = tf.minimum(tf.cast(u * tf.cast(n, tf.float32), tf.int32), tf.maximum(n - 1, 0))
  index = tf.cond(n > 0, lambda: candidates[pick], lambda: tf.constant(-1, tf.int32))
  # Gather from a zero row appended at the end, so that "none" needs no separate branch.
  padded = tf.concat([boxes, tf.zeros([1, 4], tf.float32)], 0)
  box = tf.gather(padded, tf.where(index >= 0, index, tf.shape(boxes)[0]))
  return index, box


def sample_params(seed, aug, people=None):
  """Draws one example's augmentation parameters with stateless ops (same seed, same draw).

  Args:
    seed: [2] int32/int64 stateless seed.
    aug: a ConfigDict like `defaults.augment_config()`.
    people: the example's 'people' dict (needed when aug.center == "person"; ignored otherwise).
  Returns:
    dict(scale, angle, translate [2], flip bool) of float32 tensors; with center="person" also
    'person' (int32 index of the chosen person, -1: none, letterbox fallback), 'box' ([4] float32
    xywh of that person), 'person_height' and 'max_zoom' (floats from `aug`). `params_matrix` turns
    it into the matrix. The first four draws do not depend on `center` or `people`.
  """
  check_config(aug)
  seed = tf.cast(seed, tf.int64)
  seeds = tf.random.experimental.stateless_split(seed, num=4)
  u = lambda i, shape, lo, hi: tf.random.stateless_uniform(shape, seeds[i], lo, hi, tf.float32)
  rot = float(aug.rotation)
  tr = float(aug.translate)
  params = dict(
      scale=u(0, [], float(aug.scale_min), float(aug.scale_max)),
      angle=u(1, [], -rot, rot),
      translate=u(2, [2], -tr, tr),
      flip=u(3, [], 0.0, 1.0) < float(aug.flip),
  )
  if aug.get("center", "letterbox") == "person":
    if people is None:
      raise ValueError("sample_params: config.input.augment.center='person' needs the example's "
                       "people (sample_params(seed, aug, example['people']))")
    # A seed of its own, so that the draws above are the same in both modes.
    index, box = choose_person(tf.random.experimental.stateless_fold_in(seed, 4), people)
    params.update(person=index, box=box, person_height=float(aug.person_height),
                  max_zoom=float(aug.max_zoom))
  return params


_CENTERS = ("letterbox", "person")


def _number(value):
  """float(value), or NaN (fails every range check) for non-numbers such as strings or None."""
  if isinstance(value, bool):
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def check_config(aug):
  """Raises errors.ConfigError naming the config.input.augment field that is out of range."""
  name = "config.input.augment"
  center = aug.get("center", "letterbox")
  if center not in _CENTERS:
    raise errors.ConfigError(f"{name}.center = {center!r}: use one of {', '.join(_CENTERS)}")
  person_height = aug.get("person_height", 0.6)
  if not 0 <= _number(person_height) <= 1:
    raise errors.ConfigError(f"{name}.person_height = {person_height}: must lie in [0, 1] (the "
                             "person's height as a fraction of the input size; 0: as letterboxed)")
  max_zoom = aug.get("max_zoom", 4.0)
  if not 1 <= _number(max_zoom) < math.inf:
    raise errors.ConfigError(f"{name}.max_zoom = {max_zoom}: must be a finite number >= 1 (the "
                             "cap of the person zoom relative to the letterbox scale)")
  if not 0 < aug.scale_min <= aug.scale_max:
    raise errors.ConfigError(f"{name}.scale_min/scale_max = {aug.scale_min}/{aug.scale_max}: need "
                             "0 < scale_min <= scale_max (1.0/1.0 switches zoom off)")
  for field, hi in (("rotation", 180.0), ("translate", 1.0), ("flip", 1.0)):
    if not 0 <= aug[field] <= hi:
      raise errors.ConfigError(f"{name}.{field} = {aug[field]}: must lie in [0, {hi}] "
                               "(0 switches it off)")
  cj = aug.color_jitter
  for field, hi in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.5)):
    if not 0 <= cj[field] <= hi:
      raise errors.ConfigError(f"{name}.color_jitter.{field} = {cj[field]}: must lie in [0, {hi}]")


def check_crop(crop, size, multiple=1):
  """Raises ValueError naming config.input.crop_size unless 0 < crop <= size and crop % multiple
  == 0 (multiple: the heatmap stride for training targets)."""
  if not (0 < crop <= size and crop % multiple == 0):
    need = f"a multiple of {multiple} " if multiple > 1 else ""
    raise errors.ConfigError(f"config.input.crop_size={crop}: use 0 (no crop) or {need}in (0, "
                             f"config.input.size={size}]")


# ---------------------------------------------------------------------------------------------------
# Applying a matrix.


def transform_points(points, matrix):
  """Applies a [3, 3] affine matrix to points [..., 2] (float32) -> [..., 2]."""
  points = tf.convert_to_tensor(points, tf.float32)
  return tf.linalg.matvec(matrix[:2, :2], points) + matrix[:2, 2]


def warp(image, matrix, out_hw, interpolation="BILINEAR"):
  """Resamples `image` so that output point M @ p shows the input point p.

  Args:
    image: [H, W, C] (any channel count; padding is filled with 0), float32, or uint8 with
      'NEAREST' (which only copies values, so uint8 stays uint8).
    matrix: [3, 3] original -> output coordinates (continuous convention).
    out_hw: (height, width) of the output.
    interpolation: 'BILINEAR' for images, 'NEAREST' for masks.
  Returns:
    [out_h, out_w, C] float32 (uint8 for a uint8 image with 'NEAREST').
  """
  if not (interpolation == "NEAREST" and image.dtype == tf.uint8):
    image = tf.cast(image, tf.float32)
  inv = tf.linalg.inv(matrix)
  # ImageProjectiveTransform samples at integer indices = pixel centres, i.e. continuous x - 0.5:
  # index_in = T(-.5) M^-1 T(+.5) index_out.
  half = _mat([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
  minus_half = _mat([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
  t = minus_half @ inv @ half
  t = t / t[2, 2]
  transform = tf.reshape(t, [9])[:8][None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform,
      output_shape=tf.cast(tf.stack(out_hw), tf.int32), fill_value=0.0,
      interpolation=interpolation, fill_mode="CONSTANT")
  return out[0]


def warp_image(image, matrix, out_hw):
  """Bilinear warp that first shrinks the image (antialiased) when M zooms out.

  A bilinear sample of a picture reduced several times aliases; resizing with tf.image.resize's
  antialias filter to about the target resolution, then warping the rest of the way, keeps fine
  detail smooth. The geometry is unchanged: the matrix is composed with the resize.

  Args:
    image: [H, W, C] float32. matrix: [3, 3]. out_hw: (height, width).
  Returns:
    [out_h, out_w, C] float32.
  """
  image = tf.cast(image, tf.float32)
  zoom = _zoom(matrix)
  return tf.cond(zoom < 0.75, lambda: warp(*_shrink(image, matrix, zoom), out_hw),
                 lambda: warp(image, matrix, out_hw))


def _zoom(matrix):
  """The scale factor of a [3, 3] affine matrix (square root of its area ratio)."""
  return tf.sqrt(tf.abs(tf.linalg.det(matrix[:2, :2])))


def _shrink(image, matrix, zoom):
  """Antialiased resize of `image` by `zoom` (M's) -> (small image, matrix from its pixels)."""
  h = tf.shape(image)[0]
  w = tf.shape(image)[1]
  nh = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float32) * zoom), tf.int32))
  nw = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float32) * zoom), tf.int32))
  small = tf.image.resize(image, tf.stack([nh, nw]), method="bilinear", antialias=True)
  # resize uses half-pixel centres, so it is the exact map x -> x * nw / w.
  rs = _mat([[tf.cast(w, tf.float32) / tf.cast(nw, tf.float32), 0.0, 0.0],
             [0.0, tf.cast(h, tf.float32) / tf.cast(nh, tf.float32), 0.0],
             [0.0, 0.0, 1.0]])
  return small, matrix @ rs


def source_window(height, width, matrix, out_hw, margin=2):
  """The source pixels an output of `out_hw` under M can sample: int32 (x0, y0, x1, y1), the
  preimage of the output rectangle widened by `margin` pixels (bilinear reads a pixel's
  neighbours) and clipped to the image."""
  inv = tf.linalg.inv(matrix)
  oh, ow = (tf.cast(v, tf.float32) for v in out_hw)
  corners = tf.stack([tf.stack([0.0, 0.0]), tf.stack([ow, 0.0]), tf.stack([0.0, oh]),
                      tf.stack([ow, oh])])
  pts = transform_points(corners, inv)
  lo = tf.cast(tf.floor(tf.reduce_min(pts, 0)), tf.int32) - margin
  hi = tf.cast(tf.math.ceil(tf.reduce_max(pts, 0)), tf.int32) + margin
  size = tf.stack([width, height])
  lo = tf.clip_by_value(lo, 0, size)
  hi = tf.clip_by_value(hi, lo, size)
  return lo[0], lo[1], hi[0], hi[1]


def reduce_source(example, matrix, out_hw, pixels_fn=None, window_fraction=0.25):
  """The fewest source pixels that give the same warp, with the per-pixel work (colour jitter,
  normalisation: `pixels_fn`) done on those only.

  Zooming out (M's zoom < 0.75, where `warp_image` would shrink the image anyway): the image is
  shrunk first (antialiased, as `warp_image` does). Zooming in so far that the output shows less
  than `window_fraction` of the image: the image and masks are cut to the pixels the output
  samples (`source_window`). Otherwise nothing changes. Warping the result with the returned
  matrices shows what the whole source warped with M shows (up to float rounding of the sample
  positions); a crop zoomed 2x needs a quarter of the pixel work.

  Args:
    example: dict with 'image' [H, W, 3] float32, 'person_mask', 'ignore_mask' [H, W, 1].
    matrix: [3, 3] source -> output. out_hw: output (height, width).
    pixels_fn: (image [h, w, 3] float32, whole: the [H, W, 3] image it was cut from, or None
      where it is the whole image or a shrunk copy) -> image; None: identity.
  Returns:
    (example with the reduced, processed 'image' and the reduced 'person_mask', 'ignore_mask';
    [3, 3] matrix from the reduced image's pixels to the output; [3, 3] from the reduced masks').
  """
  image = example["image"]
  pixels_fn = pixels_fn or (lambda x, whole: x)
  h = tf.shape(image)[0]
  w = tf.shape(image)[1]
  zoom = _zoom(matrix)
  x0, y0, x1, y1 = source_window(h, w, matrix, out_hw)
  small_window = (tf.cast((x1 - x0) * (y1 - y0), tf.float32) <
                  window_fraction * tf.cast(h * w, tf.float32))
  masks = (example["person_mask"], example["ignore_mask"])

  def shrunk():
    small, m = _shrink(image, matrix, zoom)
    return (pixels_fn(small, None),) + masks + (m, matrix)

  def window():
    shift = _mat([[1.0, 0.0, tf.cast(x0, tf.float32)], [0.0, 1.0, tf.cast(y0, tf.float32)],
                  [0.0, 0.0, 1.0]])
    cut = lambda t: t[y0:y1, x0:x1]
    return ((pixels_fn(cut(image), image),) + tuple(cut(m) for m in masks) +
            (matrix @ shift, matrix @ shift))

  def whole():
    return (pixels_fn(image, None),) + masks + (matrix, matrix)

  parts = tf.cond(zoom < 0.75, shrunk, lambda: tf.cond(small_window, window, whole))
  reduced = dict(example, image=parts[0], person_mask=parts[1], ignore_mask=parts[2])
  return reduced, parts[3], parts[4]


def transform_keypoints(keypoints, matrix, flip, out_hw):
  """Moves keypoints [P, 17, 3] (x, y, v) through M; swaps left/right when flipped.

  Keypoints that were unlabelled (v = 0) or land outside the [0, W) x [0, H) canvas get (0, 0, 0).
  Returns [P, 17, 3] float32.
  """
  keypoints = tf.convert_to_tensor(keypoints, tf.float32)
  xy = transform_points(keypoints[..., :2], matrix)
  v = keypoints[..., 2]
  out_h = tf.cast(out_hw[0], tf.float32)
  out_w = tf.cast(out_hw[1], tf.float32)
  inside = ((xy[..., 0] >= 0) & (xy[..., 0] < out_w) & (xy[..., 1] >= 0) & (xy[..., 1] < out_h))
  keep = (v > 0) & inside
  out = tf.where(keep[..., None], tf.concat([xy, v[..., None]], -1), 0.0)
  perm = tf.constant(coco.FLIP_PERM, tf.int32)
  return tf.cond(tf.cast(flip, tf.bool), lambda: tf.gather(out, perm, axis=-2), lambda: out)


def transform_boxes(boxes, matrix, out_hw, keypoints=None, min_size=2.0):
  """Moves xyxy boxes [P, 4] through M (see the module docstring for the rule).

  Args:
    boxes: [P, 4] float32 (x1, y1, x2, y2) original pixels.
    matrix: [3, 3].
    out_hw: canvas (height, width) to clip to.
    keypoints: optional [P, 17, 3] ORIGINAL keypoints; labelled ones are kept inside their box.
    min_size: boxes with a clipped side below this are invalid.
  Returns:
    (boxes [P, 4] float32 clipped to the canvas, valid [P] bool).
  """
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
  half = (boxes[:, 2:] - boxes[:, :2]) / 2.0
  c = transform_points(centre, matrix)
  # The ellipse {c + A diag(half) u : |u| <= 1} spans +-|row_i(A diag(half))| along axis i.
  a = matrix[:2, :2]
  ext = tf.sqrt(tf.reduce_sum(tf.square(half[:, None, :] * a[None]), -1))
  lo, hi = c - ext, c + ext
  if keypoints is not None:
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    xy = transform_points(keypoints[..., :2], matrix)
    lab = (keypoints[..., 2] > 0)[..., None]
    lo = tf.minimum(lo, tf.reduce_min(tf.where(lab, xy, np.inf), axis=-2))
    hi = tf.maximum(hi, tf.reduce_max(tf.where(lab, xy, -np.inf), axis=-2))
  wh_max = tf.cast(tf.stack([out_hw[1], out_hw[0]]), tf.float32)
  lo = tf.clip_by_value(lo, 0.0, wh_max)
  hi = tf.clip_by_value(hi, 0.0, wh_max)
  valid = tf.reduce_all(hi - lo >= min_size, axis=-1)
  return tf.concat([lo, hi], -1), valid


# RGB -> YIQ (NTSC): Y is luma, I and Q the chroma plane. Saturation scales the chroma and a hue
# shift rotates it, so both are one 3 x 3 colour matrix per image.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def color_jitter(image, seed, cfg, whole=None):
  """Random brightness, contrast, saturation and hue on RGB [H, W, 3] float32 in 0..255.

  Brightness adds a delta in [-b, b] (of the 0..1 range), contrast scales about the image's
  per-channel mean (of `whole` where `image` is a part cut from the [H, W, 3] image `whole`) by
  [1 - c, 1 + c]; saturation ([1 - s, 1 + s]) and hue (a turn of [-h, h] of the colour circle) act
  on the YIQ chroma plane as one colour matrix: per pixel a 3 x 3 product instead of a round trip
  through HSV (about 3x cheaper; the input pipeline's second-largest cost). All ranges 0: the
  image is returned as it is (for whole-number pixel values, what the steps below would give:
  x / 255 * 255 == x in float32 for x = 0..255).
  """
  if not any(cfg[k] > 0 for k in ("brightness", "contrast", "saturation", "hue")):
    return image
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
  x = image / 255.0
  if cfg.brightness > 0:
    x = tf.image.stateless_random_brightness(x, float(cfg.brightness), seeds[0])
  if cfg.contrast > 0:
    # The draw of tf.image.stateless_random_contrast with this seed.
    factor = tf.random.stateless_uniform([], seeds[1], 1.0 - cfg.contrast, 1.0 + cfg.contrast)
    contrasted = tf.image.adjust_contrast(x, factor)
    if whole is not None:  # about the whole image's mean, not the part's own
      shift = tf.reduce_mean(whole, axis=[0, 1]) - tf.reduce_mean(image, axis=[0, 1])
      contrasted = contrasted + (1.0 - factor) * shift / 255.0
    x = contrasted
  if cfg.saturation > 0 or cfg.hue > 0:
    sat = tf.random.stateless_uniform([], seeds[2], 1.0 - cfg.saturation, 1.0 + cfg.saturation)
    turn = tf.random.stateless_uniform([], seeds[3], -cfg.hue, cfg.hue) * (2.0 * math.pi)
    c, s = tf.cos(turn) * sat, tf.sin(turn) * sat
    chroma = tf.stack([tf.stack([1.0, 0.0, 0.0]), tf.stack([0.0, c, -s]), tf.stack([0.0, s, c])])
    to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
    matrix = tf.linalg.inv(to_yiq) @ chroma @ to_yiq  # rgb' = matrix @ rgb
    x = tf.tensordot(x, tf.transpose(matrix), 1)
  return tf.clip_by_value(x, 0.0, 1.0) * 255.0


# ---------------------------------------------------------------------------------------------------
# Whole examples.


def coco_boxes_to_xyxy(bbox_xywh):
  """COCO [..., 4] (x, y, w, h) -> [..., 4] (x1, y1, x2, y2) float32."""
  b = tf.cast(bbox_xywh, tf.float32)
  return tf.concat([b[..., :2], b[..., :2] + b[..., 2:]], -1)


def _warp_masks(person_mask, ignore_mask, matrix, out_hw):
  """Nearest-neighbour warp of the two [H, W, 1] masks -> two [h, w, 1] float32 0/1.

  uint8 masks (any non-zero value read as 1) travel as one uint8 channel, person + 2 x ignore:
  nearest sampling copies values, so unpacking gives exactly the two warped masks, and the warp's
  cost is per output value, so one channel instead of two takes ~7% off the training input's
  time. Masks of another dtype are warped as two float32 channels."""
  if person_mask.dtype == tf.uint8 and ignore_mask.dtype == tf.uint8:
    packed = warp(tf.minimum(person_mask, 1) + 2 * tf.minimum(ignore_mask, 1), matrix, out_hw,
                  "NEAREST")
    return (tf.cast(tf.bitwise.bitwise_and(packed, 1), tf.float32),
            tf.cast(tf.bitwise.right_shift(packed, 1), tf.float32))
  masks = tf.concat([tf.cast(person_mask, tf.float32), tf.cast(ignore_mask, tf.float32)], -1)
  masks = warp(masks, matrix, out_hw, "NEAREST")
  return masks[..., :1], masks[..., 1:]


def apply_affine(example, matrix, flip, out_hw, min_box_size=2.0, image_matrix=None,
                 mask_matrix=None):
  """Warps a decoded example (docs/design.md "data" features) with one matrix.

  Args:
    example: dict with 'image' [H, W, C] (uint8 or float), 'person_mask' and 'ignore_mask'
      [H, W, 1] (uint8 0/1), 'people' {'bbox' [P, 4] xywh, 'keypoints' [P, 17, 3], 'iscrowd' [P]}.
    matrix: [3, 3] original -> output coordinates.
    flip: bool scalar, whether `matrix` contains a mirror (keypoint channels are then swapped).
    out_hw: output (height, width).
    min_box_size: see `transform_boxes`.
    image_matrix, mask_matrix: [3, 3] the image's / the masks' pixels -> output, where they are
      a reduced source (`reduce_source`); None: `matrix`. Keypoints and boxes always go through
      `matrix`.
  Returns:
    dict: 'image' [h, w, C] float32 as given (0 outside the picture), 'person_mask', 'ignore_mask'
    [h, w, 1] float32 0/1, 'keypoints' [P, 17, 3], 'boxes' [P, 4] xyxy, 'box_valid' [P] bool,
    'iscrowd' [P] bool.
  """
  people = example["people"]
  kp = tf.cast(people["keypoints"], tf.float32)
  boxes, valid = transform_boxes(coco_boxes_to_xyxy(people["bbox"]), matrix, out_hw, kp,
                                 min_box_size)
  image_matrix = matrix if image_matrix is None else image_matrix
  mask_matrix = matrix if mask_matrix is None else mask_matrix
  person_mask, ignore_mask = _warp_masks(example["person_mask"], example["ignore_mask"],
                                         mask_matrix, out_hw)
  return dict(
      image=warp_image(tf.cast(example["image"], tf.float32), image_matrix, out_hw),
      person_mask=person_mask,
      ignore_mask=ignore_mask,
      keypoints=transform_keypoints(kp, matrix, flip, out_hw),
      boxes=boxes,
      box_valid=valid,
      iscrowd=tf.cast(people["iscrowd"], tf.bool),
  )


def augment_example(example, size, params=None, color_seed=None, aug=None, crop=None):
  """Letterbox (params=None), or random affine (letterbox- or person-centred) + colour jitter.

  Args:
    example: decoded example as in `apply_affine`.
    size: S.
    crop: C <= S (None: S): only the central C x C window of the S x S canvas is produced, i.e.
      the matrix is followed by a shift of -(S - C) / 2 and the canvas is C x C.
    params: dict from `sample_params` (or hand-made with keys scale, angle, translate, flip, and
      for a person-centred crop person, box, person_height, max_zoom: see `params_matrix`); None
      for the plain eval letterbox.
    color_seed: [2] stateless seed for the colour jitter; None: no jitter.
    aug: augmentation ConfigDict (colour jitter, min_box_size); default
      `defaults.augment_config()`.
  Returns:
    `apply_affine`'s dict plus 'matrix' [3, 3]; 'image' [S, S, 3] float32 is ImageNet-normalised
    (`coco.normalize_image`) before the warp, so the padding is 0 after normalisation as in
    `preprocess.letterbox`.
  """
  aug = aug or defaults.augment_config()
  shape = tf.shape(example["image"])
  params = params or dict(scale=1.0, angle=0.0, translate=(0.0, 0.0), flip=False)
  matrix = params_matrix(shape[0], shape[1], size, params)
  out_side = size if crop is None else int(crop)
  if out_side != size:
    check_crop(out_side, size)
    off = -(size - out_side) / 2.0
    matrix = _mat([[1.0, 0.0, off], [0.0, 1.0, off], [0.0, 0.0, 1.0]]) @ matrix
  out_hw = (out_side, out_side)

  def pixels(image, whole):
    if color_seed is not None:
      image = color_jitter(image, color_seed, aug.color_jitter, whole=whole)
    return coco.normalize_image(image)

  source, image_matrix, mask_matrix = reduce_source(
      dict(example, image=tf.cast(example["image"], tf.float32)), matrix, out_hw, pixels)
  out = apply_affine(source, matrix, params["flip"], out_hw, aug.min_box_size,
                     image_matrix=image_matrix, mask_matrix=mask_matrix)
  out["matrix"] = matrix
  return out
