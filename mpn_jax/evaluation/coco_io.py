"""COCO files: ground truth in, results out, pycocotools COCOeval, statistics tables and JSON.

COCO result dicts are built in `mpn_jax.inference.coco_results` only (`keypoint_results`,
`box_results`, re-exported here, so that predict.py writes the same records). The statistics are
always reported under STAT_NAMES / BBOX_STAT_NAMES, in COCOeval's order.
"""

import contextlib
import copy
import io
import json
import os

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mpn_jax import coco as coco_lib
from mpn_jax import errors
from mpn_jax import files
from mpn_jax.data import annotations
from mpn_jax.inference.coco_results import box_results, keypoint_results  # noqa: F401  (re-exported)

STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
# COCOeval('bbox') has 12 statistics (small objects too); keypoints has the 10 above.
BBOX_STAT_NAMES = ("AP", "AP50", "AP75", "APS", "APM", "APL",
                   "AR1", "AR10", "AR", "ARS", "ARM", "ARL")


def xyxy_to_xywh(boxes):
  """[..., 4] (x1, y1, x2, y2) -> COCO [..., 4] (x, y, w, h), float32 numpy."""
  b = np.asarray(boxes, np.float32)
  return np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def batch_rows(valid):
  """(b, n) index arrays of the valid slots of a [B, N] mask, in row-major order: the people of
  batched outputs, e.g. keypoint_results(image_ids[b], keypoints[b, n], scores[b, n])."""
  return np.nonzero(np.asarray(valid, bool))


def ground_truth_people(coco_gt, image_id):
  """One image's person annotations as arrays (`annotations.people_arrays`: 'boxes' [M, 4] xyxy,
  'keypoints' [M, 17, 3], 'iscrowd' [M], 'num_keypoints' [M], 'ann_ids' [M]; original pixels)."""
  anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[int(image_id)],
                                            catIds=[coco_lib.PERSON_CATEGORY_ID]))
  return annotations.people_arrays(anns)


def oracle_keypoints(cand_xy, cand_scores, cand_valid, gt_keypoints):
  """Assigns keypoint candidates to annotated people by looking at the answer (an upper bound).

  For each person and each labelled keypoint type, the candidate of that type nearest the annotated
  position is taken: what a perfect assignment (PRN) could do with these candidates. It measures
  peak finding and coordinate mapping on their own.

  Args:
    cand_xy: [K, C, 2] candidate positions (same pixels as gt_keypoints).
    cand_scores: [K, C] candidate scores.
    cand_valid: [K, C] bool.
    gt_keypoints: [P, K, 3] annotated (x, y, v), v > 0 labelled.
  Returns:
    ([P, K, 3] keypoints (x, y, candidate score; 0 where unlabelled or no candidate),
     [P] person scores: mean candidate score over the labelled types).
  """
  cand_xy = np.asarray(cand_xy, np.float32)
  cand_scores = np.asarray(cand_scores, np.float32)
  cand_valid = np.asarray(cand_valid, bool)
  gt = np.asarray(gt_keypoints, np.float32)
  d = np.linalg.norm(gt[:, :, None, :2] - cand_xy[None], axis=-1)  # [P, K, C]
  d = np.where(cand_valid[None], d, np.inf)
  best = np.argmin(d, axis=-1)  # [P, K]
  found = np.isfinite(np.take_along_axis(d, best[..., None], -1)[..., 0]) & (gt[..., 2] > 0)
  k_idx = np.arange(gt.shape[1])[None, :]
  xy = np.where(found[..., None], cand_xy[k_idx, best], 0.0)
  s = np.where(found, cand_scores[k_idx, best], 0.0)
  labelled = np.maximum((gt[..., 2] > 0).sum(-1), 1)
  return np.concatenate([xy, s[..., None]], -1), s.sum(-1) / labelled


def write_json(path, obj):
  """Writes obj as JSON at path, creating the folder; atomically (`files.replace_atomically`): a
  kill or a full disk never leaves a half-written file behind."""
  return files.replace_atomically(path, lambda f: json.dump(obj, f, indent=1), mode="t")


