"""Post-processing of network outputs, jnp with fixed shapes, batched and jittable.

  * `find_peaks`: keypoint heatmaps [B, h, w, K] -> up to C local maxima per type, sub-pixel refined;
  * `box_candidates`, `select_people`, `detect_people`: RetinaNet outputs -> person boxes (top-k
    anchors, decode, clip, NMS);
  * PRN inputs per widened box on the 56x36 grid: `rasterize_peaks` (the detected peaks drawn like
    the PRN's training samples) or `crop_heatmaps` (the heatmaps sampled bilinearly).
No Python loop runs over boxes, peaks or keypoints.
"""

import functools

import jax
import jax.numpy as jnp

from mpn_jax import boxes as box_lib
from mpn_jax import prn_grid
from mpn_jax.data import preprocess
REFINE_MODES = ("quadratic", "quarter", "none")


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


def find_peaks(heatmaps, threshold, top_k, stride=preprocess.HEATMAP_STRIDE, refine="quadratic"):
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


def crop_heatmaps(heatmaps, boxes, stride=preprocess.HEATMAP_STRIDE):
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
