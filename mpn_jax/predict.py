r"""The trained model on images: restore both stages, run the jitted pipeline, draw the people.

Library (used by `mpn_jax.evaluate` too): `load_pipeline` restores the branches and PRN checkpoints
and jits `inference.make_predict_fn` over every device; `image_batches` letterboxes image files into
fixed-size batches, skipping the unreadable ones with a warning; `run_batch` returns host numpy
predictions in original image pixels.

Command: pictures of any folder of images

  python -m mpn_jax.predict --config=configs/prn.py --workdir=runs/prn \
      --config.eval.branches_workdir=runs/branches --images=FOLDER --output=OUT_DIR

writes OUT_DIR/<image stem>.png (skeletons, keypoints, boxes, scores; <file name>.png where two
inputs share a stem) and OUT_DIR/predictions.json (per image: people's keypoints [17 x (x, y,
score)], box [x1, y1, x2, y2], score). OUT_DIR must not be, or lie inside, the images folder: the
inputs are never overwritten.
"""

import dataclasses
import importlib.util
import json
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mpn_jax import errors
from mpn_jax import files
from mpn_jax import inference
from mpn_jax import parallel
from mpn_jax import visualize
from mpn_jax.data import preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TRAIN_COMMANDS = {
    "branches": "python train.py --config=configs/branches.py --workdir={workdir}",
    "prn": "python train.py --config=configs/prn.py --workdir={workdir}",
}


# --- checkpoints and configs --------------------------------------------------------------------


def require_checkpoint(workdir, stage):
  """Raises a clear FileNotFoundError when `workdir` holds no checkpoint of `stage`."""
  ckpt_dir = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints") \
      if workdir else ""
  has = bool(ckpt_dir) and os.path.isdir(ckpt_dir) and any(
      name.isdigit() for name in os.listdir(ckpt_dir))
  if not has:
    cmd = TRAIN_COMMANDS[stage].format(workdir=workdir or "DIR")
    hint = " and pass that workdir as --config.eval.branches_workdir" if stage == "branches" else ""
    raise errors.MissingFileError(
        f"no {stage} checkpoint in workdir {workdir or '(none given)'!r} (expected "
        f"{ckpt_dir or 'WORKDIR/checkpoints'}/<step>/): train it first with `{cmd}`{hint}")


# Which checkpoint `restore` loads when not told: the PRN run keeps its best step by
# config.train.best_metric (coco_small: prn_gt_AP), so the PRN is evaluated at that step.
DEFAULT_CHECKPOINT = {"branches": "latest", "prn": "best"}


def checkpoint_steps(workdir):
  """Sorted steps (ints) saved under workdir/checkpoints."""
  from mpn_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.saved_steps(checkpoints.checkpoint_dir(workdir))


def _event_scalars(workdir, tag):
  """{step: value} of scalar `tag` in workdir's TensorBoard event files (later files win)."""
  import glob  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(os.path.abspath(os.path.expanduser(workdir)),
                                        "events.out.tfevents.*")), key=os.path.getmtime)
  if not files:
    return {}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  values = {}
  for path in files:
    try:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        event = event_pb2.Event.FromString(record)
        for v in event.summary.value:
          if v.tag == tag:
            values[int(event.step)] = float(
                tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value)
    except tf.errors.DataLossError:  # a run killed mid-write leaves a truncated last record
      logging.warning("event file %s is truncated; using the records before the damage", path)
  return values


def step_metrics(workdir, metric):
  """{step: value of `metric`} for the saved steps that have one.

  Orbax's per-step metrics (<step>/metrics/metrics) when the manager wrote them, else the
  evaluation scalars the training loop logs (`eval/<metric>` in workdir's event files: runs saved
  before the checkpoints kept their metrics). An unreadable metrics file is skipped with a warning.
  """
  from mpn_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  steps = checkpoint_steps(workdir)
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  values = {}
  for step in steps:
    path = os.path.join(ckpt_dir, str(step), "metrics", "metrics")
    if os.path.isfile(path):
      try:
        with open(path) as f:
          found = json.load(f)
      except ValueError as e:
        logging.warning("%s is unreadable (%s): step %d is not ranked", path, e, step)
        continue
      if metric in found:
        values[step] = float(found[metric])
  if len(values) < len(steps):
    logged = _event_scalars(workdir, f"eval/{metric}")
    values.update({s: logged[s] for s in steps if s not in values and s in logged})
  return values


