"""Evaluation: `evaluate(config, workdir)` behind `python evaluate.py`, in three modes.

  * 'pipeline' (configs/prn.py): the whole model on images. The branches checkpoint
    (config.eval.branches_workdir) and the PRN checkpoint (workdir) are restored, every image of a
    COCO split (the TFDS eval split, or any annotation file + image folder given by
    config.eval.ann_file / config.eval.image_dir) goes through the jitted inference pipeline, the
    people are written as COCO results and scored by COCOeval('keypoints'); the first
    config.eval.pictures images are drawn as PNGs.
  * 'detector' (configs/branches.py): COCOeval('bbox') of the person detector, plus the keypoint
    AP that the heatmap peaks reach when an oracle assigns them to the annotated people (an upper
    bound of what the PRN can do with these peaks).
  * 'prn_gt': the paper's PRN-on-ground-truth protocol (`mpn_jax.prn_protocol`), no images.

Every mode prints a table of the named statistics and writes them as JSON to config.eval.output
(default workdir/eval/<mode>_stats.json).
"""

import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import evaluation
from mpn_jax import inference
from mpn_jax import predict
from mpn_jax import prn_grid
from mpn_jax import visualize

MODES = ("pipeline", "detector", "prn_gt")


def eval_config(mode="pipeline"):
  """Defaults of the evaluation fields (embedded as `config.eval` by configs/*.py)."""
  c = ml_collections.ConfigDict()
  c.mode = mode                  # 'pipeline' | 'detector' | 'prn_gt'
  c.assign = "prn"               # prn_gt: 'prn' (needs the PRN checkpoint) | 'center' | 'oracle'
  c.method = ""                  # assignment method ('' = config.inference.assign_method, greedy)
  c.score_mode = "keypoints"     # prn_gt instance score: one of mpn_jax.assignment.SCORE_MODES
  c.ann_file = ""                # COCO annotation file ('' = the config's validation split)
  c.image_dir = ""               # images of ann_file ('' = TFDS eval split of the branches config)
  c.split = "validation"         # TFDS split when image_dir is ''
  c.output = ""                  # stats JSON ('' = workdir/eval/<mode>_stats.json)
  c.results_file = ""            # COCO results JSON ('' = workdir/eval/<mode>_results.json)
  c.max_images = 0               # 0 = every image
  c.batch_size = 8               # images per inference batch
  c.pictures = 8                 # draw the first N images
  c.pictures_dir = ""            # '' = workdir/eval/pictures
  c.picture_min_score = 0.1      # draw people scoring at least this
  c.branches_workdir = ""        # pipeline: workdir of the branches stage
  c.branches_config = "configs/branches.py"  # pipeline: its config file[:preset]
  return c


def _eval_fields(config):
  """config.eval's values over the defaults, so that a config lacking some fields still works."""
  ec = eval_config()
  given = config.get("eval", None) or {}
  for k in ec:
    if k in given:
      ec[k] = given[k]
  if ec.mode not in MODES:
    raise errors.ConfigError(f"config.eval.mode must be one of {MODES}, got {ec.mode!r}")
  return ec


def evaluate(config, workdir):
  """Runs the evaluation config.eval.mode asks for; returns the dict of named statistics."""
  ec = _eval_fields(config)
  workdir = os.path.abspath(os.path.expanduser(workdir)) if workdir else ""
  output = ec.output or os.path.join(workdir, "eval", f"{ec.mode}_stats.json")
  # Before the work, not after it; on every process (a read-only check), so all stop together.
  evaluation.check_writable_file(output, "--config.eval.output")
  evaluation.check_writable_file(_results_path(ec, workdir), "--config.eval.results_file")
  start = time.time()
  if ec.mode == "prn_gt":
    stats = evaluate_prn_gt(config, ec, workdir)
  elif ec.mode == "pipeline":
    stats = evaluate_pipeline(config, ec, workdir)
  else:
    stats = evaluate_detector(config, ec, workdir)
  if jax.process_index() == 0:  # every process holds the same statistics
    evaluation.write_json(output, stats)
  logging.info("evaluation (%s) took %.1f s; statistics written to %s", ec.mode,
               time.time() - start, output)
  print(f"statistics written to {output}")
  return stats


# --- checkpoints --------------------------------------------------------------------------------

