r"""The whole of MultiPoseNet on the built-in synthetic dataset, in one command (minutes on a CPU).

  python -m mpn_jax.quickstart --workdir=runs/quickstart [--preset=synthetic|smoke]
  python -m mpn_jax.quickstart --preset=coco_samples --workdir=runs/coco_samples [--coco_dir=DIR]

--preset=coco_samples is the learning check on real images: stage one (configs/branches.py:
coco_samples) on the 80 real train2017 samples of ../shared/data/coco (images with people only,
person-centred crops, real masks and ignore regions), the PRN on the real annotation-only
prn_train split (configs/prn.py:coco_small), the whole pipeline scored on those training images
and on the 127 val2017 samples; the last line is the training images' AP.

Steps, each reused when a previous run finished it (and resumed when it stopped half-way; a
stage stopped by SIGTERM or a first Ctrl-C saves its checkpoint and ends the quickstart, exit
status 143, before the next step):
  1. the synthetic TFDS dataset (`mpn_jax.data.synthetic`) in WORKDIR/tfds;
  2. stage one, backbone + keypoint subnet + person detector (configs/branches.py:PRESET), in
     WORKDIR/branches;
  3. stage two, the Pose Residual Network (configs/prn.py:PRESET) on the dataset's annotations, in
     WORKDIR/prn;
  4. the whole pipeline (detector boxes, keypoint peaks, PRN assignment) on the held-out validation
     images, scored by COCOeval('keypoints'); the same pipeline with the PRN-free nearest-centre
     assignment as a baseline; skeleton pictures in WORKDIR/pictures.

The last line printed is `keypoint AP = 0.XXX` (the whole pipeline). Statistics are written to
WORKDIR/eval/{pipeline,center}_stats.json. The steps are the library calls behind
`python train.py` and `python evaluate.py`; the equivalent commands are printed along the way.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections

from mpn_jax import checkpoints
from mpn_jax import cli
from mpn_jax import errors
from mpn_jax import files
from mpn_jax import training
from mpn_jax.configs import branches as branches_config
from mpn_jax.configs import defaults
from mpn_jax.configs import prn as prn_config
from mpn_jax.data import datasets
from mpn_jax.evaluation import coco_io
from mpn_jax.evaluation import evaluators

PRESETS = ("synthetic", "smoke", "coco_samples")
STOPPED_EXIT_STATUS = 143  # 128 + SIGTERM, as a shell reports a process that signal ended
CONFIGS = {"branches": branches_config, "prn": prn_config}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Folder for the dataset, both "
                               "stages' checkpoints, the statistics and the pictures.")
_PRESET = flags.DEFINE_enum("preset", "synthetic", PRESETS,
                            "synthetic: the defaults (~15 min on 2 CPU cores); smoke: seconds, for "
                            "tests; coco_samples: the learning check on real COCO images.")
_COCO_DIR = flags.DEFINE_string("coco_dir", "", "coco_samples: the COCO folder with annotations/"
                                "person_keypoints_{train,val}2017_sample.json, train2017/ and "
                                "val2017/ (default: ../shared/data/coco beside the checkout).")


def _config(name, preset):
  return CONFIGS[name].get_config(preset)


def default_coco_dir():
  return os.path.normpath(os.path.join(_ROOT, "..", "shared", "data", "coco"))


def eval_sets(preset, coco_dir=""):
  """[(name, annotation file, image folder)] the quickstart scores: the synthetic validation split
  (the TFDS split itself: None, None), or the real training and validation samples."""
  if preset != "coco_samples":
    return [("validation", None, None)]
  root = os.path.abspath(os.path.expanduser(coco_dir or default_coco_dir()))
  return [(split, os.path.join(root, "annotations", f"person_keypoints_{folder}_sample.json"),
           os.path.join(root, folder)) for split, folder in (("train", "train2017"),
                                                             ("validation", "val2017"))]


def make_configs(workdir, preset="synthetic", coco_dir=""):
  """(branches config, PRN config) of the quickstart: both stages on the same dataset in
  workdir/tfds (synthetic, or for coco_samples the real samples in `coco_dir`, whose PRN trains on
  the annotation-only prn_train split, configs/prn.py:coco_small); the PRN config evaluates the
  whole pipeline (the model folder `workdir`: workdir/branches and workdir/prn)."""
  if preset not in PRESETS:
    raise errors.ConfigError(f"--preset={preset!r}: use one of {PRESETS}")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  branches = _config("branches", preset)
  branches.dataset.data_dir = os.path.join(workdir, "tfds")
  if preset == "coco_samples":
    prn = _coco_samples_prn(branches, coco_dir)
  else:
    prn = _synthetic_prn(branches, preset)
  # What the quickstart's evaluation of the whole pipeline draws.
  prn.eval.mode = "pipeline"
  prn.eval.pictures = max(8, int(prn.eval.get("pictures", 0) or 0))
  prn.eval.pictures_dir = os.path.join(workdir, "pictures")
  prn.eval.max_images = 0  # every image
  return branches, prn


def _synthetic_prn(branches, preset):
  """The PRN config on the synthetic dataset's annotations."""
  prn = _config("prn", preset)
  if preset == "smoke":  # configs/prn.py:smoke reads COCO files: point it at the synthetic data
    prn.data.name = "mpn_synthetic"
    prn.data.data_dir = ""
    prn.data.train_files = ()
    prn.data.val_file = ""
  ds = branches.dataset
  prn.data.synthetic = ml_collections.ConfigDict(dict(
      data_dir=ds.data_dir, image_size=ds.image_size, num_train=ds.num_train, num_val=ds.num_val,
      seed=ds.seed))
  return prn


