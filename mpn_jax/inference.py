"""On-device inference: heatmap peaks, person detections, PRN crops, assignment, COCO results.

Everything from network outputs to per-person keypoints is jnp with fixed shapes, batched and
jittable; no Python loop runs over boxes, peaks or keypoints (the only Python loop is over the
test-time-augmentation variants, which are static).

Pipeline for a batch of letterboxed images [B, S, S, 3]:
  1. the MultiPoseNet runs once per TTA variant (optional horizontal flip, optional extra scales);
     keypoint heatmaps are brought to the grid of the largest scale (flip back + left/right
     channel swap, bilinear resize) and averaged, so that a larger scale's finer cells are kept;
     box candidates (top `pre_nms_top_k` anchors, decoded) of all variants are mapped back to the
     base input and merged;
  2. `find_peaks`: per keypoint type up to `peaks_per_keypoint` local maxima (3x3) above
     `heatmap_threshold`, with sub-pixel refinement;
  3. detections: score threshold, clip to the input, greedy NMS, up to `max_people` boxes;
  4. PRN input per box widened by `box_widen`: either the detected peaks rasterised on the 56x36 grid
     exactly like the PRN's training samples ('peaks', mpn_jax.data.prn_samples.render_inputs) or
     the heatmaps sampled bilinearly at the grid cell centres ('heatmaps', `crop_heatmaps`);
  5. mpn_jax.assignment scores every peak for every box from the PRN probabilities and assigns;
  6. keypoints [B, N, 17, 3] (x, y, score) and boxes in ORIGINAL image pixels (input / scale).
     Unassigned keypoints sit at their box's centre with score 0, so every person is a valid COCO
     result. Person score: `assignment.instance_scores(mode=instance_score)` (default 'box': box
     score x mean over the 17 types of the assigned peak scores, unassigned counting 0).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mpn_jax import assignment
from mpn_jax import boxes as box_lib
from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import prn_grid

HEATMAP_STRIDE = 4
PRN_INPUTS = ("peaks", "heatmaps")
REFINE_MODES = ("quadratic", "quarter", "none")
_SCALE_MULTIPLE = 32


def inference_config():
  """Defaults of the inference pipeline (embedded as `config.inference` by the train/eval configs)."""
  c = ml_collections.ConfigDict()
  # Keypoint peaks.
  c.heatmap_threshold = 0.1       # on the raw heatmap outputs (targets are Gaussians with max 1)
  c.peaks_per_keypoint = 20       # C: candidates kept per keypoint type
  c.peak_refine = "quadratic"     # 'quadratic' | 'quarter' | 'none' (sub-pixel refinement)
  # Person detection.
  c.score_threshold = 0.05
  c.iou_threshold = 0.5
  c.pre_nms_top_k = 1000          # anchors decoded per image and TTA variant before NMS
  c.max_people = 20               # N: COCO keypoint AP counts at most 20 people per image
  # PRN and assignment.
  c.box_widen = prn_grid.DEFAULT_WIDEN
  c.prn_input = "peaks"           # 'peaks' (as in PRN training) | 'heatmaps' (bilinear crops)
  c.prn_sigma = 1.0               # Gaussian sigma of 'peaks' inputs: the PRN's data.input_sigma
  c.assign_method = "greedy"      # one of mpn_jax.assignment.METHODS
  c.assign_window = 1             # odd window (grid cells) of PRN probability around a candidate
  c.candidate_scores = "prn"      # 'prn' | 'center' (PRN-free nearest-centre baseline)
  c.instance_score = "box"        # one of mpn_jax.assignment.SCORE_MODES
  c.peak_score_power = 0.0        # candidate score x peak value ** this (0: the PRN's alone)
  # Test-time augmentation.
  c.flip = False                  # also run on the mirrored image and average
  c.scales = (1.0,)               # input scales; heatmaps averaged on the largest scale's grid
  # COCO results.
  c.keypoint_visibility = "score"  # 'score' | 'one': the v written for each keypoint
  return c


def _check_config(config):
  if config.prn_input not in PRN_INPUTS:
    raise errors.ConfigError(f"inference.prn_input={config.prn_input!r}: use one of {PRN_INPUTS}")
  if config.peak_refine not in REFINE_MODES:
    raise errors.ConfigError(f"inference.peak_refine={config.peak_refine!r}: use one of {REFINE_MODES}")
  if config.assign_method not in assignment.METHODS:
    raise errors.ConfigError(f"inference.assign_method={config.assign_method!r}: use one of "
                             f"{assignment.METHODS}")
  if config.get("candidate_scores", "prn") not in assignment.SCORERS:
    raise errors.ConfigError(f"inference.candidate_scores={config.candidate_scores!r}: use one of "
                             f"{assignment.SCORERS}")
  if config.instance_score not in assignment.SCORE_MODES:
    raise errors.ConfigError(f"inference.instance_score={config.instance_score!r}: use one of "
                             f"{assignment.SCORE_MODES}")
  if not config.scales or any(s <= 0 for s in config.scales):
    raise errors.ConfigError(f"inference.scales={tuple(config.scales)!r}: give one or more positive scales")


# ------------------------------------------------------------------------------------------------
# Keypoint peaks.

def _refine_offset(left, center, right, has_both, mode):
  """Sub-pixel offset in cells (in [-0.5, 0.5]) of a maximum from its two neighbours' values."""
  if mode == "none":
    return jnp.zeros_like(center)
  if mode == "quarter":
    off = 0.25 * jnp.sign(right - left)
  else:
    # Vertex of the parabola through (-1, left), (0, center), (1, right); a maximum needs a
    # negative curvature, flat neighbourhoods stay put.
    curv = left - 2.0 * center + right
    off = jnp.where(curv < 0, 0.5 * (left - right) / jnp.where(curv < 0, curv, -1.0), 0.0)
    off = jnp.clip(off, -0.5, 0.5)
  # At the map's border one neighbour is missing: no evidence on which side the maximum lies.
  return jnp.where(has_both, off, 0.0)


