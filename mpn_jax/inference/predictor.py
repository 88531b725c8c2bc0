r"""`Predictor`: a trained model, restored from one model path, run on images.

  predictor = Predictor.load("runs/coco")   # the model folder: runs/coco/branches, runs/coco/prn
  people = predictor(image)                 # image: [H, W, 3] uint8 RGB numpy
  people["keypoints"]                       # [P, 17, 3] float32 (x, y, score), image pixels
  people["boxes"]                           # [P, 4] float32 (x1, y1, x2, y2), image pixels
  people["scores"]                          # [P] float32 person scores, decreasing

Both stages are restored with the configs saved in their checkpoints (`checkpoints.restore_stage`),
so no config file is read. The parts below the class serve the evaluation loops too:
`image_batches` letterboxes image files into fixed-size host-local batches (skipping unreadable
files with a warning) and `run_batch` runs a jitted function on one such batch and returns numpy
outputs of the whole global batch.
"""

import dataclasses
import sys

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mpn_jax import boxes as box_lib
from mpn_jax import checkpoints
from mpn_jax import errors
from mpn_jax import parallel
from mpn_jax.configs import defaults
from mpn_jax.data import preprocess
from mpn_jax.inference import pipeline
from mpn_jax.inference import runtimes


def _overlay(base, other):
  """base's fields take other's values where other has them (lists become tuples)."""
  for k in base:
    if other is not None and k in other:
      v = other[k]
      base[k] = tuple(v) if isinstance(v, list) else v
  return base


def inference_settings(prn_config, branches_config=None, overrides=None):
  """The inference config: defaults < branches run's `inference` < PRN run's `inference` <
  `overrides` (a dict of `defaults.inference_config()` fields). Fields a saved config has that the
  defaults lack (e.g. the former inference.prn_sigma / box_widen of older checkpoints) are ignored:
  how the PRN input is drawn comes from the PRN run's data fields (`prn_input`)."""
  icfg = defaults.inference_config()
  _overlay(icfg, branches_config.get("inference") if branches_config is not None else None)
  _overlay(icfg, prn_config.get("inference") if prn_config is not None else None)
  _overlay(icfg, overrides)
  return icfg


def prn_input(prn_config):
  """{'input_sigma', 'widen'}: how the PRN's inputs were drawn in its training (its config's
  data.input_sigma and data.widen; the defaults where absent): `pipeline.make_predict_fn`'s
  keyword arguments."""
  data = (prn_config.get("data") if prn_config is not None else None) or {}
  return {"input_sigma": float(data.get("input_sigma", pipeline.DEFAULT_INPUT_SIGMA)),
          "widen": float(data.get("widen", pipeline.DEFAULT_WIDEN))}


def restore(model, stage, which=None):
  """(variables, config ConfigDict) of `stage` in a model path (`checkpoints.stage_workdir`), with
  the config saved in the checkpoint; errors.CheckpointError when none was saved."""
  workdir = checkpoints.stage_workdir(model, stage)
  variables, saved = checkpoints.restore_stage(workdir, stage, which)
  if not saved:
    raise errors.CheckpointError(f"the {stage} checkpoint in {workdir} has no saved config "
                                 "(config/ beside variables/): it cannot be rebuilt; retrain it "
                                 "with python train.py")
  return variables, ml_collections.ConfigDict(saved)