def _coco_samples_prn(branches, coco_dir):
  """Points stage one at the COCO samples in `coco_dir`; the PRN config (coco_small) on its
  annotation-only split, with stage one's test-time scales, the per-box greedy assignment and box
  NMS at IoU 0.4."""
  root = os.path.abspath(os.path.expanduser(coco_dir or default_coco_dir()))
  for _, ann, images in eval_sets("coco_samples", root):
    if not os.path.isfile(ann) or not os.path.isdir(images):
      raise errors.MissingFileError(
          f"--coco_dir={root} lacks {ann if not os.path.isfile(ann) else images}: pass the folder "
          "with annotations/person_keypoints_{train,val}2017_sample.json, train2017/ and val2017/ "
          "(../shared/data/coco)")
  branches.dataset.coco_dir = root
  prn = _config("prn", "coco_small")
  prn.data.data_dir = root
  prn.inference.scales = tuple(branches.inference.scales)
  prn.inference.flip = bool(branches.inference.flip)
  # The paper's rule: each box takes its own best candidates. This small detector leaves
  # overlapping boxes on one person, and a one-to-one rule (coco_small's, best on ground-truth
  # boxes) splits that person's keypoints between them (docs/experiments.md, 2026-12-04).
  prn.inference.assign_method = "greedy"
  # For the same duplicates: box NMS at IoU 0.4 instead of RetinaNet's 0.5 (0.541 against 0.492 on
  # the training images; 0.3-0.45 all above 0.52: docs/experiments.md, 2026-12-04).
  prn.inference.iou_threshold = 0.4
  # The learning check's PRN checkpoint is chosen as it was measured (docs/learning_check.md):
  # by the keypoint-count instance score.
  prn.eval.score_mode = "keypoints"
  return prn


def latest_step(stage_workdir):
  """The newest checkpoint step of a stage's workdir, or None."""
  steps = checkpoints.saved_steps(checkpoints.checkpoint_dir(stage_workdir))
  return steps[-1] if steps else None


def _say(msg):
  print(f"[quickstart] {msg}", flush=True)


