"""Evaluators: one interface, `run(...) -> dict[str, float]` of named statistics.

  LossEvaluator      the training loss on validation batches (both stages, during training);
  PrnGtEvaluator     the PRN on ground-truth keypoints, COCO keypoint AP (`prn_protocol`);
  DetectorEvaluator  stage one alone: COCOeval('bbox') of the person boxes, and the keypoint AP its
                     heatmap peaks reach under an oracle assignment (an upper bound for the PRN);
  PipelineEvaluator  the whole model on images, COCOeval('keypoints'); optionally with the annotated
                     people's boxes in place of the detector's (where the pipeline loses AP).

The training loop runs the first two periodically; `python evaluate.py` runs one of the last three
(`evaluate`). Evaluators that score COCO results keep them in `.results` after `run`.
"""

import itertools
import os
import time

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mpn_jax import boxes as box_lib
from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import files
from mpn_jax import models
from mpn_jax import parallel
from mpn_jax import prn_grid
from mpn_jax import visualize
from mpn_jax.configs import defaults
from mpn_jax.data import annotations
from mpn_jax.data import prn_samples
from mpn_jax.evaluation import coco_io
from mpn_jax.evaluation import prn_protocol
from mpn_jax.inference import pipeline
from mpn_jax.inference import predictor as predictor_lib

MODES = ("pipeline", "detector", "prn_gt")
BOXES = ("detector", "ground_truth")


def _tfds_modules():
  """(mpn_jax.data.datasets, mpn_jax.data.pipeline), imported on first use: they bring in
  TensorFlow (about 2 s), which evaluation on an image folder or on annotations alone (prn_gt)
  does not need."""
  from mpn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from mpn_jax.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  return datasets, data_pipeline


class Evaluator:
  """An evaluation: `run(model)` -> {name: float}.

  `model` is what the evaluated functions take: a TrainState (LossEvaluator), the stage's
  variables {'params'[, 'batch_stats']} (PrnGtEvaluator, DetectorEvaluator) or a
  `predictor.Predictor` (PipelineEvaluator).
  """

  def run(self, model):
    raise NotImplementedError


# --- during training ----------------------------------------------------------------------------


def _host(x):
  """A replicated global array -> numpy (works when it spans devices of other processes)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


class LossEvaluator(Evaluator):
  """Weighted mean of an eval step's metrics over validation batches ('weight' metric, default 1),
  named val_<metric>.

  Args:
    eval_step: (state, sharded batch) -> dict of metrics (`training.steps.make_eval_step`).
    batches: () -> iterable of host-local numpy batches (a fresh pass each call).
    mesh: the device mesh.
  """

  def __init__(self, eval_step, batches, mesh):
    self.eval_step, self.batches, self.mesh = eval_step, batches, mesh

  def run(self, model):
    totals, weight = {}, 0.0
    for batch in self.batches():
      m = jax.tree.map(_host, self.eval_step(model, parallel.shard_batch(batch, self.mesh)))
      w = float(m.pop("weight", 1.0))
      for k, v in m.items():
        totals[k] = totals.get(k, 0.0) + float(v) * w
      weight += w
    return {f"val_{k}": v / max(weight, 1e-12) for k, v in totals.items()}


def eval_input_config(config):
  """The branches training pipeline on the eval split (config.eval.split) with every augmentation
  switched off."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.dataset.train_split = config.eval.split
    aug = cfg.input.augment
    if "center" in aug:
      aug.center = "letterbox"  # whole images, as evaluated
    aug.scale_min = aug.scale_max = 1.0
    aug.rotation = aug.translate = aug.flip = 0.0
    for k in aug.color_jitter:
      aug.color_jitter[k] = 0.0
    cfg.input.shuffle_buffer = 0
  return cfg


def branches_loss_batches(config, mesh, num_batches):
  """() -> the first `num_batches` host-local batches of `eval_input_config(config)`."""
  cfg = eval_input_config(config)
  _, data_pipeline = _tfds_modules()
  return lambda: itertools.islice(data_pipeline.make_train_iterator(cfg, mesh), num_batches)


