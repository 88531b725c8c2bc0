"""The whole inference pipeline on device: network (with TTA) -> peaks, people, PRN, assignment.

Everything from network outputs to per-person keypoints is jnp with fixed shapes, batched and
jittable; no Python loop runs over boxes, peaks or keypoints (the only Python loop is over the
test-time-augmentation variants, which are static).

Pipeline for a batch of letterboxed images [B, S, S, 3]:
  1. the MultiPoseNet runs once per TTA variant (`tta.merge_outputs`: optional horizontal flip,
     optional extra scales), heatmaps averaged, box candidates merged;
  2. `postprocess.find_peaks`: per keypoint type up to `peaks_per_keypoint` local maxima (3x3)
     above `heatmap_threshold`, with sub-pixel refinement;
  3. detections: score threshold, clip to the input, greedy NMS, up to `max_people` boxes;
  4. PRN input per box widened by the PRN's data.widen: either the detected peaks rasterised on
     the 56x36 grid exactly like the PRN's training samples ('peaks', `postprocess.rasterize_peaks`,
     sigma data.input_sigma) or
     the heatmaps sampled bilinearly at the grid cell centres ('heatmaps',
     `postprocess.crop_heatmaps`);
  5. `assignment` scores every peak for every box from the PRN probabilities and assigns;
  6. keypoints [B, N, 17, 3] (x, y, score) and boxes in ORIGINAL image pixels (input / scale).
     Unassigned keypoints sit at their box's centre with score 0, so every person is a valid COCO
     result. Person score: `assignment.instance_scores(mode=instance_score)` (default 'box': box
     score x mean over the 17 types of the assigned peak scores, unassigned counting 0).
"""

import jax
import jax.numpy as jnp

from mpn_jax import boxes as box_lib
from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import models
from mpn_jax import prn_grid
from mpn_jax.configs import defaults
from mpn_jax.data import preprocess
from mpn_jax.inference import assignment
from mpn_jax.inference import postprocess
from mpn_jax.inference import tta

PRN_INPUTS = ("peaks", "heatmaps")


def _check_config(config):
  if config.prn_input not in PRN_INPUTS:
    raise errors.ConfigError(f"inference.prn_input={config.prn_input!r}: use one of {PRN_INPUTS}")
  if config.peak_refine not in postprocess.REFINE_MODES:
    raise errors.ConfigError(f"inference.peak_refine={config.peak_refine!r}: use one of "
                             f"{postprocess.REFINE_MODES}")
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


# The PRN input drawing of make_predict_fn & co. when no PRN config gives it: the defaults of a PRN
# run's data.input_sigma and data.widen.
DEFAULT_INPUT_SIGMA = defaults.prn_data_config().input_sigma
DEFAULT_WIDEN = defaults.prn_data_config().widen


def prn_stage_inputs(heatmaps, cand_boxes, cand_scores, config, image_size,
                     stride=preprocess.HEATMAP_STRIDE, *, input_sigma=DEFAULT_INPUT_SIGMA,
                     widen=DEFAULT_WIDEN, boxes=None, box_valid=None):
  """Steps 2-4 of the pipeline: peaks, detections and the PRN inputs of every detected person.

  Args: as `predict_people` (without scales and prn_apply).
  Returns:
    (inputs [B, N, 56, 36, 17] float32 PRN inputs, state): `state` is the dict `finish_people`
    takes with the PRN probabilities of those inputs.
  """
  _check_config(config)
  k = coco.NUM_KEYPOINTS
  hm = heatmaps[..., :k].astype(jnp.float32)
  cand_xy, cand_sc, cand_ok = postprocess.find_peaks(
      hm, config.heatmap_threshold, config.peaks_per_keypoint, stride, config.peak_refine)
  if boxes is None:
    people, box_scores, box_ok = postprocess.select_people(
        cand_boxes, cand_scores, config.score_threshold, config.iou_threshold, config.max_people,
        image_size)
  else:  # given people (e.g. the annotated ones): every given box scores 1
    box_ok = jnp.asarray(box_valid, bool)
    people = jnp.where(box_ok[..., None], jnp.asarray(boxes, jnp.float32), 0.0)
    box_scores = box_ok.astype(jnp.float32)
  wide = prn_grid.widen_boxes(people, widen, xp=jnp)  # [B, N, 4]

  if config.prn_input == "peaks":
    inputs = jax.vmap(postprocess.rasterize_peaks, in_axes=(0, 0, 0, None))(
        cand_xy, cand_ok, wide, input_sigma)
  else:
    # Raw heatmap outputs are clipped to [0, 1], the range of the PRN's training inputs.
    inputs = jnp.clip(
        jax.vmap(postprocess.crop_heatmaps, in_axes=(0, 0, None))(hm, wide, stride), 0.0, 1.0)
  state = {"cand_xy": cand_xy, "cand_sc": cand_sc, "cand_ok": cand_ok, "people": people,
           "wide": wide, "box_ok": box_ok, "box_scores": box_scores}
  return inputs, state