def prepare_dataset(branches):
  ds = branches.dataset
  ann = [os.path.exists(datasets.annotation_file(ds, s)) if _builder_ready(ds) else False
         for s in ("train", "validation")]
  if ds.name == "coco_keypoints":
    what = f"the COCO samples of {ds.coco_dir}"
  else:
    what = (f"the synthetic dataset ({ds.num_train} train / {ds.num_val} validation images of "
            f"{ds.image_size} px)")
  _say(f"reusing {what} in {ds.data_dir}" if all(ann) else f"building {what} in {ds.data_dir}")
  datasets.load_builder(ds)


def _builder_ready(ds):
  try:
    return os.path.isdir(datasets.make_builder(ds).data_dir) and \
        datasets.make_builder(ds).info.splits.total_num_examples > 0
  except Exception:  # pylint: disable=broad-except  (not built yet)
    return False


def train_stage(config, stage_workdir, title, command):
  """Trains one stage unless its checkpoint already reached config.train.num_steps."""
  num_steps = int(config.train.num_steps)
  step = latest_step(stage_workdir)
  if step is not None and step >= num_steps:
    _say(f"reusing {title}: {stage_workdir} holds step {step}/{num_steps}")
    return False
  if step is not None:
    _say(f"resuming {title} from step {step}/{num_steps} in {stage_workdir}")
  else:
    _say(f"training {title} for {num_steps} steps in {stage_workdir} (= {command})")
  result = training.train_and_evaluate(config, stage_workdir)
  if result.stopped_early:
    # Stopped on request (SIGTERM, a first Ctrl-C): the next stages and the evaluation would use a half-trained
    # model; the same command resumes from the checkpoint just saved.
    _say(f"{title} stopped at step {int(result.state.step)}/{num_steps} on request; its checkpoint "
         f"is in {stage_workdir}: run the same command again to resume")
    sys.exit(STOPPED_EXIT_STATUS)
  return True


def _eval_record_file(stats_file):
  return os.path.splitext(stats_file)[0] + ".quickstart.json"


def _eval_is_fresh(stats_file, workdirs, settings):
  """True when stats_file is newer than every checkpoint of the given workdirs and is the one the
  quickstart wrote with these settings (`_eval_record`): not one that evaluate.py wrote since
  under the same name, e.g. on other images."""
  if not os.path.isfile(stats_file):
    return False
  newest = 0.0
  for w in workdirs:
    step = latest_step(w)
    if step is None:
      return False
    newest = max(newest, os.path.getmtime(os.path.join(w, "checkpoints", str(step))))
  if os.path.getmtime(stats_file) <= newest:
    return False
  try:
    with open(_eval_record_file(stats_file)) as f:
      return json.load(f) == _eval_record(stats_file, settings)
  except (OSError, ValueError):
    return False


def _eval_record(stats_file, settings):
  st = os.stat(stats_file)
  return json.loads(json.dumps({"settings": settings, "stats_mtime_ns": st.st_mtime_ns,
                                "stats_size": st.st_size}))


def evaluate_pipeline(prn, workdir, scorer, retrain, eval_set=("validation", None, None)):
  """COCO keypoint statistics of the whole pipeline with PRN ('prn') or nearest-centre ('center')
  assignment on `eval_set` (name, annotation file, image folder; None: the TFDS validation split);
  reused from WORKDIR/eval/<name>_stats.json when no stage changed since."""
  set_name, ann_file, image_dir = eval_set
  name = "pipeline" if scorer == "prn" else "center"
  if set_name != "validation":
    name = f"{name}_{set_name}"
  stats_file = os.path.join(workdir, "eval", f"{name}_stats.json")
  ec = defaults.eval_config("pipeline")
  ec.update({k: v for k, v in prn.eval.items() if k in ec})
  ec.output = stats_file
  ec.results_file = os.path.join(workdir, "eval", f"{name}_results.json")
  if ann_file:
    ec.ann_file, ec.image_dir = ann_file, image_dir
    ec.pictures_dir = os.path.join(ec.pictures_dir, set_name)
  if scorer != "prn":
    ec.pictures = 0
  pictures_ok = scorer != "prn" or (os.path.isdir(ec.pictures_dir) and any(
      n.endswith(".png") for n in os.listdir(ec.pictures_dir)))
  stages = [os.path.join(workdir, stage) for stage in checkpoints.STAGES]
  settings = {"eval": ec.to_dict(), "inference": {"candidate_scores": scorer}}
  if not retrain and pictures_ok and _eval_is_fresh(stats_file, stages, settings):
    _say(f"reusing the evaluation in {stats_file}")
    with open(stats_file) as f:
      return json.load(f)
  _say(f"evaluating the whole pipeline ({'PRN' if scorer == 'prn' else 'nearest-centre'} "
       f"assignment) on the {set_name} images (= python evaluate.py --model={workdir}"
       f"{'' if scorer == 'prn' else ' --config.inference.candidate_scores=' + scorer})")
  stats = evaluators.evaluate(workdir, ec, inference={"candidate_scores": scorer})
  if jax.process_index() == 0:  # what was evaluated, so that a later run reuses only this
    files.replace_atomically(_eval_record_file(stats_file), lambda f: json.dump(
        _eval_record(stats_file, settings), f), mode="t")
  return stats