require_checkpoint = predict.require_checkpoint


def prn_apply_fn(config, workdir):
  """Restores the PRN from workdir: a jitted function inputs [B, 56, 36, 17] -> probabilities."""
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  variables, _ = predict.restore(workdir, "prn")
  model = models.build_prn(config.model)

  @jax.jit
  def apply(x):
    return models.prn_probabilities(model.apply(variables, x, train=False))
  return apply


# --- prn_gt -------------------------------------------------------------------------------------


def _default_prn_ann_file(config):
  """The PRN config's validation annotations (config.data.val_file; for the synthetic dataset,
  its validation annotation file, built on first use), or '' when there is none."""
  data = config.get("data", None)
  if data is None:
    return ""
  if data.get("name") == "mpn_synthetic":
    from mpn_jax.training import loop  # pylint: disable=g-import-not-at-top
    data = loop.resolve_prn_files(config).data
  if not data.get("val_file"):
    return ""
  from mpn_jax.data import prn_samples  # pylint: disable=g-import-not-at-top
  return prn_samples.resolve(os.path.expanduser(data.get("data_dir", "") or ""),
                             os.path.expanduser(data.val_file))


def evaluate_prn_gt(config, ec, workdir):
  """The PRN-on-ground-truth protocol on ec.ann_file (default: the PRN config's val_file)."""
  from mpn_jax import prn_protocol  # pylint: disable=g-import-not-at-top
  data = config.get("data", None) or ml_collections.ConfigDict()
  ann_file = ec.ann_file or _default_prn_ann_file(config)
  _require_file(ann_file, "config.eval.ann_file")
  prn_apply = prn_apply_fn(config, workdir) if ec.assign == "prn" else None
  method = _method(config, ec)
  stats, results = prn_protocol.evaluate_prn_gt(
      ann_file, assign=ec.assign, prn_apply=prn_apply, method=method,
      window=_inference_field(config, "assign_window", 1), score_mode=ec.score_mode,
      widen=data.get("widen", prn_grid.DEFAULT_WIDEN),
      input_sigma=data.get("input_sigma", 1.0))
  _write_results(ec, workdir, results)
  print(evaluation.format_table(stats, f"PRN on ground truth ({ec.assign}, {method}): "
                                       f"{ann_file}"))
  return stats


def _inference_field(config, name, default):
  icfg = config.get("inference", None)
  return icfg.get(name, default) if icfg is not None else default


def _method(config, ec):
  return ec.method or _inference_field(config, "assign_method", "greedy")


def _require_file(path, flag):
  if not path:
    raise errors.MissingFileError(f"no annotation file: set {flag}=PATH (a COCO person_keypoints "
                                  "json)")
  if not os.path.isfile(os.path.expanduser(path)):
    raise errors.MissingFileError(f"annotation file {path} does not exist (set by {flag}): pass an "
                            "existing COCO person_keypoints json")


def _results_path(ec, workdir):
  return ec.results_file or os.path.join(workdir, "eval", f"{ec.mode}_results.json")


def _write_results(ec, workdir, results):
  path = _results_path(ec, workdir)
  if jax.process_index() == 0:
    evaluation.write_json(path, results)
  logging.info("%d COCO results written to %s", len(results), path)
  return path


# --- images: pipeline and detector --------------------------------------------------------------


def _branches_workdir(config, ec):
  return ec.branches_workdir or config.get("branches_workdir", "") or ""


def _eval_source(ec, branches_cfg, pipe):
  """(ground-truth annotation file, iterator of host-local batches, Skipped).

  Images come from config.eval.ann_file + config.eval.image_dir when image_dir is set, else from
  the TFDS split config.eval.split of the branches run's dataset.
  """
  skipped = predict.Skipped()
  keep = ec.pictures if jax.process_index() == 0 else 0
  if ec.image_dir:
    _require_file(ec.ann_file, "config.eval.ann_file")
    if not os.path.isdir(os.path.expanduser(ec.image_dir)):
      raise errors.MissingFileError(f"config.eval.image_dir={ec.image_dir} is not a folder (the images "
                              f"of {ec.ann_file})")
    gt = evaluation.load_coco(ec.ann_file)
    ids = sorted(gt.getImgIds())[:ec.max_images or None]
    items = [(i, os.path.join(os.path.expanduser(ec.image_dir), gt.imgs[i]["file_name"]))
             for i in ids]
    batches = predict.image_batches(items, pipe.image_size, pipe.batch_size, skipped, keep)
    return ec.ann_file, batches, skipped
  if ec.ann_file:
    raise errors.ConfigError(f"config.eval.ann_file={ec.ann_file} needs config.eval.image_dir (the folder "
                     "of its images); leave both empty to evaluate the TFDS split config.eval.split")
  from mpn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from mpn_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(branches_cfg.to_dict())
  cfg.input.eval_batch_size = pipe.batch_size
  return (datasets.annotation_file(cfg.dataset, ec.split),
          pipeline.make_eval_iterator(cfg, ec.split), skipped)