class Predictor:
  """Both stages restored and jitted over every device; call it on images.

  Attributes:
    branches_config, prn_config: the runs' configs (ml_collections.ConfigDict).
    inference: the inference config in use (`inference_settings`).
    image_size: S, the network input side (images are letterboxed to S x S).
    batch_size: global images per step, a multiple of the device count.
    mesh: the device mesh.
  """

  def __init__(self, branches_variables, prn_variables, branches_config, prn_config,
               inference=None, batch_size=8):
    """Args: variables {'params'[, 'batch_stats']} and configs of both stages; `inference`: dict of
    inference fields overriding the runs' (`inference_settings`; 'runtime' and 'precision' choose
    where and how the network and the PRN run, `runtimes`); batch_size: rounded up to a multiple of
    the device count."""
    self.branches_config = ml_collections.ConfigDict(branches_config)
    self.prn_config = ml_collections.ConfigDict(prn_config)
    self.inference = inference_settings(self.prn_config, self.branches_config, inference)
    self.image_size = int(self.branches_config.input.size)
    self.batch_size = round_batch(batch_size)
    self.mesh = parallel.create_mesh()
    self.fn = runtimes.make_predict_fn(
        self.branches_config.model, self.prn_config.model, branches_variables, prn_variables,
        self.inference, (self.image_size, self.image_size), runtime=self.inference.runtime,
        precision=self.inference.precision, mesh=self.mesh, **prn_input(self.prn_config))

  @classmethod
  def load(cls, model, inference=None, batch_size=8, branches_step=None, prn_step=None,
           runtime=None, precision=None):
    """Restores both stages of the model path `model` (MODEL/branches and MODEL/prn).

    Args:
      model: str, the model folder.
      inference: dict of inference fields overriding the runs' (e.g. {'scales': (1.0, 1.5)}).
      batch_size: global images per step.
      branches_step, prn_step: 'latest', 'best' or a step number; None: branches latest, PRN best
        (`checkpoints.DEFAULT_STEP`).
      runtime: 'jax' (default), 'onnxruntime' or 'openvino' (`runtimes`; the last two need the
        [export] extra); precision: 'fp32' (default) or 'bf16'. Shorthands for those inference
        fields.
    """
    inference = dict(inference or {})
    if runtime is not None:
      inference["runtime"] = runtime
    if precision is not None:
      inference["precision"] = precision
    runtimes.check(inference.get("runtime", "jax"), inference.get("precision", "fp32"))
    branch_vars, bcfg = restore(model, "branches", branches_step)
    prn_vars, pcfg = restore(model, "prn", prn_step)
    return cls(branch_vars, prn_vars, bcfg, pcfg, inference, batch_size)

  def run_batch(self, batch):
    """`run_batch` of the whole pipeline: outputs of `pipeline.predict_people`, numpy."""
    return run_batch(self.fn, self.mesh, batch)

  def __call__(self, images, min_score=0.0):
    """People in images.

    Args:
      images: one image [H, W, 3] uint8 RGB (numpy), a list of them (sizes may differ), or an
        array [B, H, W, 3]. With several processes, each calls it with its own images, every
        process the same number of times.
      min_score: keep the people scoring at least this (0: every person the pipeline returns;
        predict.py draws and writes those from 0.1, its --min_score).
    Returns:
      for one image a dict, else a list of dicts (one per image, in order), each with
      'keypoints' [P, 17, 3] float32 (x, y, score) and 'boxes' [P, 4] float32 (x1, y1, x2, y2) in
      the image's own pixels, and 'scores' [P] float32, in decreasing score order.
    """
    single = isinstance(images, np.ndarray) and images.ndim == 3
    images = [images] if single else list(images)
    for i, image in enumerate(images):
      image = np.asarray(image)
      if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise errors.DataError(f"image {i}: expected [H, W, 3] uint8 RGB, got {image.dtype} "
                               f"{image.shape}")
    local = self.batch_size // jax.process_count()
    offset = jax.process_index() * local
    results = []
    for start in range(0, max(len(images), 1), local):
      chunk = images[start:start + local]
      boxed = [preprocess.letterbox(np.asarray(im), self.image_size) for im in chunk]
      s = self.image_size
      batch = {
          "image": preprocess.pad_axis(np.stack([b[0] for b in boxed]) if boxed else
                                       np.zeros((0, s, s, 3), np.float32), local),
          "scale": preprocess.pad_axis(np.asarray([b[1] for b in boxed], np.float32), local,
                                       fill=1.0),
          "image_id": np.arange(local, dtype=np.int64),
          "valid": np.arange(local) < len(chunk),
      }
      out = self.run_batch(batch)
      results += [people(out, offset + i, min_score, np.shape(chunk[i]))
                  for i in range(len(chunk))]
    return results[0] if single else results


def people(out, b, min_score=0.0, image_shape=None):
  """Image b's valid people of `run_batch` outputs of the pipeline: dict 'keypoints' [P, 17, 3],
  'boxes' [P, 4], 'scores' [P] (float32, original pixels), decreasing score.

  image_shape: (H, W, ...) of the original image: boxes are clipped to it (the network clips them
  to its square input, whose letterbox padding lies outside a non-square image).
  """
  keep = out["valid"][b] & (out["scores"][b] >= min_score)
  order = np.argsort(-out["scores"][b][keep], kind="stable")
  boxes = np.asarray(out["boxes"][b][keep][order], np.float32)
  if image_shape is not None:
    boxes = np.asarray(box_lib.clip(boxes, *image_shape[:2]), np.float32)
  return {"keypoints": np.asarray(out["keypoints"][b][keep][order], np.float32),
          "boxes": boxes,
          "scores": np.asarray(out["scores"][b][keep][order], np.float32)}