def resolve_prn_files(config):
  """For data.name='mpn_synthetic', points the PRN samples at that dataset's annotation files."""
  if config.data.get("name") != "mpn_synthetic":
    return config
  syn = dict(config.data.synthetic)
  syn["name"] = "mpn_synthetic"
  cfg = config.copy_and_resolve_references()
  datasets, _ = _tfds_modules()
  with cfg.unlocked():
    cfg.data.train_files = (datasets.annotation_file(syn, "train"),)
    cfg.data.val_file = datasets.annotation_file(syn, "validation")
  return cfg


# --- PRN on ground truth ------------------------------------------------------------------------


class PrnGtEvaluator(Evaluator):
  """The PRN-on-ground-truth protocol on one annotation file (`prn_protocol.evaluate_prn_gt`).

  Args:
    ann_file: a COCO person_keypoints json.
    model: the PoseResidualNet (needed when assign='prn').
    assign: 'prn' | 'center' | 'oracle'.
    method, window, score_mode: assignment settings (`assignment`).
    widen, input_sigma: those of the PRN's training samples.
    breakdown: also the errors against the oracle (`prn_protocol.error_breakdown`).
  """

  def __init__(self, ann_file, model=None, assign="prn", method="greedy", window=1,
               score_mode="keypoints", widen=prn_grid.DEFAULT_WIDEN, input_sigma=1.0,
               breakdown=False):
    self.ann_file, self.assign, self.method = ann_file, assign, method
    # Now, not at the first evaluation: in training that comes after steps a fault would lose.
    annotations.read_ground_truth(ann_file)
    self.kwargs = dict(window=window, score_mode=score_mode, widen=widen,
                       input_sigma=input_sigma, breakdown=breakdown)
    self.results = []
    # Variables as an argument, not a closure: closed-over arrays would become HLO constants.
    self._apply = jax.jit(lambda v, x: models.prn_probabilities(
        model.apply(v, x, train=False))) if model is not None else None

  @classmethod
  def from_config(cls, config, ann_file, eval_fields=None, inference=None):
    """From a PRN run's config (None: no PRN, defaults): its model, data.widen / input_sigma and
    inference.assign_*; eval_fields (config.eval) give assign, method and score_mode (method and
    score_mode '' = the run's own: inference.assign_method, eval.score_mode)."""
    config = config if config is not None else ml_collections.ConfigDict()
    ec = eval_fields if eval_fields is not None else config.get("eval") or defaults.eval_config()
    icfg = defaults.inference_config()
    for block in (config.get("inference"), inference):
      for k in icfg:
        if block is not None and k in block:
          icfg[k] = block[k]
    model = models.build_prn(config.model) if "model" in config else None
    return cls(ann_file, model, assign=ec.get("assign", "prn"),
               method=ec.get("method") or icfg.assign_method, window=icfg.assign_window,
               score_mode=(ec.get("score_mode") or (config.get("eval") or {}).get("score_mode")
                           or "keypoints"),
               breakdown=ec.get("breakdown", False), **predictor_lib.prn_input(config))

  def run(self, model):
    apply = None
    if self.assign == "prn":
      variables = model
      apply = lambda x: self._apply(variables, x)
    stats, self.results = prn_protocol.evaluate_prn_gt(
        self.ann_file, assign=self.assign, prn_apply=apply, method=self.method, **self.kwargs)
    return stats


def default_prn_ann_file(config):
  """The PRN config's validation annotations (config.data.val_file; for the synthetic dataset,
  its validation annotation file, built on first use), or '' when there is none."""
  data = config.get("data", None) if config is not None else None
  if data is None:
    return ""
  if data.get("name") == "mpn_synthetic":
    data = resolve_prn_files(config).data
  if not data.get("val_file"):
    return ""
  return prn_samples.resolve(os.path.expanduser(data.get("data_dir", "") or ""),
                             os.path.expanduser(data.val_file))


# --- images -------------------------------------------------------------------------------------


def require_file(path, flag):
  if not path:
    raise errors.MissingFileError(f"no annotation file: set {flag}=PATH (a COCO person_keypoints "
                                  "json)")
  if not os.path.isfile(os.path.expanduser(path)):
    raise errors.MissingFileError(f"annotation file {path} does not exist (set by {flag}): pass an "
                                  "existing COCO person_keypoints json")