def _picture(batch, i, keypoints, scores, boxes):
  """Draws people (original pixels) on the decoded original image, or else on the letterboxed
  network input (TFDS batches), cropped to the image."""
  originals = batch.get("originals")
  if originals is not None and originals[i] is not None:
    return visualize.draw_people(originals[i], keypoints=keypoints, boxes=boxes, scores=scores)
  scale = float(batch["scale"][i])
  image = visualize.denormalize_image(batch["image"][i])
  if "image_size" in batch:
    h, w = (int(round(float(v) * scale)) for v in batch["image_size"][i])
    image = image[:max(h, 1), :max(w, 1)]
  kps = keypoints.copy()
  kps[..., :2] *= scale
  return visualize.draw_people(np.ascontiguousarray(image), keypoints=kps, boxes=boxes * scale,
                               scores=scores)


class _Pictures:
  """Writes the first `limit` valid images of process 0 as PNGs."""

  def __init__(self, ec, workdir):
    self.limit = ec.pictures if jax.process_index() == 0 else 0
    self.dir = ec.pictures_dir or os.path.join(workdir, "eval", "pictures")
    self.min_score = ec.picture_min_score
    self.count = 0

  def add(self, batch, out, draw):
    """draw(i, b) -> (keypoints, scores, boxes) of the batch's local row i = global row b."""
    offset = jax.process_index() * len(batch["valid"])
    for i in range(len(batch["valid"])):
      if self.count >= self.limit:
        return
      if not batch["valid"][i]:
        continue
      kps, scores, boxes = draw(i, offset + i)
      keep = scores >= self.min_score
      pic = _picture(batch, i, kps[keep], scores[keep], boxes[keep])
      visualize.save_png(pic, os.path.join(self.dir, f"{int(batch['image_id'][i]):012d}.png"))
      self.count += 1


def _report_images(num_images, skipped):
  """Prints how many images were evaluated and how many were unreadable (over all processes)."""
  num_skipped = len(skipped.paths)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    num_skipped = int(np.sum(multihost_utils.process_allgather(np.int32(num_skipped))))
  msg = f"{num_images} images evaluated"
  if num_skipped:
    msg += f"; {num_skipped} unreadable image(s) skipped (not evaluated)"
    if skipped.paths:
      msg += f", e.g. {skipped.paths[0]}"
  print(msg)
  logging.info(msg)


def evaluate_pipeline(config, ec, workdir):
  """The whole model (branches + PRN) on images -> COCO keypoint AP."""
  pipe = predict.load_pipeline(config, workdir, _branches_workdir(config, ec), ec.branches_config,
                               ec.method, ec.batch_size)
  gt_file, batches, skipped = _eval_source(ec, pipe.branches_config, pipe)
  pictures = _Pictures(ec, workdir)
  results, image_ids = [], []
  for batch in batches:
    out = predict.run_batch(pipe, batch)
    ok = out["image_valid"]
    image_ids += [int(i) for i in out["image_id"][ok]]
    results += inference.results_to_coco(out["image_id"], out["keypoints"], out["scores"],
                                         out["valid"] & ok[:, None],
                                         pipe.inference.keypoint_visibility)
    pictures.add(batch, out, lambda i, b, out=out: predict.people_of(out, b))
    if ec.max_images and len(image_ids) >= ec.max_images:
      break
  _report_images(len(image_ids), skipped)
  gt = evaluation.load_coco(gt_file)
  evaluation.check_evaluable(gt, image_ids, "keypoints", gt_file)
  _write_results(ec, workdir, results)
  stats = evaluation.run_coco_eval(gt, results, "keypoints", image_ids=image_ids)
  print(evaluation.format_table(stats, f"COCO keypoints, {len(image_ids)} images ({gt_file})"))
  return stats


