"""Test-time augmentation: the network on flipped / rescaled inputs, outputs merged.

Keypoint heatmaps of every variant are brought to the grid of the largest scale (flip back with a
left/right channel swap, bilinear resize) and averaged, so that a larger scale's finer cells are
kept; box candidates of all variants are mapped back to the base input and concatenated (NMS in
`postprocess.select_people` then merges them).
"""

import jax
import jax.numpy as jnp
import numpy as np

from mpn_jax import boxes as box_lib
from mpn_jax import coco
from mpn_jax import errors
from mpn_jax.data import preprocess
from mpn_jax.inference import postprocess
_SCALE_MULTIPLE = 32


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
    config: `defaults.inference_config()`.
  Returns:
    ((h, w) cells, (stride_x, stride_y) base input pixels per cell), Python ints and floats.
  """
  h, w = image_size
  s = max(1.0, max(config.scales))
  sh, sw = _scaled_size(h, s), _scaled_size(w, s)
  cells = (-(-sh // preprocess.HEATMAP_STRIDE), -(-sw // preprocess.HEATMAP_STRIDE))
  return cells, (preprocess.HEATMAP_STRIDE * w / sw, preprocess.HEATMAP_STRIDE * h / sh)  # (4.0, 4.0) at scale 1


def _variants(config):
  """(scale, mirrored) of every TTA variant, in the order of `variant_inputs`' outputs."""
  return [(s, flip) for s in config.scales
          for flip in ((False, True) if config.flip else (False,))]


def variant_inputs(images, config):
  """The network inputs of every TTA variant, in `merge_variant_outputs`' order.

  Variants: each scale in `config.scales` (the image resized bilinearly, sides rounded to a multiple
  of 32 unless the scale is 1), each also mirrored when `config.flip`.

  Args:
    images: [B, H, W, 3] float32 letterboxed, normalised.
    config: `defaults.inference_config()`.
  Returns:
    list of [B, H', W', 3] float32 arrays (one per variant).
  """
  b, h, w, _ = images.shape
  if config.flip and w % preprocess.HEATMAP_STRIDE:
    raise errors.ConfigError(f"inference.flip needs an input width that is a multiple of {preprocess.HEATMAP_STRIDE} "
                             f"(got {w}): set input.size accordingly or turn flip off")
  out, scaled = [], {}
  for s, flip in _variants(config):
    if s not in scaled:  # one resize per scale, shared by its plain and mirrored variants
      sh, sw = _scaled_size(h, s), _scaled_size(w, s)
      scaled[s] = (images if (sh, sw) == (h, w)
                   else jax.image.resize(images, (b, sh, sw, 3), "bilinear"))
    out.append(scaled[s][:, :, ::-1] if flip else scaled[s])
  return out


def merge_variant_outputs(outputs, image_size, config):
  """Merges the network outputs of the `variant_inputs` (same order).

  Heatmaps of a mirrored run are mirrored back with the left/right channels swapped; all are
  resized bilinearly to `merge_grid` (that of the largest scale) and averaged. Box candidates are
  mirrored / rescaled back to the base input and concatenated, so NMS (in `select_people`) merges
  the variants' detections.

  Args:
    outputs: list of MultiPoseNet output dicts ('keypoints' [B, H'/4, W'/4, C], 'cls_logits'
      [B, A', 1], 'box_deltas' [B, A', 4]), one per variant.
    image_size: static (H, W) of the base network input.
    config: `defaults.inference_config()`.
  Returns:
    heatmaps [B, h, w, C] float32 (mean over variants) on `merge_grid((H, W), config)`
    ([B, ceil(H/4), ceil(W/4), C] at scale <= 1), box candidates [B, V*P, 4] float32 in base input
    pixels and their scores [B, V*P].
  """
  h, w = image_size
  grid, _ = merge_grid((h, w), config)
  variants = _variants(config)
  if len(outputs) != len(variants):
    raise ValueError(f"{len(outputs)} outputs for {len(variants)} TTA variants")
  heat, cand_boxes, cand_scores = [], [], []
  for (s, flip), out in zip(variants, outputs):
    sh, sw = _scaled_size(h, s), _scaled_size(w, s)
    hm = jnp.asarray(out["keypoints"]).astype(jnp.float32)
    b = hm.shape[0]
    if flip:
      hm = flip_heatmaps(hm)
    if hm.shape[1:3] != grid:
      hm = jax.image.resize(hm, (b,) + grid + (hm.shape[-1],), "bilinear")
    heat.append(hm)
    anchors = box_lib.generate_anchors((sh, sw))
    bx, sc = postprocess.box_candidates(out["cls_logits"], out["box_deltas"], anchors, config.pre_nms_top_k)
    if flip:
      bx = box_lib.flip_horizontal(bx, float(sw))
    bx = bx * jnp.asarray([w / sw, h / sh, w / sw, h / sh], jnp.float32)
    cand_boxes.append(bx)
    cand_scores.append(sc)
  return (sum(heat) / len(heat), jnp.concatenate(cand_boxes, 1), jnp.concatenate(cand_scores, 1))


def merge_outputs(apply_fn, images, config):
  """Runs the network on every TTA variant (`variant_inputs`) and merges the outputs
  (`merge_variant_outputs`).

  Args:
    apply_fn: images [B, H', W', 3] -> MultiPoseNet output dict ('keypoints', 'cls_logits',
      'box_deltas').
    images: [B, H, W, 3] float32 letterboxed, normalised.
    config: `defaults.inference_config()`.
  Returns:
    `merge_variant_outputs`' (heatmaps, box candidates, candidate scores).
  """
  outputs = [apply_fn(x) for x in variant_inputs(images, config)]
  return merge_variant_outputs(outputs, images.shape[1:3], config)