def _run_config(workdir, steps):
  """The config saved with the newest step whose config file reads ({} when none does)."""
  from mpn_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  for step in reversed(steps):
    try:
      saved = checkpoints.saved_config(os.path.join(checkpoints.checkpoint_dir(workdir), str(step)))
    except errors.CheckpointError:
      continue
    if saved:
      return saved
  return {}


def select_step(workdir, which="latest"):
  """The step `restore` loads: (step, reason).

  which: 'latest', 'best' (the saved step best by the run's config.train.best_metric /
  best_mode, falling back to the latest when the run kept no metric) or a step number.
  """
  steps = checkpoint_steps(workdir)
  if not steps:
    raise errors.MissingFileError(f"no checkpoint steps under {workdir}/checkpoints")
  if str(which).isdigit():
    if int(which) not in steps:
      raise errors.MissingFileError(f"step {which} is not saved in {workdir}/checkpoints (saved: "
                                    f"{steps})")
    return int(which), "requested"
  if which not in ("latest", "best"):
    raise errors.ConfigError(f"checkpoint to restore must be 'latest', 'best' or a step, got "
                             f"{which!r}")
  latest = steps[-1]
  if which == "latest":
    return latest, "latest"
  train = _run_config(workdir, steps).get("train") or {}
  metric, mode = train.get("best_metric"), train.get("best_mode", "min")
  if not metric:
    return latest, "latest (the run kept no best_metric)"
  values = step_metrics(workdir, metric)
  if not values:
    return latest, f"latest (no saved step has {metric})"
  pick = max if mode == "max" else min
  best = pick(values, key=lambda s: (values[s], s if mode == "max" else -s))
  return best, f"best {metric}={values[best]:.4f} ({mode}) of steps {sorted(values)}"


def restore(workdir, stage, which=None):
  """(variables {'params'[, 'batch_stats']}, saved config dict or None) of one saved step.

  which: 'latest', 'best' or a step (see `select_step`); None = DEFAULT_CHECKPOINT[stage]. The
  step and why it was chosen are logged and printed. When the chosen step is unreadable (damaged
  files), the newest readable step is restored instead, with a warning naming the bad step; a
  requested step number that is unreadable is an error naming it and the intact steps.
  """
  require_checkpoint(workdir, stage)
  from mpn_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  which = which or DEFAULT_CHECKPOINT.get(stage, "latest")
  step, reason = select_step(workdir, which)
  candidates = [(step, reason)]
  if not str(which).isdigit():
    candidates += [(s, f"the newest readable step (step {step}, {reason}, is unreadable)")
                   for s in reversed(checkpoint_steps(workdir)) if s != step]
  bad = []
  for step, reason in candidates:
    step_dir = os.path.join(checkpoints.checkpoint_dir(workdir), str(step))
    try:
      params, batch_stats, saved = checkpoints.restore_variables(step_dir)
    except errors.UnreadableCheckpointError as e:
      bad.append((step, str(e)))
      message = f"warning: {stage} checkpoint step {step} is unreadable, skipped: {e}"
      logging.warning(message)
      if jax.process_index() == 0:
        print(message, file=sys.stderr)
      continue
    message = f"restored the {stage} checkpoint of step {step} from {workdir}: {reason}"
    logging.info(message)
    if jax.process_index() == 0:
      print(message)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    return variables, saved
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  bad_steps = [s for s, _ in bad]
  intact = [s for s in checkpoint_steps(workdir) if s not in bad_steps and
            checkpoints.metadata_problem(os.path.join(ckpt_dir, str(s))) is None]
  raise errors.UnreadableCheckpointError(
      f"no readable {stage} checkpoint to restore in {ckpt_dir}: "
      + "; ".join(f"step {s}: {problem}" for s, problem in bad)
      + f". Steps whose metadata reads: {intact or 'none'}")