def image_source(ec, branches_config, image_size, batch_size):
  """(ground-truth annotation file, iterator of host-local batches, predictor.Skipped).

  Images come from ec.ann_file + ec.image_dir when image_dir is set, else from the TFDS split
  ec.split of the branches run's dataset.
  """
  skipped = predictor_lib.Skipped()
  keep = ec.pictures if jax.process_index() == 0 else 0
  if ec.image_dir:
    require_file(ec.ann_file, "config.eval.ann_file")
    if not os.path.isdir(os.path.expanduser(ec.image_dir)):
      raise errors.MissingFileError(f"config.eval.image_dir={ec.image_dir} is not a folder (the "
                                    f"images of {ec.ann_file})")
    gt = coco_io.load_coco(ec.ann_file)
    ids = sorted(gt.getImgIds())[:ec.max_images or None]
    items = [(i, os.path.join(os.path.expanduser(ec.image_dir), gt.imgs[i]["file_name"]))
             for i in ids]
    batches = predictor_lib.image_batches(items, image_size, batch_size, skipped, keep)
    return ec.ann_file, batches, skipped
  if ec.ann_file:
    raise errors.ConfigError(f"config.eval.ann_file={ec.ann_file} needs config.eval.image_dir (the "
                             "folder of its images); leave both empty to evaluate the TFDS split "
                             "config.eval.split")
  datasets, data_pipeline = _tfds_modules()
  return (datasets.annotation_file(branches_config.dataset, ec.split),
          data_pipeline.make_eval_iterator(branches_config, ec.split, batch_size), skipped)


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
  """Writes the first `limit` valid images of process 0 as PNGs into `folder`."""

  def __init__(self, limit, folder, min_score):
    self.limit = limit if jax.process_index() == 0 else 0
    self.dir, self.min_score, self.count = folder, min_score, 0

  def add(self, batch, draw):
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
    num_skipped = int(np.sum(multihost_utils.process_allgather(np.int32(num_skipped))))
  msg = f"{num_images} images evaluated"
  if num_skipped:
    msg += f"; {num_skipped} unreadable image(s) skipped (not evaluated)"
    if skipped.paths:
      msg += f", e.g. {skipped.paths[0]}"
  print(msg)  # not logged too: each message once


class _ImageEvaluator(Evaluator):
  """Shared by the image evaluators: eval fields `ec` (config.eval) and the pictures folder."""

  def __init__(self, ec, pictures_dir):
    self.ec = ec
    self.pictures = _Pictures(ec.pictures, ec.pictures_dir or pictures_dir, ec.picture_min_score)
    self.results = []


def ground_truth_boxes(gt, batch, max_people):
  """The annotated people of a batch's images as given boxes: {'boxes' [b, N, 4] float32 xyxy input
  pixels (original x scale), 'box_valid' [b, N] bool}, N = max_people; crowd regions left out, the
  largest people kept when an image has more than N."""
  n = len(batch["valid"])
  boxes = np.zeros((n, max_people, 4), np.float32)
  valid = np.zeros((n, max_people), bool)
  for i in np.flatnonzero(batch["valid"]):
    people = coco_io.ground_truth_people(gt, int(batch["image_id"][i]))
    b = people["boxes"][~people["iscrowd"]]
    b = b[np.argsort(-box_lib.area(b, xp=np), kind="stable")][:max_people]
    boxes[i, :len(b)] = b * float(batch["scale"][i])
    valid[i, :len(b)] = True
  return {"boxes": boxes, "box_valid": valid}


class PipelineEvaluator(_ImageEvaluator):
  """The whole model on images -> COCO keypoint statistics; run(predictor). With eval field
  boxes='ground_truth' the annotated people's boxes (score 1) replace the detector's."""

  def run(self, model):
    ec, predictor = self.ec, model
    gt_file, batches, skipped = image_source(ec, predictor.branches_config, predictor.image_size,
                                             predictor.batch_size)
    gt = coco_io.load_coco(gt_file)
    visibility = predictor.inference.keypoint_visibility
    given = ec.boxes == "ground_truth"
    results, image_ids = [], []
    for batch in batches:
      if given:
        batch = dict(batch, **ground_truth_boxes(gt, batch, predictor.inference.max_people))
      out = predictor.run_batch(batch)
      ok = out["image_valid"]
      image_ids += [int(i) for i in out["image_id"][ok]]
      b, n = coco_io.batch_rows(out["valid"] & ok[:, None])
      results += coco_io.keypoint_results(out["image_id"][b], out["keypoints"][b, n],
                                          out["scores"][b, n], visibility=visibility)

      def draw(i, b, out=out):
        del i
        p = predictor_lib.people(out, b)
        return p["keypoints"], p["scores"], p["boxes"]
      self.pictures.add(batch, draw)
      if ec.max_images and len(image_ids) >= ec.max_images:
        break
    _report_images(len(image_ids), skipped)
    coco_io.check_evaluable(gt, image_ids, "keypoints", gt_file)
    self.results = results
    stats = coco_io.run_coco_eval(gt, results, "keypoints", image_ids=image_ids)
    which = ", annotated people's boxes" if given else ""
    print(coco_io.format_table(stats, f"COCO keypoints{which}, {len(image_ids)} images "
                                      f"({gt_file})"))
    return stats