def check_writable_file(path, flag):
  """Raises errors.ConfigError naming `flag` when a file cannot be written at `path`, checked
  before a long evaluation rather than after it (nothing is created): a file stands where a folder
  of the path should be, a folder stands at `path`, or the nearest existing folder is not
  writable."""
  path = os.path.abspath(os.path.expanduser(path))
  problem = "Is a directory" if os.path.isdir(path) else ""
  parent = os.path.dirname(path)
  while not problem and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not problem and not os.path.isdir(parent):
    problem = f"{parent} is a file, not a folder"
  elif not problem and not os.access(parent, os.W_OK | os.X_OK):
    problem = f"{parent} is not writable"
  if problem:
    raise errors.ConfigError(f"{flag}={path} cannot be written ({problem}): choose a writable "
                             "path")


def load_coco(ann):
  """A pycocotools COCO from a path or an already-loaded dict, quietly; a clear error when the file
  is missing or is no annotation file COCO evaluation can use (`annotations.check_ground_truth`)."""
  if isinstance(ann, COCO):
    return ann
  if isinstance(ann, (str, os.PathLike)):
    if not os.path.isfile(ann):
      raise FileNotFoundError(
          f"COCO annotation file {ann!s} does not exist: pass an existing person_keypoints_*.json "
          "(e.g. --config.eval.ann_file=PATH).")
    ann = annotations.read_ground_truth(ann)
  else:
    annotations.check_ground_truth("the ground truth", ann)
  coco = COCO()
  coco.dataset = copy.deepcopy(ann)
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def check_evaluable(coco_gt, image_ids=None, iou_type="keypoints", name=""):
  """Raises errors.DataError when COCO statistics would be computed on nothing: no image evaluated,
  or no annotated (non-crowd) person in the evaluated images -- for 'keypoints', none with a
  labelled keypoint. COCOeval then reports zeros or -1 that look like a result."""
  name = f" {name}" if name else ""
  ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted({int(i) for i in image_ids})
  if not ids:
    raise errors.DataError(
        f"no image was evaluated against the ground truth{name}: the images are missing or "
        "unreadable, or the annotation file lists none. No statistics written; check "
        "--config.eval.image_dir / ann_file")
  anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids, catIds=[coco_lib.PERSON_CATEGORY_ID]))
  people = [a for a in anns if not a.get("iscrowd", 0) and (
      iou_type != "keypoints" or a.get("num_keypoints", 0) > 0)]
  if not people:
    what = "person with a labelled keypoint" if iou_type == "keypoints" else "annotated person"
    raise errors.DataError(
        f"the ground truth{name} has no {what} in the {len(ids)} evaluated image(s): AP would be "
        "computed on nothing. No statistics written; evaluate on a COCO person_keypoints file "
        "with annotated people")


def run_coco_eval(gt, results, iou_type="keypoints", image_ids=None, verbose=False):
  """Scores COCO-format results against ground truth with pycocotools.

  Args:
    gt: path to a COCO annotation file, its loaded dict, or a pycocotools COCO.
    results: list of result dicts (image_id, category_id, score and 'keypoints' [51] or 'bbox'
      [4] xywh), or a path to such a JSON file.
    iou_type: 'keypoints' or 'bbox'.
    image_ids: optional list of image ids to restrict the evaluation to.
    verbose: print COCOeval's own summary.
  Returns:
    dict name -> float for the named statistics (STAT_NAMES for keypoints, BBOX_STAT_NAMES for bbox).
    With no results at all every statistic is 0.0 (pycocotools cannot load an empty result list).
    A statistic is -1.0 where the ground truth has nobody in its area range (COCOeval's convention).
  Raises:
    errors.DataError when there is nothing to score (`check_evaluable`).
  """
  names = STAT_NAMES if iou_type == "keypoints" else BBOX_STAT_NAMES
  coco_gt = load_coco(gt)
  check_evaluable(coco_gt, image_ids, iou_type, gt if isinstance(gt, (str, os.PathLike)) else "")
  if isinstance(results, (str, os.PathLike)):
    with open(results) as f:
      results = json.load(f)
  if not results:
    return {k: 0.0 for k in names}
  sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
  with sink:
    coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    if image_ids is not None:
      ev.params.imgIds = sorted(int(i) for i in image_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return {k: float(v) for k, v in zip(names, np.asarray(ev.stats).tolist())}


def format_table(stats, title="COCO keypoints"):
  """A two-row text table of named statistics."""
  names = list(stats)
  head = " | ".join(f"{n:>6s}" for n in names)
  vals = " | ".join(f"{stats[n]:6.3f}" for n in names)
  return f"{title}\n{head}\n{vals}"