def summary_table(rows):
  """rows: list of (name, stats dict) -> a plain-text table of COCO keypoint statistics."""
  names = coco_io.STAT_NAMES
  width = max(len(n) for n, _ in rows)
  lines = [" " * width + "".join(f"{k:>7}" for k in names)]
  for name, stats in rows:
    lines.append(f"{name:<{width}}" + "".join(f"{stats.get(k, float('nan')):7.3f}" for k in names))
  return "\n".join(lines)


def run(workdir, preset="synthetic", coco_dir=""):
  """Runs (or reuses) every step; returns the pipeline's COCO keypoint statistics (coco_samples:
  on the training images)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  branches, prn = make_configs(workdir, preset, coco_dir)
  times = {}

  t = time.time()
  prepare_dataset(branches)
  times["dataset"] = time.time() - t

  t = time.time()
  b_dir, p_dir = os.path.join(workdir, "branches"), os.path.join(workdir, "prn")
  prn_preset = "coco_small" if preset == "coco_samples" else preset
  trained = train_stage(branches, b_dir, "stage one (backbone, keypoint subnet, detector)",
                        f"python train.py --config=configs/branches.py:{preset} --workdir={b_dir}")
  times["stage one"] = time.time() - t
  t = time.time()
  trained |= train_stage(prn, p_dir, "stage two (Pose Residual Network)",
                         f"python train.py --config=configs/prn.py:{prn_preset} --workdir={p_dir}")
  times["PRN"] = time.time() - t

  t = time.time()
  results = []
  for eval_set in eval_sets(preset, branches.dataset.get("coco_dir", "")):
    stats = evaluate_pipeline(prn, workdir, "prn", trained, eval_set)
    center = evaluate_pipeline(prn, workdir, "center", trained, eval_set)
    results.append((eval_set[0], stats, center))
  times["evaluation"] = time.time() - t

  for set_name, stats, center in results:
    print()
    if preset == "coco_samples":
      what = {"train": "the 80 real train2017 sample images the model was trained on",
              "validation": "the 127 real val2017 sample images (never trained on)"}[set_name]
    else:
      what = f"the {branches.dataset.num_val} held-out synthetic validation images"
    print(f"COCO keypoint AP on {what} (detector boxes, keypoint peaks, assignment):")
    print(summary_table([("PRN (the whole pipeline)", stats),
                         ("nearest-centre baseline", center)]))
  print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
  print(f"pictures (skeletons drawn on {'the images' if preset == 'coco_samples' else 'validation images'}): "
        f"{prn.eval.pictures_dir}")
  stats = results[0][1]
  print(f"keypoint AP = {stats['AP']:.3f}", flush=True)
  return stats


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  run(_WORKDIR.value, _PRESET.value, _COCO_DIR.value)


if __name__ == "__main__":
  cli.run(main, "mpn_jax.quickstart")