class DetectorEvaluator(_ImageEvaluator):
  """Stage one alone on images: person boxes (COCOeval bbox, 'bbox/*') and keypoint peaks (oracle
  keypoint AP, 'peaks_oracle/*'); run(branches variables)."""

  def __init__(self, ec, pictures_dir, branches_config, inference=None):
    super().__init__(ec, pictures_dir)
    self.config = branches_config
    self.inference = predictor_lib.inference_settings(branches_config, None, inference)
    self.detect = pipeline.make_detect_fn(models.build_multiposenet(branches_config.model),
                                          self.inference)

  def run(self, model):
    ec = self.ec
    mesh = parallel.create_mesh()
    variables = parallel.replicate(model, mesh)
    fn = lambda images, scales: self.detect(variables, images)
    batch_size = predictor_lib.round_batch(ec.batch_size)
    gt_file, batches, skipped = image_source(ec, self.config, int(self.config.input.size),
                                             batch_size)
    gt = coco_io.load_coco(gt_file)
    box_results, kp_results, image_ids = [], [], []
    for batch in batches:
      out = predictor_lib.run_batch(fn, mesh, batch)
      scales = out["scale"]
      ok = out["image_valid"]
      image_ids += [int(i) for i in out["image_id"][ok]]
      boxes = out["boxes"] / scales[:, None, None]
      b, n = coco_io.batch_rows(out["valid"] & ok[:, None])
      box_results += coco_io.box_results(out["image_id"][b], boxes[b, n], out["box_scores"][b, n])
      for b in np.flatnonzero(ok):
        people = coco_io.ground_truth_people(gt, int(out["image_id"][b]))
        keep = ~people["iscrowd"] & (people["num_keypoints"] > 0)
        kps, scores = coco_io.oracle_keypoints(out["peak_xy"][b] / scales[b],
                                               out["peak_scores"][b], out["peak_valid"][b],
                                               people["keypoints"][keep])
        kp_results += coco_io.keypoint_results(int(out["image_id"][b]), kps, scores, decimals=3)

      def draw(i, b, out=out, boxes=boxes):
        del i
        keep = out["valid"][b]
        return (np.zeros((int(keep.sum()), coco.NUM_KEYPOINTS, 3), np.float32),
                out["box_scores"][b][keep], boxes[b][keep])
      self.pictures.add(batch, draw)
      if ec.max_images and len(image_ids) >= ec.max_images:
        break
    _report_images(len(image_ids), skipped)
    coco_io.check_evaluable(gt, image_ids, "bbox", gt_file)
    self.results = box_results
    bbox = coco_io.run_coco_eval(gt, box_results, "bbox", image_ids=image_ids)
    peaks = coco_io.run_coco_eval(gt, kp_results, "keypoints", image_ids=image_ids)
    print(coco_io.format_table(bbox, f"COCO person boxes, {len(image_ids)} images ({gt_file})"))
    print(coco_io.format_table(peaks, "COCO keypoints of the heatmap peaks, oracle assignment "
                                      "(upper bound of the PRN's)"))
    stats = {f"bbox/{k}": v for k, v in bbox.items()}
    stats.update({f"peaks_oracle/{k}": v for k, v in peaks.items()})
    return stats


# --- python evaluate.py -------------------------------------------------------------------------


def _eval_fields(config):
  """config's eval fields over the defaults, so that a partial config works."""
  ec = defaults.eval_config()
  given = config or {}
  for k in ec:
    if k in given:
      ec[k] = given[k]
  if ec.mode not in MODES:
    raise errors.ConfigError(f"config.eval.mode must be one of {MODES}, got {ec.mode!r}")
  if ec.boxes not in BOXES:
    raise errors.ConfigError(f"config.eval.boxes must be one of {BOXES}, got {ec.boxes!r}")
  if ec.boxes != "detector" and ec.mode != "pipeline":
    raise errors.ConfigError(f"config.eval.boxes={ec.boxes} is for config.eval.mode=pipeline "
                             f"(got mode {ec.mode}): drop it or evaluate the pipeline")
  return ec


