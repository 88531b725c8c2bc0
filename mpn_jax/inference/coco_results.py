"""COCO keypoint and box results as plain dicts: the one place they are built.

Here, in the inference layer, so that `predict.py`'s predictions.json (mpn_jax.inference.images)
and the evaluation (`mpn_jax.evaluation.coco_io`, which re-exports both functions) write the same
records.
"""

import numpy as np

from mpn_jax import coco as coco_lib
from mpn_jax import errors


def _per_person_ids(image_ids, n):
  ids = np.asarray(image_ids).reshape(-1)
  return np.full(n, int(ids[0]) if n else 0, np.int64) if ids.size == 1 else ids


def _xywh(box):
  """xyxy -> COCO [x, y, w, h] floats, computed in float64."""
  x1, y1, x2, y2 = (float(v) for v in box)
  return [x1, y1, x2 - x1, y2 - y1]


def _rounded(values, decimals):
  return [float(v) if decimals is None else round(float(v), decimals) for v in values]


def keypoint_results(image_ids, keypoints, scores, boxes=None, visibility="score", decimals=None):
  """People as COCO keypoint results: the one place they are encoded.

  Args:
    image_ids: the COCO image id of every person ([N] ints), or one id for all of them.
    keypoints: [N, 17, 3] float (x, y, keypoint score) in ORIGINAL image pixels.
    scores: [N] float person scores (COCOeval ranks detections by them).
    boxes: optional [N, 4] xyxy original pixels, stored as COCO 'bbox' [x, y, w, h] (COCOeval
      recomputes the keypoint box itself; the field helps people reading the file).
    visibility: 'score' writes each keypoint's score as v, 'one' writes 1 (COCOeval ignores v of
      detections; the choice only matters for other consumers).
    decimals: round coordinates to this many decimals (None: as they are).
  Returns:
    list of N dicts {image_id, category_id, keypoints: [51 floats], score[, bbox]}.
  """
  if visibility not in ("score", "one"):
    raise errors.ConfigError(f"keypoint visibility {visibility!r}: use 'score' or 'one' "
                             "(config field inference.keypoint_visibility)")
  keypoints = np.asarray(keypoints, np.float64).reshape(-1, coco_lib.NUM_KEYPOINTS, 3).copy()
  scores = np.asarray(scores, np.float64).reshape(-1)
  if len(scores) != len(keypoints):
    raise ValueError(f"keypoint_results: {len(keypoints)} people but {len(scores)} scores")
  if visibility == "one":
    keypoints[..., 2] = 1.0
  ids = _per_person_ids(image_ids, len(keypoints))
  out = []
  for i in range(len(keypoints)):
    r = {"image_id": int(ids[i]), "category_id": coco_lib.PERSON_CATEGORY_ID,
         "keypoints": _rounded(keypoints[i].reshape(-1), decimals), "score": float(scores[i])}
    if boxes is not None:
      r["bbox"] = _rounded(_xywh(boxes[i]), decimals)
    out.append(r)
  return out


def box_results(image_ids, boxes, scores, decimals=None):
  """Person boxes [N, 4] xyxy (original pixels) with scores [N] as COCO 'bbox' results
  {image_id, category_id, bbox: [x, y, w, h], score}; image_ids: [N] ints or one id for all."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  ids = _per_person_ids(image_ids, len(boxes))
  return [{"image_id": int(ids[i]), "category_id": coco_lib.PERSON_CATEGORY_ID,
           "bbox": _rounded(_xywh(boxes[i]), decimals), "score": float(scores[i])}
          for i in range(len(boxes))]