# --- batches ------------------------------------------------------------------------------------


def round_batch(batch_size):
  """batch_size rounded up to a multiple of the number of devices."""
  n = jax.device_count()
  return max(n, -(-int(batch_size) // n) * n)


def run_batch(fn, mesh, batch):
  """Runs fn(images [B, S, S, 3], scales [B]) on one host-local batch ('image', 'scale',
  'image_id', 'valid'; with 'boxes' [B, N, 4] and 'box_valid' [B, N] also fn(..., boxes=,
  box_valid=)) -> numpy outputs of the whole global batch (every process gets all of them), plus
  'image_id' [B] int64, 'scale' [B] float32 and 'image_valid' [B] bool."""
  arrays = {"image": np.asarray(batch["image"], np.float32),
            "scale": np.asarray(batch["scale"], np.float32)}
  if "boxes" in batch:
    arrays.update(boxes=np.asarray(batch["boxes"], np.float32),
                  box_valid=np.asarray(batch["box_valid"], bool))
  arrays = parallel.shard_batch(arrays, mesh)
  out = fn(arrays.pop("image"), arrays.pop("scale"), **arrays)
  out["image_id"] = np.asarray(batch["image_id"], np.int64)
  out["scale"] = np.asarray(batch["scale"], np.float32)
  out["image_valid"] = np.asarray(batch["valid"], bool)
  if jax.process_count() > 1:
    return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in out.items()}
  return {k: np.asarray(v) for k, v in out.items()}


@dataclasses.dataclass
class Skipped:
  """Images that could not be read: their paths (the count is len(paths))."""
  paths: list = dataclasses.field(default_factory=list)


def image_batches(items, size, batch_size, skipped, keep_originals=0):
  """Letterboxed host-local batches of image files.

  Args:
    items: list of (image_id int, path); this process takes items[process_index::process_count].
    size: S.
    batch_size: GLOBAL batch; each process yields batch_size // process_count images per batch.
    skipped: a `Skipped`; unreadable images are appended there with a warning and left out.
    keep_originals: keep the decoded [H, W, 3] uint8 images of the first this-many images of this
      process (in 'originals', a list aligned with the batch, None elsewhere).
  Yields:
    dicts 'image' [b, S, S, 3] float32, 'image_id' [b] int64, 'scale' [b] float32, 'valid' [b]
    bool (False on padding), 'path' list of b str, 'originals' list; every process yields the same
    number of batches (padding batches at the end).
  """
  pc, pi = jax.process_count(), jax.process_index()
  local = batch_size // pc
  mine = items[pi::pc]
  num_batches = max(1, -(-len(items[::pc]) // local))
  kept = 0

  def empty():
    return {"image": [], "image_id": [], "scale": [], "valid": [], "path": [], "originals": []}

  def finish(b):
    n = len(b["valid"])
    for _ in range(local - n):
      b["image"].append(np.zeros((size, size, 3), np.float32))
      b["image_id"].append(-1)
      b["scale"].append(1.0)
      b["valid"].append(False)
      b["path"].append("")
      b["originals"].append(None)
    return {"image": np.stack(b["image"]), "image_id": np.asarray(b["image_id"], np.int64),
            "scale": np.asarray(b["scale"], np.float32), "valid": np.asarray(b["valid"], bool),
            "path": b["path"], "originals": b["originals"]}

  count = 0
  batch = empty()
  for image_id, path in mine:
    try:
      rgb = preprocess.load_image(path)
    except ValueError as e:
      print(f"warning: skipping unreadable image {path}: {e}", file=sys.stderr)
      skipped.paths.append(str(path))
      continue
    image, scale = preprocess.letterbox(rgb, size)
    batch["image"].append(image)
    batch["image_id"].append(image_id)
    batch["scale"].append(scale)
    batch["valid"].append(True)
    batch["path"].append(str(path))
    batch["originals"].append(rgb if kept < keep_originals else None)
    kept += 1
    if len(batch["valid"]) == local:
      yield finish(batch)
      count += 1
      batch = empty()
  if batch["valid"] or count == 0:
    yield finish(batch)
    count += 1
  while count < num_batches:  # skipped images: keep every process in step
    yield finish(empty())
    count += 1