def find_peaks(heatmaps, threshold, top_k, stride=HEATMAP_STRIDE, refine="quadratic"):
  """Local maxima of keypoint heatmaps, per keypoint type, in input-image pixels.

  A peak is a cell equal to the maximum of its 3x3 neighbourhood and > threshold (of equal
  neighbouring maxima only the first in raster order counts). Its position is
  refined along x and y separately: 'quadratic' fits a parabola through the cell and its two
  neighbours (exact for a quadratic, close for a Gaussian peak), 'quarter' moves a quarter cell
  toward the higher neighbour (the SimpleBaseline rule), 'none' keeps the cell centre. Cell j's
  centre is heatmap coordinate j + 0.5, i.e. input pixel stride * (j + 0.5).

  Args:
    heatmaps: [B, h, w, K] float32.
    threshold: float, minimum peak value (exclusive).
    top_k: static int C, peaks kept per image and type (highest first).
    stride: input pixels per heatmap cell, a float or an (x, y) pair.
    refine: 'quadratic' | 'quarter' | 'none'.
  Returns:
    xy: [B, K, C, 2] float32 input pixels (0 where invalid);
    scores: [B, K, C] float32 heatmap value at the peak cell (0 where invalid);
    valid: [B, K, C] bool.
  """
  if refine not in REFINE_MODES:
    raise ValueError(f"find_peaks: refine={refine!r}, use one of {REFINE_MODES}")
  hm = jnp.asarray(heatmaps, jnp.float32)
  b, h, w, k = hm.shape
  pooled = jax.lax.reduce_window(hm, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
  # Plateaus (equal neighbouring maxima, e.g. a Gaussian centred between two cells) give one peak:
  # a cell must be strictly above its neighbours that come before it in raster order.
  padded = jnp.pad(hm, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  earlier = jnp.maximum(jnp.maximum(padded[:, :h, :w], padded[:, :h, 1:w + 1]),
                        jnp.maximum(padded[:, :h, 2:], padded[:, 1:h + 1, :w]))
  is_peak = (hm == pooled) & (hm > earlier) & (hm > threshold)
  flat = jnp.transpose(hm, (0, 3, 1, 2)).reshape(b, k, h * w)
  is_peak = jnp.transpose(is_peak, (0, 3, 1, 2)).reshape(b, k, h * w)
  n = min(top_k, h * w)
  scores, idx = jax.lax.top_k(jnp.where(is_peak, flat, -jnp.inf), n)
  valid = scores > -jnp.inf
  y, x = idx // w, idx % w

  def at(dy, dx):
    yy, xx = jnp.clip(y + dy, 0, h - 1), jnp.clip(x + dx, 0, w - 1)
    return jnp.take_along_axis(flat, yy * w + xx, axis=-1)

  center = at(0, 0)
  ox = _refine_offset(at(0, -1), center, at(0, 1), (x > 0) & (x < w - 1), refine)
  oy = _refine_offset(at(-1, 0), center, at(1, 0), (y > 0) & (y < h - 1), refine)
  xy = jnp.stack([x + 0.5 + ox, y + 0.5 + oy], -1) * jnp.asarray(stride, jnp.float32)
  xy = jnp.where(valid[..., None], xy, 0.0)
  scores = jnp.where(valid, scores, 0.0)
  if n < top_k:  # Maps smaller than C cells: pad to the static C.
    pad = ((0, 0), (0, 0), (0, top_k - n))
    xy = jnp.pad(xy, pad + ((0, 0),))
    scores, valid = jnp.pad(scores, pad), jnp.pad(valid, pad)
  return xy, scores, valid


# ------------------------------------------------------------------------------------------------
# Person detection.

def box_candidates(cls_logits, box_deltas, anchors, pre_nms_top_k):
  """Top-scoring anchors, decoded: the input of NMS (and what flip/multi-scale TTA merges).

  Args:
    cls_logits: [B, A, 1] (or [B, A]) float32 person logits.
    box_deltas: [B, A, 4] float32.
    anchors: [A, 4] float32 from `boxes.generate_anchors` for the same input size.
    pre_nms_top_k: static int P.
  Returns:
    (boxes [B, P', 4] float32 xyxy input pixels, scores [B, P'] float32 probabilities), P' = min(P, A).
  """
  if cls_logits.ndim == 3:
    cls_logits = cls_logits[..., 0]
  if cls_logits.shape[1] != anchors.shape[0] or box_deltas.shape[1] != anchors.shape[0]:
    raise ValueError(f"detector outputs have {cls_logits.shape[1]} / {box_deltas.shape[1]} anchors "
                     f"but generate_anchors gave {anchors.shape[0]}: input size or anchor settings "
                     "differ between the model and inference")
  scores = jax.nn.sigmoid(cls_logits.astype(jnp.float32))
  scores, idx = jax.lax.top_k(scores, min(pre_nms_top_k, anchors.shape[0]))
  deltas = jnp.take_along_axis(box_deltas.astype(jnp.float32), idx[..., None], axis=1)
  return box_lib.decode(deltas, anchors[idx]), scores


def select_people(boxes, scores, score_threshold, iou_threshold, max_people, image_size=None):
  """Score threshold, clip, NMS of candidates [B, P, 4] / [B, P] -> the `detect_people` outputs."""
  if image_size is not None:
    boxes = box_lib.clip(boxes, float(image_size[0]), float(image_size[1]))
  ok = (scores >= score_threshold) & (box_lib.area(boxes) > 0)
  keep, valid = jax.vmap(functools.partial(box_lib.nms, iou_threshold=iou_threshold,
                                           max_output=max_people))(
                                               boxes, jnp.where(ok, scores, -jnp.inf))
  out_boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1)
  out_scores = jnp.take_along_axis(scores, keep, axis=1)
  return (jnp.where(valid[..., None], out_boxes, 0.0), jnp.where(valid, out_scores, 0.0), valid)


def detect_people(cls_logits, box_deltas, anchors, score_threshold, iou_threshold, max_people,
                  pre_nms_top_k=1000, image_size=None):
  """RetinaNet post-processing: sigmoid, top-k, decode, clip, NMS.

  Args:
    cls_logits: [B, A, 1] float32; box_deltas: [B, A, 4]; anchors: [A, 4].
    score_threshold: minimum person probability.
    iou_threshold: NMS IoU threshold.
    max_people: static N.
    pre_nms_top_k: static, anchors considered per image.
    image_size: optional static (H, W) of the network input to clip boxes to.
  Returns:
    boxes [B, N, 4] float32 xyxy input pixels, scores [B, N] float32, valid [B, N] bool (zeros where
    not valid), in decreasing score order.
  """
  cand_boxes, cand_scores = box_candidates(cls_logits, box_deltas, anchors, pre_nms_top_k)
  return select_people(cand_boxes, cand_scores, score_threshold, iou_threshold, max_people,
                       image_size)


# ------------------------------------------------------------------------------------------------
# PRN inputs.

def bilinear_sample(image, xy):
  """Samples image [h, w, K] at continuous map coordinates xy [..., 2] (cell j centred at j + 0.5).

  Inside the map's extent [0, w] x [0, h] values are interpolated bilinearly between cell centres
  (clamped to the border cells in the outer half cell); outside it they are 0.
  Returns [..., K] float32.
  """
  image = jnp.asarray(image, jnp.float32)
  h, w, _ = image.shape
  u, v = xy[..., 0] - 0.5, xy[..., 1] - 0.5
  inside = (xy[..., 0] >= 0) & (xy[..., 0] <= w) & (xy[..., 1] >= 0) & (xy[..., 1] <= h)
  u, v = jnp.clip(u, 0.0, w - 1.0), jnp.clip(v, 0.0, h - 1.0)
  x0, y0 = jnp.floor(u).astype(jnp.int32), jnp.floor(v).astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
  fx, fy = (u - x0)[..., None], (v - y0)[..., None]
  top = image[y0, x0] * (1.0 - fx) + image[y0, x1] * fx
  bottom = image[y1, x0] * (1.0 - fx) + image[y1, x1] * fx
  return jnp.where(inside[..., None], top * (1.0 - fy) + bottom * fy, 0.0)


def crop_heatmaps(heatmaps, boxes, stride=HEATMAP_STRIDE):
  """Crop-and-resize of heatmaps to the PRN grid (vmap over the batch).

  Args:
    heatmaps: [h, w, K] float32 at `stride` (input pixels per cell, a float or an (x, y) pair).
    boxes: [N, 4] float32 already widened boxes, input pixels.
  Returns:
    [N, 56, 36, K] float32: the heatmaps sampled bilinearly at `prn_grid.cell_centers`.
  """
  centers = prn_grid.cell_centers(boxes, xp=jnp)  # [N, 56, 36, 2] input pixels
  return bilinear_sample(heatmaps, centers / jnp.asarray(stride, jnp.float32))


def rasterize_peaks(cand_xy, cand_valid, boxes, sigma):
  """PRN inputs from detected peaks, the way PRN training samples are drawn (vmap over the batch).

  Every valid peak inside a widened box is drawn as a Gaussian of `sigma` grid cells with
  `prn_grid.axis_profiles` (maximum over peaks, as `prn_grid.rasterize`), like `prn_samples.render_inputs` draws the labelled
  keypoints of all people around a box.

  Args:
    cand_xy: [K, C, 2] float32 peak positions, input pixels; cand_valid: [K, C] bool.
    boxes: [N, 4] float32 widened boxes, input pixels.
    sigma: Gaussian sigma in grid cells.
  Returns:
    [N, 56, 36, K] float32.
  """
  grid = prn_grid.points_to_grid(cand_xy[None], boxes[:, None, None, :], xp=jnp)  # [N, K, C, 2]
  valid = cand_valid[None] & prn_grid.inside_grid(grid, xp=jnp)  # [N, K, C]
  gx, gy = prn_grid.axis_profiles(grid, sigma, xp=jnp)  # [N, K, C, W], [N, K, C, H]
  gy = gy * valid[..., None].astype(jnp.float32)
  # The max over candidates of the outer products is one fused reduction.
  out = jnp.max(gy[..., :, None] * gx[..., None, :], axis=2)  # [N, K, H, W]
  return jnp.transpose(out, (0, 2, 3, 1))


# ------------------------------------------------------------------------------------------------
# Test-time augmentation: network outputs -> merged heatmaps and box candidates.

def flip_heatmaps(heatmaps):
  """Mirrors [B, h, w, C] keypoint maps (17 keypoints first, extra channels such as the person mask
  after) and swaps left/right keypoint channels. Exact for inputs whose width is a multiple of the
  stride, where cell j maps to cell w - 1 - j."""
  c = heatmaps.shape[-1]
  perm = np.concatenate([coco.FLIP_PERM, np.arange(coco.NUM_KEYPOINTS, c)])
  return heatmaps[:, :, ::-1, :][..., perm]


def _scaled_size(n, scale):
  # Extra scales are rounded to a multiple of 32 (the P5 stride): the FPN's feature maps then nest
  # exactly and flipping stays exact; boxes are mapped back with the actual factor.
  if scale == 1.0:
    return n
  return max(_SCALE_MULTIPLE, int(round(n * scale / _SCALE_MULTIPLE)) * _SCALE_MULTIPLE)


def merge_grid(image_size, config):
  """Shape and stride of the grid on which `merge_outputs` averages the TTA heatmaps.

  The grid of the largest of `config.scales` (the base stride-4 grid when none exceeds 1): a 1.25x
  input's heatmaps have 1.25x finer cells, and resizing them down to the base grid would throw that
  resolution away.

  Args:
    image_size: static (H, W) of the base network input.
    config: `inference_config()`.
  Returns:
    ((h, w) cells, (stride_x, stride_y) base input pixels per cell), Python ints and floats.
  """
  h, w = image_size
  s = max(1.0, max(config.scales))
  sh, sw = _scaled_size(h, s), _scaled_size(w, s)
  cells = (-(-sh // HEATMAP_STRIDE), -(-sw // HEATMAP_STRIDE))
  return cells, (HEATMAP_STRIDE * w / sw, HEATMAP_STRIDE * h / sh)  # (4.0, 4.0) at scale 1


def merge_outputs(apply_fn, images, config):
  """Runs the network on every TTA variant and merges the outputs.

  Variants: each scale in `config.scales` (the image resized bilinearly, sides rounded to a multiple
  of 32 unless the scale is 1), each also mirrored when `config.flip`. Heatmaps of a mirrored run are
  mirrored back with the left/right channels swapped; all are resized bilinearly to `merge_grid`
  (that of the largest scale) and averaged. Box candidates are mirrored / rescaled back to the base
  input and concatenated, so NMS (in `select_people`) merges the variants' detections.

  Args:
    apply_fn: images [B, H', W', 3] -> MultiPoseNet output dict ('keypoints', 'cls_logits',
      'box_deltas').
    images: [B, H, W, 3] float32 letterboxed, normalised.
    config: `inference_config()`.
  Returns:
    heatmaps [B, h, w, C] float32 (mean over variants) on `merge_grid((H, W), config)`
    ([B, ceil(H/4), ceil(W/4), C] at scale <= 1), box candidates [B, V*P, 4] float32 in base input
    pixels and their scores [B, V*P].
  """
  b, h, w, _ = images.shape
  if config.flip and w % HEATMAP_STRIDE:
    raise errors.ConfigError(f"inference.flip needs an input width that is a multiple of {HEATMAP_STRIDE} "
                             f"(got {w}): set input.size accordingly or turn flip off")
  grid, _ = merge_grid((h, w), config)
  heat, cand_boxes, cand_scores = [], [], []
  for s in config.scales:
    sh, sw = _scaled_size(h, s), _scaled_size(w, s)
    scaled = images if (sh, sw) == (h, w) else jax.image.resize(images, (b, sh, sw, 3), "bilinear")
    for flip in ((False, True) if config.flip else (False,)):
      out = apply_fn(scaled[:, :, ::-1] if flip else scaled)
      hm = out["keypoints"].astype(jnp.float32)
      if flip:
        hm = flip_heatmaps(hm)
      if hm.shape[1:3] != grid:
        hm = jax.image.resize(hm, (b,) + grid + (hm.shape[-1],), "bilinear")
      heat.append(hm)
      anchors = box_lib.generate_anchors((sh, sw))
      bx, sc = box_candidates(out["cls_logits"], out["box_deltas"], anchors, config.pre_nms_top_k)
      if flip:
        bx = box_lib.flip_horizontal(bx, float(sw))
      bx = bx * jnp.asarray([w / sw, h / sh, w / sw, h / sh], jnp.float32)
      cand_boxes.append(bx)
      cand_scores.append(sc)
  return (sum(heat) / len(heat), jnp.concatenate(cand_boxes, 1), jnp.concatenate(cand_scores, 1))


# ------------------------------------------------------------------------------------------------
# The pipeline.

def predict_people(heatmaps, cand_boxes, cand_scores, scales, prn_apply, config, image_size,
                   stride=HEATMAP_STRIDE):
  """Merged network outputs -> people, in original image pixels.

  Args:
    heatmaps: [B, h, w, >=17] float32 keypoint maps (first 17 channels used).
    cand_boxes: [B, P, 4] float32 box candidates, input pixels; cand_scores: [B, P] float32.
    scales: [B] float32 letterbox scales (input = original * scale).
    prn_apply: [M, 56, 36, 17] PRN inputs -> [M, 56, 36, 17] PRN probabilities.
    config: `inference_config()`.
    image_size: static (H, W) of the network input.
    stride: input pixels per heatmap cell, a float or (x, y) pair (`merge_grid`'s for TTA outputs).
  Returns:
    dict of 'keypoints' [B, N, 17, 3] (x, y, score) original pixels, 'scores' [B, N] person scores,
    'boxes' [B, N, 4] original pixels, 'box_scores' [B, N], 'valid' [B, N] bool; invalid slots zero.
  """
  _check_config(config)
  k = coco.NUM_KEYPOINTS
  hm = heatmaps[..., :k].astype(jnp.float32)
  b = hm.shape[0]
  cand_xy, cand_sc, cand_ok = find_peaks(hm, config.heatmap_threshold, config.peaks_per_keypoint,
                                         stride, config.peak_refine)
  people, box_scores, box_ok = select_people(cand_boxes, cand_scores, config.score_threshold,
                                             config.iou_threshold, config.max_people, image_size)
  n = people.shape[1]
  wide = prn_grid.widen_boxes(people, config.box_widen, xp=jnp)  # [B, N, 4]

  if config.prn_input == "peaks":
    inputs = jax.vmap(rasterize_peaks, in_axes=(0, 0, 0, None))(cand_xy, cand_ok, wide,
                                                                config.prn_sigma)
  else:
    # Raw heatmap outputs are clipped to [0, 1], the range of the PRN's training inputs.
    inputs = jnp.clip(jax.vmap(crop_heatmaps, in_axes=(0, 0, None))(hm, wide, stride),
                      0.0, 1.0)
  probs = prn_apply(inputs.reshape((b * n,) + inputs.shape[2:])).reshape(inputs.shape)

  def assign_one(probs, cand_xy, cand_sc, cand_ok, wide, box_ok, box_scores):
    if config.get("candidate_scores", "prn") == "center":
      s = assignment.center_scores(cand_xy, cand_ok, wide)
    else:
      s = assignment.candidate_scores(probs, cand_xy, cand_ok, wide, config.assign_window)
    power = float(config.get("peak_score_power", 0.0))
    if power:  # 'peaks' PRN inputs draw every peak alike: the heatmap's confidence breaks ties
      s = s * jnp.power(jnp.clip(cand_sc, 1e-6, 1.0), power)[None]
    idx, a_score = assignment.assign(s, cand_ok, box_ok, config.assign_method)
    kps = assignment.gather_keypoints(cand_xy, cand_sc, idx)  # [N, K, 3]
    person_score = assignment.instance_scores(kps[..., 2], a_score, box_scores,
                                              config.instance_score)
    return kps, idx >= 0, person_score

  args = (probs, cand_xy, cand_sc, cand_ok, wide, box_ok, box_scores)
  if config.assign_method in ("hungarian", "hungarian_log"):  # host callback: image by image
    kps, assigned, person_scores = jax.lax.map(lambda a: assign_one(*a), args)
  else:
    kps, assigned, person_scores = jax.vmap(assign_one)(*args)
  centers = 0.5 * (people[..., :2] + people[..., 2:])  # [B, N, 2]
  xy = jnp.where(assigned[..., None], kps[..., :2], centers[:, :, None, :])
  kp_scores = jnp.where(assigned, kps[..., 2], 0.0)

  inv = 1.0 / jnp.asarray(scales, jnp.float32)[:, None, None]  # [B, 1, 1]
  keypoints = jnp.concatenate([xy * inv[..., None], kp_scores[..., None]], -1)
  return {
      "keypoints": jnp.where(box_ok[..., None, None], keypoints, 0.0),
      "scores": jnp.where(box_ok, person_scores, 0.0),
      "boxes": people * inv,
      "box_scores": box_scores,
      "valid": box_ok,
  }


def predict_from_outputs(outputs, scales, prn_apply, config):
  """`predict_people` for one set of network outputs (no TTA); for tests and precomputed outputs.

  outputs: dict with 'keypoints' [B, H/4, W/4, >=17], 'cls_logits' [B, A, 1], 'box_deltas' [B, A, 4]
  of an H x W input (H, W = 4 x the heatmap size).
  """
  hm = outputs["keypoints"]
  image_size = (hm.shape[1] * HEATMAP_STRIDE, hm.shape[2] * HEATMAP_STRIDE)
  anchors = box_lib.generate_anchors(image_size)
  cand_boxes, cand_scores = box_candidates(outputs["cls_logits"], outputs["box_deltas"], anchors,
                                           config.pre_nms_top_k)
  return predict_people(hm, cand_boxes, cand_scores, scales, prn_apply, config, image_size)


def make_predict_fn(model, prn_model, config):
  """The jitted image-to-people function.

  Args:
    model: a MultiPoseNet (flax Linen); prn_model: a PoseResidualNet.
    config: `inference_config()` (read at trace time: its values are static).
  Returns:
    predict(variables, prn_variables, images [B, S, S, 3], scales [B]) -> `predict_people` dict.
    variables / prn_variables are flax variable dicts ({'params': ..., 'batch_stats': ...}).
  """
  _check_config(config)
  from mpn_jax import models  # pylint: disable=g-import-not-at-top  (models import heavy deps)

  @jax.jit
  def predict(variables, prn_variables, images, scales):
    apply_fn = lambda x: model.apply(variables, x, train=False)
    prn_apply = lambda x: models.prn_probabilities(prn_model.apply(prn_variables, x, train=False))
    heat, cand_boxes, cand_scores = merge_outputs(apply_fn, images, config)
    _, stride = merge_grid(images.shape[1:3], config)
    return predict_people(heat, cand_boxes, cand_scores, scales, prn_apply, config,
                          images.shape[1:3], stride)

  return predict


# ------------------------------------------------------------------------------------------------
# COCO results (host side).

def results_to_coco(image_ids, keypoints, scores, valid, visibility="score"):
  """Keypoint results in COCO format.

  Args:
    image_ids: [B] ints; keypoints: [B, N, 17, 3] (x, y, score) original pixels; scores: [B, N];
      valid: [B, N] bool. Numpy or jax arrays.
    visibility: 'score' writes each keypoint's score as v, 'one' writes 1 (COCOeval ignores v of
      detections; the choice only matters for other consumers).
  Returns:
    list of {'image_id', 'category_id': 1, 'keypoints': [51] floats, 'score'} for valid people.
  """
  if visibility not in ("score", "one"):
    raise errors.ConfigError(f"keypoint visibility {visibility!r}: use 'score' or 'one' "
                             "(config field inference.keypoint_visibility)")
  image_ids = np.asarray(image_ids)
  keypoints = np.asarray(keypoints, np.float64).copy()
  scores, valid = np.asarray(scores, np.float64), np.asarray(valid, bool)
  if visibility == "one":
    keypoints[..., 2] = 1.0
  out = []
  for b, n in zip(*np.nonzero(valid)):
    out.append({"image_id": int(image_ids[b]), "category_id": coco.PERSON_CATEGORY_ID,
                "keypoints": [float(v) for v in keypoints[b, n].reshape(-1)],
                "score": float(scores[b, n])})
  return out


def boxes_to_coco(image_ids, boxes, scores, valid):
  """Person detections in COCO 'bbox' format: boxes [B, N, 4] xyxy original pixels -> list of
  {'image_id', 'category_id': 1, 'bbox': [x, y, w, h], 'score'} for valid boxes."""
  image_ids = np.asarray(image_ids)
  boxes = np.asarray(boxes, np.float64)
  scores, valid = np.asarray(scores, np.float64), np.asarray(valid, bool)
  out = []
  for b, n in zip(*np.nonzero(valid)):
    x1, y1, x2, y2 = boxes[b, n]
    out.append({"image_id": int(image_ids[b]), "category_id": coco.PERSON_CATEGORY_ID,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(scores[b, n])})
  return out