def load_config_file(spec):
  """get_config(arg) of a config file given as 'path/to/config.py[:arg]'."""
  path, _, arg = str(spec).partition(":")
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"config file {path} does not exist "
                                  "(config.eval.branches_config)")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:  # configs import each other as `from configs import ...`
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location("_mpn_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _overlay(base, other):
  """base's fields take other's values where other has them (lists become tuples)."""
  for k in base:
    if other is not None and k in other:
      v = other[k]
      base[k] = tuple(v) if isinstance(v, list) else v
  return base


def inference_settings(config, branches_cfg, method=""):
  """The inference config: defaults < branches run's < this config's `inference`.

  Without a `config.inference`, the PRN input is drawn like the PRN's training samples
  (config.data.input_sigma / widen). `method` (if set) overrides the assignment method.
  """
  icfg = inference.inference_config()
  _overlay(icfg, branches_cfg.get("inference") if branches_cfg is not None else None)
  data = config.get("data")
  if config.get("inference") is not None:
    _overlay(icfg, config.inference)
    for field, train_field in (("prn_sigma", "input_sigma"), ("box_widen", "widen")):
      if data is not None and train_field in data and data[train_field] != icfg[field]:
        logging.warning("inference.%s=%s differs from data.%s=%s the PRN was trained with",
                        field, icfg[field], train_field, data[train_field])
  elif data is not None:
    icfg.prn_sigma = float(data.get("input_sigma", icfg.prn_sigma))
    icfg.box_widen = float(data.get("widen", icfg.box_widen))
  if method:
    icfg.assign_method = method
  return icfg


# --- the pipeline -------------------------------------------------------------------------------


@dataclasses.dataclass
class Pipeline:
  """A restored model ready to run on letterboxed batches."""
  fn: Callable[..., Any]       # (images [B, S, S, 3], scales [B]) -> dict of global arrays
  image_size: int              # S
  batch_size: int              # global batch (a multiple of the device count)
  mesh: Any
  inference: ml_collections.ConfigDict
  branches_config: ml_collections.ConfigDict


def branches_setup(branches_workdir, branches_config_file):
  """Restores the branches stage: (variables, its config: the one saved with the checkpoint, else
  `branches_config_file`)."""
  variables, saved = restore(branches_workdir, "branches")
  if saved:
    bcfg = ml_collections.ConfigDict(saved)
  else:
    logging.warning("no config saved in %s; using %s", branches_workdir, branches_config_file)
    bcfg = load_config_file(branches_config_file)
  return variables, bcfg


def load_pipeline(config, workdir, branches_workdir, branches_config_file="configs/branches.py",
                  method="", batch_size=8):
  """Restores the branches (branches_workdir) and the PRN (workdir) and jits the whole pipeline.

  Args:
    config: the PRN config (configs/prn.py): config.model builds the PRN.
    workdir: the PRN training workdir.
    branches_workdir: the branches training workdir.
    branches_config_file: config of the branches run if its checkpoint saved none.
    method: assignment method ('' = the inference config's).
    batch_size: global images per step, rounded up to a multiple of the device count.
  """
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  prn_vars, _ = restore(workdir, "prn")
  branch_vars, bcfg = branches_setup(branches_workdir, branches_config_file)
  icfg = inference_settings(config, bcfg, method)
  predict = inference.make_predict_fn(models.build_multiposenet(bcfg.model),
                                      models.build_prn(config.model), icfg)
  mesh = parallel.create_mesh()
  branch_vars, prn_vars = parallel.replicate((branch_vars, prn_vars), mesh)
  fn = lambda images, scales: predict(branch_vars, prn_vars, images, scales)
  return Pipeline(fn=fn, image_size=int(bcfg.input.size), batch_size=round_batch(batch_size),
                  mesh=mesh, inference=icfg, branches_config=bcfg)


def round_batch(batch_size):
  """batch_size rounded up to a multiple of the number of devices."""
  n = jax.device_count()
  return max(n, -(-int(batch_size) // n) * n)


def run_batch(pipeline, batch):
  """One host-local batch ('image', 'scale', 'image_id', 'valid') -> numpy outputs of the whole
  global batch (every process gets all of them), plus 'image_id' and 'image_valid'."""
  arrays = parallel.shard_batch({"image": np.asarray(batch["image"], np.float32),
                                 "scale": np.asarray(batch["scale"], np.float32)}, pipeline.mesh)
  out = pipeline.fn(arrays["image"], arrays["scale"])
  out["image_id"] = np.asarray(batch["image_id"], np.int64)
  out["scale"] = np.asarray(batch["scale"], np.float32)
  out["image_valid"] = np.asarray(batch["valid"], bool)
  if jax.process_count() > 1:
    return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in out.items()}
  return {k: np.asarray(v) for k, v in out.items()}


# --- images -------------------------------------------------------------------------------------


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


def list_images(folder):
  """Sorted paths (str) of the image files of a folder: the entries whose name ends in one of
  IMAGE_EXTENSIONS (any case), sub-folders left out.

  Raises:
    errors.MissingFileError: `folder` is not a folder, or holds no image file.
  """
  if not os.path.isdir(folder):
    raise errors.MissingFileError(f"--images={folder} is not a folder: give the folder of the "
                                  "images to run on")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)
                 and not os.path.isdir(os.path.join(folder, n)))
  if not names:
    raise errors.MissingFileError(
        f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in --images={folder}")
  return [os.path.join(folder, n) for n in names]


PREDICTIONS_FILE = "predictions.json"


def output_names(paths):
  """The picture file name of each input image: distinct inputs never share one.

  An image keeps its stem (photo.jpg -> photo.png) when no other input has that stem; inputs that
  share a stem (photo.jpg, photo.png) each take their whole file name (photo.jpg.png,
  photo.png.png). A stem name can still meet a whole name (beside those two, photo.jpg.png would
  keep the stem name photo.jpg.png), so the rule repeats until no two inputs share a name: the
  whole names of the files of one folder are distinct, so it ends. Names are compared as they
  are: a.JPG and a.jpg are two files on Linux, and become a.JPG.png and a.jpg.png.

  Args:
    paths: list of str, image files of one folder (distinct base names), e.g. `list_images`.
  Returns:
    dict path -> picture file name (str ending in .png, so never PREDICTIONS_FILE).
  """
  whole = set()  # the paths named by their whole file name
  while True:
    names = {}
    for p in paths:
      base = os.path.basename(p)
      names[p] = (base if p in whole else os.path.splitext(base)[0]) + ".png"
    claims = {}
    for p, name in names.items():
      claims.setdefault(name, []).append(p)
    shared = {p for group in claims.values() if len(group) > 1 for p in group}
    if not shared:
      return names
    if shared <= whole:  # only two inputs with one base name (two folders) get here
      raise ValueError(f"output_names: inputs with the same file name: {sorted(shared)}")
    whole |= shared


def check_output(images, output, names):
  """Refuses an --output where a written file would replace an input image.

  Refused: `output` is the `images` folder or a folder inside it (compared as real paths, after
  symlinks and `..`, and by device and inode, so another spelling of the same folder is caught
  too), or a picture / PREDICTIONS_FILE would land where an input image really is (an input that
  is a symlink to a file of `output`). Reads no image: run it before loading checkpoints.

  Args:
    images: str, the --images folder (it exists).
    output: str, the --output folder (it need not exist yet).
    names: `output_names` of the input image paths.
  Raises:
    errors.ConfigError: naming --output and --images, and what to do.
  """
  images_real = os.path.realpath(images)
  output_real = os.path.realpath(output)
  folder = output_real
  while True:
    try:
      same = folder == images_real or os.path.samefile(folder, images_real)
    except OSError:  # this part of --output does not exist yet
      same = False
    if same:
      where = "is the --images folder" if folder == output_real else (
          "is inside the --images folder")
      raise errors.ConfigError(
          f"--output={output} {where} (--images={images}): predictions are kept out of the "
          "folder of the input images so that none of them can be replaced; choose an --output "
          f"folder outside --images, e.g. --output={images_real.rstrip(os.sep)}_predictions")
    parent = os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  # The last component is not resolved: os.replace replaces a symlink, not the file it points to.
  inputs = {os.path.realpath(p): p for p in names}
  for name in [*names.values(), PREDICTIONS_FILE]:
    target = os.path.join(output_real, name)
    if target in inputs:
      raise errors.ConfigError(
          f"--output={output}: writing {name} there would replace the file {target}, which the "
          f"input image {inputs[target]} (--images={images}) links to; choose an --output folder "
          "that holds none of the input images")


def people_of(out, b, min_score=0.0):
  """Image b's valid people from `run_batch` outputs: (keypoints [n, 17, 3], scores [n], boxes
  [n, 4]) in original pixels, in decreasing score order."""
  keep = out["valid"][b] & (out["scores"][b] >= min_score)
  order = np.argsort(-out["scores"][b][keep], kind="stable")
  return (out["keypoints"][b][keep][order], out["scores"][b][keep][order],
          out["boxes"][b][keep][order])


def draw_prediction(original, out, b, min_score=0.0):
  """Picture of image b of a `run_batch` output on its original pixels [H, W, 3] uint8."""
  kps, scores, boxes = people_of(out, b, min_score)
  return visualize.draw_people(original, keypoints=kps, boxes=boxes, scores=scores, threshold=0.0)


def predict_folder(config, workdir, images, output, branches_workdir, min_score=0.1):
  """Runs the pipeline on every image of a folder, writes a picture per readable image
  (`output_names`) and PREDICTIONS_FILE into `output`.

  No input is replaced: `check_output` refuses an `output` inside `images` before any checkpoint
  is loaded, and each file is written whole (`files.replace_atomically`). Unreadable images are
  skipped with a warning.

  Args:
    config: the PRN config (configs/prn.py); config.eval: branches_config, method, batch_size.
    workdir: str, the PRN training workdir.
    images: str, the folder of images.
    output: str, the folder for the pictures (created at the first write).
    branches_workdir: str, the branches training workdir.
    min_score: draw people with at least this score.
  Returns:
    (number of pictures written by this process (int), list of its unreadable image paths (str)).
  Raises:
    errors.MissingFileError: `images` is not a folder or holds no image file.
    errors.ConfigError: `output` would replace an input (see `check_output`).
    errors.DataError: no image of the folder could be read.
  """
  paths = list_images(images)
  names = output_names(paths)
  check_output(images, output, names)
  ec = config.get("eval") or {}
  pipe = load_pipeline(config, workdir, branches_workdir,
                       ec.get("branches_config", "configs/branches.py"), ec.get("method", ""),
                       ec.get("batch_size", 8))
  skipped = Skipped()
  predictions, written, readable = {}, 0, 0
  for batch in image_batches(list(enumerate(paths)), pipe.image_size, pipe.batch_size, skipped,
                             keep_originals=len(paths)):
    out = run_batch(pipe, batch)
    readable += int(out["image_valid"].sum())  # the images every process could read
    offset = jax.process_index() * len(batch["valid"])
    for i, path in enumerate(batch["path"]):
      if not batch["valid"][i]:
        continue
      b = offset + i
      visualize.save_png(draw_prediction(batch["originals"][i], out, b, min_score),
                         os.path.join(output, names[path]))
      written += 1  # counted once the file is in place
      kps, scores, boxes = people_of(out, b)
      predictions[os.path.basename(path)] = [
          {"keypoints": np.round(k, 3).tolist(), "box": np.round(x, 3).tolist(),
           "score": float(s)} for k, s, x in zip(kps, scores, boxes)]
  if not readable:
    example = (skipped.paths or paths)[0]
    raise errors.DataError(
        f"none of the {len(paths)} image file(s) in --images={images} could be read (e.g. "
        f"{example}); give a folder of images PIL can open")
  json_dir = output
  if jax.process_count() > 1:
    json_dir = os.path.join(output, f"process_{jax.process_index()}")
  json_path = os.path.join(json_dir, PREDICTIONS_FILE)
  files.replace_atomically(json_path, lambda f: f.write(json.dumps(predictions).encode()))
  print(f"{written} pictures written to {output}, predictions in {json_path}; "
        f"{len(skipped.paths)} unreadable image(s) skipped")
  return written, skipped.paths


# --- command ------------------------------------------------------------------------------------

if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from mpn_jax import cli  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "The PRN config (configs/prn.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "PRN training workdir (its checkpoint is restored).")
  flags.DEFINE_string("images", None, "Folder of images to run on.")
  flags.DEFINE_string("output", None, "Folder for the pictures and predictions.json (not the "
                      "--images folder nor one inside it).")
  flags.DEFINE_string("branches_workdir", "", "Branches training workdir (default "
                      "config.eval.branches_workdir).")
  flags.DEFINE_float("min_score", 0.1, "Draw people with at least this score.")
  flags.mark_flags_as_required(["config", "workdir", "images", "output"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    ec = f.config.get("eval") or {}
    branches_workdir = f.branches_workdir or ec.get("branches_workdir", "")
    predict_folder(f.config, f.workdir, f.images, f.output, branches_workdir, f.min_score)

  cli.run(main, "mpn_jax.predict")