def make_detect_fn(model, icfg):
  """Jitted (variables, images [B, S, S, 3]) -> person boxes (input pixels) and keypoint peaks."""
  k = coco.NUM_KEYPOINTS

  @jax.jit
  def detect(variables, images):
    apply_fn = lambda x: model.apply(variables, x, train=False)
    heat, cand_boxes, cand_scores = inference.merge_outputs(apply_fn, images, icfg)
    _, stride = inference.merge_grid(images.shape[1:3], icfg)
    boxes, scores, valid = inference.select_people(
        cand_boxes, cand_scores, icfg.score_threshold, icfg.iou_threshold, icfg.max_people,
        images.shape[1:3])
    xy, peak_scores, peak_valid = inference.find_peaks(
        heat[..., :k], icfg.heatmap_threshold, icfg.peaks_per_keypoint, stride, icfg.peak_refine)
    return {"boxes": boxes, "box_scores": scores, "valid": valid, "peak_xy": xy,
            "peak_scores": peak_scores, "peak_valid": peak_valid}
  return detect


def evaluate_detector(config, ec, workdir):
  """The branches alone: person boxes (COCOeval bbox) and keypoint peaks (oracle keypoint AP)."""
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  from mpn_jax import parallel  # pylint: disable=g-import-not-at-top
  variables, _ = predict.restore(workdir, "branches")
  icfg = predict.inference_settings(config, None)
  detect = make_detect_fn(models.build_multiposenet(config.model), icfg)
  mesh = parallel.create_mesh()
  variables = parallel.replicate(variables, mesh)
  pipe = predict.Pipeline(fn=lambda images, scales: detect(variables, images),
                          image_size=int(config.input.size),
                          batch_size=predict.round_batch(ec.batch_size), mesh=mesh,
                          inference=icfg, branches_config=config)
  gt_file, batches, skipped = _eval_source(ec, config, pipe)
  gt = evaluation.load_coco(gt_file)
  pictures = _Pictures(ec, workdir)
  box_results, kp_results, image_ids = [], [], []
  for batch in batches:
    out = predict.run_batch(pipe, batch)
    scales = out["scale"]
    ok = out["image_valid"]
    image_ids += [int(i) for i in out["image_id"][ok]]
    boxes = out["boxes"] / scales[:, None, None]
    box_results += inference.boxes_to_coco(out["image_id"], boxes, out["box_scores"],
                                           out["valid"] & ok[:, None])
    for b in np.flatnonzero(ok):
      people = evaluation.ground_truth_people(gt, int(out["image_id"][b]))
      keep = ~people["iscrowd"] & (people["num_keypoints"] > 0)
      kps, scores = evaluation.oracle_keypoints(out["peak_xy"][b] / scales[b],
                                                out["peak_scores"][b], out["peak_valid"][b],
                                                people["keypoints"][keep])
      kp_results += evaluation.keypoint_results(int(out["image_id"][b]), kps, scores)

    def draw(i, b, out=out, boxes=boxes):
      keep = out["valid"][b]
      n = int(keep.sum())
      return (np.zeros((n, coco.NUM_KEYPOINTS, 3), np.float32), out["box_scores"][b][keep],
              boxes[b][keep])
    pictures.add(batch, out, draw)
    if ec.max_images and len(image_ids) >= ec.max_images:
      break
  _report_images(len(image_ids), skipped)
  evaluation.check_evaluable(gt, image_ids, "bbox", gt_file)
  _write_results(ec, workdir, box_results)
  bbox = evaluation.run_coco_eval(gt, box_results, "bbox", image_ids=image_ids)
  peaks = evaluation.run_coco_eval(gt, kp_results, "keypoints", image_ids=image_ids)
  print(evaluation.format_table(bbox, f"COCO person boxes, {len(image_ids)} images ({gt_file})"))
  print(evaluation.format_table(peaks, "COCO keypoints of the heatmap peaks, oracle assignment "
                                       "(upper bound of the PRN's)"))
  stats = {f"bbox/{k}": v for k, v in bbox.items()}
  stats.update({f"peaks_oracle/{k}": v for k, v in peaks.items()})
  return stats