def finish_people(probs, state, scales, config):
  """Steps 5-6 of the pipeline: assignment from the PRN probabilities, outputs in original pixels.

  Args:
    probs: [B, N, 56, 36, 17] float32 PRN probabilities of `prn_stage_inputs`' inputs.
    state: `prn_stage_inputs`' state.
    scales: [B] float32 letterbox scales.
    config: `defaults.inference_config()`.
  Returns: the `predict_people` dict.
  """

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
    shares = (assignment.assignment_shares(s, idx, box_ok)
              if config.instance_score == "decisive" else None)
    person_score = assignment.instance_scores(kps[..., 2], a_score, box_scores,
                                              config.instance_score, shares=shares)
    return kps, idx >= 0, person_score

  people, box_ok = state["people"], state["box_ok"]
  args = (probs, state["cand_xy"], state["cand_sc"], state["cand_ok"], state["wide"], box_ok,
          state["box_scores"])
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
      "box_scores": state["box_scores"],
      "valid": box_ok,
  }


def predict_people(heatmaps, cand_boxes, cand_scores, scales, prn_apply, config, image_size,
                   stride=preprocess.HEATMAP_STRIDE, *, input_sigma=DEFAULT_INPUT_SIGMA,
                   widen=DEFAULT_WIDEN, boxes=None, box_valid=None):
  """Merged network outputs -> people, in original image pixels (`prn_stage_inputs`, the PRN,
  `finish_people`).

  Args:
    heatmaps: [B, h, w, >=17] float32 keypoint maps (first 17 channels used).
    cand_boxes: [B, P, 4] float32 box candidates, input pixels; cand_scores: [B, P] float32.
    scales: [B] float32 letterbox scales (input = original * scale).
    prn_apply: [M, 56, 36, 17] PRN inputs -> [M, 56, 36, 17] PRN probabilities.
    config: `defaults.inference_config()`.
    image_size: static (H, W) of the network input.
    stride: input pixels per heatmap cell, a float or (x, y) pair (`tta.merge_grid`'s for TTA
      outputs).
    input_sigma, widen: the PRN's input drawing, as it was trained: its config's data.input_sigma
      (Gaussian sigma of 'peaks' inputs, grid cells) and data.widen (box widening on each side).
    boxes, box_valid: optional [B, N, 4] float32 people boxes (xyxy input pixels) and [B, N] bool
      to use instead of the detector's (each scores 1): the pipeline with known people, e.g. the
      annotated ones (`evaluate.py --config.eval.boxes=ground_truth`).
  Returns:
    dict of 'keypoints' [B, N, 17, 3] (x, y, score) original pixels, 'scores' [B, N] person scores,
    'boxes' [B, N, 4] original pixels, 'box_scores' [B, N], 'valid' [B, N] bool; invalid slots zero.
  """
  inputs, state = prn_stage_inputs(heatmaps, cand_boxes, cand_scores, config, image_size, stride,
                                   input_sigma=input_sigma, widen=widen, boxes=boxes,
                                   box_valid=box_valid)
  b, n = inputs.shape[:2]
  probs = prn_apply(inputs.reshape((b * n,) + inputs.shape[2:])).reshape(inputs.shape)
  return finish_people(probs, state, scales, config)