def _stage_of(model, stage, required):
  """(variables, config) of `stage` in the model path, or (None, None) when not `required` and
  it holds none."""
  try:
    return predictor_lib.restore(model, stage)
  except errors.MissingFileError:
    if required:
      raise
    return None, None


def evaluate(model, config=None, inference=None):
  """Evaluates the model path `model` as config.mode asks; returns the named statistics.

  Args:
    model: str, a model folder (MODEL/branches, MODEL/prn) or, for the stage-level modes, the
      stage's own workdir ('detector': branches, 'prn_gt': prn).
    config: the eval fields (`defaults.eval_config()`; missing fields take their defaults).
    inference: dict of inference fields overriding those saved with the runs.
  Returns:
    dict name -> float; also written as JSON to config.output (default MODEL/eval/<mode>_stats.json)
    with the COCO results in config.results_file (default MODEL/eval/<mode>_results.json, or
    <output without .json>_results.json beside a given output; pictures likewise in
    <output without .json>_pictures). A file outside MODEL/eval that evaluate.py did not write
    is never replaced (`files.check_outputs`).
  """
  ec = _eval_fields(config)
  model = os.path.abspath(os.path.expanduser(model)) if model else ""
  eval_dir = os.path.join(model, "eval")
  name = ec.mode + ("_gt_boxes" if ec.boxes == "ground_truth" else "")
  output = ec.output or os.path.join(eval_dir, f"{name}_stats.json")
  # Results and pictures go beside a chosen output: not over those of the model's own evaluation.
  stem = os.path.splitext(os.path.abspath(os.path.expanduser(output)))[0] if ec.output else ""
  results_file = ec.results_file or (f"{stem}_results.json" if stem else
                                     os.path.join(eval_dir, f"{name}_results.json"))
  pictures_dir = f"{stem}_pictures" if stem else os.path.join(eval_dir, "pictures")
  # Before the work, not after it; on every process (a read-only check), so all stop together.
  chosen = []  # outside the model's eval/ folder, which is evaluate.py's own
  for path, flag in ((output, "--config.eval.output"),
                     (results_file, "--config.eval.results_file")):
    coco_io.check_writable_file(path, flag)
    folder, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
    if folder != eval_dir:
      files.check_outputs(folder, [name], f"{flag}={path}", "evaluate.py")
      chosen.append((folder, name))
  start = time.time()
  if ec.mode == "prn_gt":
    variables, pcfg = _stage_of(model, "prn", required=ec.assign == "prn")
    ann_file = ec.ann_file or default_prn_ann_file(pcfg)
    require_file(ann_file, "config.eval.ann_file")
    evaluator = PrnGtEvaluator.from_config(pcfg, ann_file, ec, inference)
    stats = evaluator.run(variables)
    table = {k: stats[k] for k in coco_io.STAT_NAMES}
    print(coco_io.format_table(table, f"PRN on ground truth ({evaluator.assign}, "
                                      f"{evaluator.method}): {ann_file}"))
    if "right" in stats:
      print(prn_protocol.format_breakdown(stats))
  elif ec.mode == "detector":
    variables, bcfg = predictor_lib.restore(model, "branches")
    evaluator = DetectorEvaluator(ec, pictures_dir, bcfg, inference)
    stats = evaluator.run(variables)
  else:
    overrides = dict(inference or {}, **({"assign_method": ec.method} if ec.method else {}))
    predictor = predictor_lib.Predictor.load(model, inference=overrides,
                                             batch_size=ec.batch_size)
    evaluator = PipelineEvaluator(ec, pictures_dir)
    stats = evaluator.run(predictor)
  if jax.process_index() == 0:  # every process holds the same statistics and results
    for folder, name in chosen:
      files.record_outputs(folder, [name])
    coco_io.write_json(results_file, evaluator.results)
    coco_io.write_json(output, stats)
  print(f"{len(evaluator.results)} COCO results written to {results_file}")
  print(f"statistics written to {output} ({ec.mode} evaluation took {time.time() - start:.1f} s)")
  return stats
