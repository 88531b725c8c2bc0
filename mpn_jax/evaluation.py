"""COCO evaluation: results encoding and pycocotools COCOeval wrappers.

The statistics are always reported under these names, in COCOeval's order.
"""

import contextlib
import copy
import io
import json
import os

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
# COCOeval('bbox') has 12 statistics (small objects too); keypoints has the 10 above.
BBOX_STAT_NAMES = ("AP", "AP50", "AP75", "APS", "APM", "APL",
                   "AR1", "AR10", "AR", "ARS", "ARM", "ARL")


def load_coco(ann):
  """A pycocotools COCO from a path or an already-loaded dict, quietly; clear error if missing."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  if isinstance(ann, COCO):
    return ann
  if isinstance(ann, (str, os.PathLike)):
    if not os.path.isfile(ann):
      raise FileNotFoundError(
          f"COCO annotation file {ann!s} does not exist: pass an existing person_keypoints_*.json "
          "(e.g. --config.eval.ann_file=PATH).")
    with open(ann) as f:
      ann = json.load(f)
  coco = COCO()
  coco.dataset = copy.deepcopy(ann)
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


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
  """
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  names = STAT_NAMES if iou_type == "keypoints" else BBOX_STAT_NAMES
  coco_gt = load_coco(gt)
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