def predict_from_outputs(outputs, scales, prn_apply, config, *, input_sigma=DEFAULT_INPUT_SIGMA,
                         widen=DEFAULT_WIDEN, boxes=None, box_valid=None):
  """`predict_people` for one set of network outputs (no TTA); for tests and precomputed outputs.

  outputs: dict with 'keypoints' [B, H/4, W/4, >=17], 'cls_logits' [B, A, 1], 'box_deltas' [B, A, 4]
  of an H x W input (H, W = 4 x the heatmap size).
  """
  hm = outputs["keypoints"]
  stride = preprocess.HEATMAP_STRIDE
  image_size = (hm.shape[1] * stride, hm.shape[2] * stride)
  anchors = box_lib.generate_anchors(image_size)
  cand_boxes, cand_scores = postprocess.box_candidates(
      outputs["cls_logits"], outputs["box_deltas"], anchors, config.pre_nms_top_k)
  return predict_people(hm, cand_boxes, cand_scores, scales, prn_apply, config, image_size,
                        input_sigma=input_sigma, widen=widen, boxes=boxes, box_valid=box_valid)


def make_predict_fn(model, prn_model, config, *, input_sigma=DEFAULT_INPUT_SIGMA,
                    widen=DEFAULT_WIDEN):
  """The jitted image-to-people function.

  Args:
    model: a MultiPoseNet (flax Linen); prn_model: a PoseResidualNet.
    config: `defaults.inference_config()` (read at trace time: its values are static).
    input_sigma, widen: the PRN config's data.input_sigma and data.widen (`predict_people`;
      `predictor.prn_input` reads them from a PRN run's config).
  Returns:
    predict(variables, prn_variables, images [B, S, S, 3], scales [B], boxes=None,
    box_valid=None) -> `predict_people` dict. variables / prn_variables are flax variable dicts
    ({'params': ..., 'batch_stats': ...}); boxes / box_valid: `predict_people`'s.
  """
  _check_config(config)

  @jax.jit
  def predict(variables, prn_variables, images, scales, boxes=None, box_valid=None):
    apply_fn = lambda x: model.apply(variables, x, train=False)
    prn_apply = lambda x: models.prn_probabilities(prn_model.apply(prn_variables, x, train=False))
    heat, cand_boxes, cand_scores = tta.merge_outputs(apply_fn, images, config)
    _, stride = tta.merge_grid(images.shape[1:3], config)
    return predict_people(heat, cand_boxes, cand_scores, scales, prn_apply, config,
                          images.shape[1:3], stride, input_sigma=input_sigma, widen=widen,
                          boxes=boxes, box_valid=box_valid)

  return predict


def make_detect_fn(model, config):
  """The jitted detector alone: (variables, images [B, S, S, 3]) -> dict of 'boxes' [B, N, 4]
  (input pixels), 'box_scores' [B, N], 'valid' [B, N] bool, and the keypoint peaks 'peak_xy'
  [B, 17, C, 2] (input pixels), 'peak_scores' [B, 17, C], 'peak_valid' [B, 17, C] bool."""
  _check_config(config)
  k = coco.NUM_KEYPOINTS

  @jax.jit
  def detect(variables, images):
    apply_fn = lambda x: model.apply(variables, x, train=False)
    heat, cand_boxes, cand_scores = tta.merge_outputs(apply_fn, images, config)
    _, stride = tta.merge_grid(images.shape[1:3], config)
    boxes, scores, valid = postprocess.select_people(
        cand_boxes, cand_scores, config.score_threshold, config.iou_threshold, config.max_people,
        images.shape[1:3])
    xy, peak_scores, peak_valid = postprocess.find_peaks(
        heat[..., :k], config.heatmap_threshold, config.peaks_per_keypoint, stride,
        config.peak_refine)
    return {"boxes": boxes, "box_scores": scores, "valid": valid, "peak_xy": xy,
            "peak_scores": peak_scores, "peak_valid": peak_valid}
  return detect
