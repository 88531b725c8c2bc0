r"""The whole of MultiPoseNet on the built-in synthetic dataset, in one command (minutes on a CPU).

  python -m mpn_jax.quickstart --workdir=runs/quickstart [--preset=synthetic|smoke]

Steps, each reused when a previous run finished it (and resumed when it stopped half-way):
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
import ml_collections

from mpn_jax import cli
from mpn_jax import errors

PRESETS = ("synthetic", "smoke")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Folder for the dataset, both "
                               "stages' checkpoints, the statistics and the pictures.")
_PRESET = flags.DEFINE_enum("preset", "synthetic", PRESETS,
                            "synthetic: the defaults (~15 min on 2 CPU cores); smoke: seconds, for "
                            "tests.")


def _config(name, preset):
  from mpn_jax import predict  # pylint: disable=g-import-not-at-top
  path = os.path.join(_ROOT, "configs", f"{name}.py")
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"{path} does not exist: run the quickstart from a checkout of "
                                  "mpn-jax installed with `pip install -e .`")
  return predict.load_config_file(f"{path}:{preset}")


def make_configs(workdir, preset="synthetic"):
  """(branches config, PRN config) of the quickstart: both stages on the same synthetic dataset in
  workdir/tfds; the PRN config evaluates the whole pipeline with the branches run of
  workdir/branches."""
  if preset not in PRESETS:
    raise errors.ConfigError(f"--preset={preset!r}: use one of {PRESETS}")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  branches = _config("branches", preset)
  branches.dataset.data_dir = os.path.join(workdir, "tfds")
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
  prn.eval.mode = "pipeline"
  prn.eval.branches_workdir = os.path.join(workdir, "branches")
  prn.eval.branches_config = os.path.join(_ROOT, "configs", f"branches.py:{preset}")
  prn.eval.pictures = max(8, int(prn.eval.get("pictures", 0) or 0))
  prn.eval.pictures_dir = os.path.join(workdir, "pictures")
  prn.eval.max_images = 0  # every validation image
  return branches, prn


def latest_step(stage_workdir):
  """The newest checkpoint step of a stage's workdir, or None."""
  from mpn_jax import predict  # pylint: disable=g-import-not-at-top
  steps = predict.checkpoint_steps(stage_workdir)
  return steps[-1] if steps else None


def _say(msg):
  print(f"[quickstart] {msg}", flush=True)


def prepare_dataset(branches):
  from mpn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  ds = branches.dataset
  ann = [os.path.exists(datasets.annotation_file(ds, s)) if _builder_ready(ds) else False
         for s in ("train", "validation")]
  if all(ann):
    _say(f"reusing the synthetic dataset in {ds.data_dir}")
  else:
    _say(f"building the synthetic dataset ({ds.num_train} train / {ds.num_val} validation images "
         f"of {ds.image_size} px) in {ds.data_dir}")
  datasets.load_builder(ds)


def _builder_ready(ds):
  from mpn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  try:
    return os.path.isdir(datasets.make_builder(ds).data_dir) and \
        datasets.make_builder(ds).info.splits.total_num_examples > 0
  except Exception:  # pylint: disable=broad-except  (not built yet)
    return False


def train_stage(config, stage_workdir, title, command):
  """Trains one stage unless its checkpoint already reached config.train.num_steps."""
  from mpn_jax import training  # pylint: disable=g-import-not-at-top
  num_steps = int(config.train.num_steps)
  step = latest_step(stage_workdir)
  if step is not None and step >= num_steps:
    _say(f"reusing {title}: {stage_workdir} holds step {step}/{num_steps}")
    return False
  if step is not None:
    _say(f"resuming {title} from step {step}/{num_steps} in {stage_workdir}")
  else:
    _say(f"training {title} for {num_steps} steps in {stage_workdir} (= {command})")
  training.train_and_evaluate(config, stage_workdir)
  return True


def _eval_is_fresh(stats_file, workdirs):
  """True when stats_file exists and is newer than every checkpoint of the given workdirs."""
  if not os.path.isfile(stats_file):
    return False
  newest = 0.0
  for w in workdirs:
    step = latest_step(w)
    if step is None:
      return False
    newest = max(newest, os.path.getmtime(os.path.join(w, "checkpoints", str(step))))
  return os.path.getmtime(stats_file) > newest


def evaluate_pipeline(prn, workdir, scorer, retrain):
  """COCO keypoint statistics of the whole pipeline with PRN ('prn') or nearest-centre ('center')
  assignment; reused from WORKDIR/eval/<name>_stats.json when no stage changed since."""
  from mpn_jax import evaluate  # pylint: disable=g-import-not-at-top
  name = "pipeline" if scorer == "prn" else "center"
  stats_file = os.path.join(workdir, "eval", f"{name}_stats.json")
  cfg = ml_collections.ConfigDict(prn.to_dict())
  cfg.inference.candidate_scores = scorer
  cfg.eval.output = stats_file
  cfg.eval.results_file = os.path.join(workdir, "eval", f"{name}_results.json")
  if scorer != "prn":
    cfg.eval.pictures = 0
  pictures_ok = scorer != "prn" or (os.path.isdir(cfg.eval.pictures_dir) and any(
      n.endswith(".png") for n in os.listdir(cfg.eval.pictures_dir)))
  if not retrain and pictures_ok and _eval_is_fresh(stats_file, [cfg.eval.branches_workdir,
                                                                 os.path.join(workdir, "prn")]):
    _say(f"reusing the evaluation in {stats_file}")
    with open(stats_file) as f:
      return json.load(f)
  _say(f"evaluating the whole pipeline ({'PRN' if scorer == 'prn' else 'nearest-centre'} "
       "assignment) on the validation images")
  return evaluate.evaluate(cfg, os.path.join(workdir, "prn"))


def summary_table(rows):
  """rows: list of (name, stats dict) -> a plain-text table of COCO keypoint statistics."""
  from mpn_jax import evaluation  # pylint: disable=g-import-not-at-top
  names = evaluation.STAT_NAMES
  width = max(len(n) for n, _ in rows)
  lines = [" " * width + "".join(f"{k:>7}" for k in names)]
  for name, stats in rows:
    lines.append(f"{name:<{width}}" + "".join(f"{stats.get(k, float('nan')):7.3f}" for k in names))
  return "\n".join(lines)


def run(workdir, preset="synthetic"):
  """Runs (or reuses) every step; returns the pipeline's COCO keypoint statistics."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  branches, prn = make_configs(workdir, preset)
  times = {}

  t = time.time()
  prepare_dataset(branches)
  times["dataset"] = time.time() - t

  t = time.time()
  b_dir, p_dir = os.path.join(workdir, "branches"), os.path.join(workdir, "prn")
  trained = train_stage(branches, b_dir, "stage one (backbone, keypoint subnet, detector)",
                        f"python train.py --config=configs/branches.py:{preset} --workdir={b_dir}")
  times["stage one"] = time.time() - t
  t = time.time()
  trained |= train_stage(prn, p_dir, "stage two (Pose Residual Network)",
                         f"python train.py --config=configs/prn.py:{preset} --workdir={p_dir}")
  times["PRN"] = time.time() - t

  t = time.time()
  stats = evaluate_pipeline(prn, workdir, "prn", trained)
  center = evaluate_pipeline(prn, workdir, "center", trained)
  times["evaluation"] = time.time() - t

  print()
  print(f"COCO keypoint AP on the {branches.dataset.num_val} held-out synthetic validation images "
        "(detector boxes, keypoint peaks, assignment):")
  print(summary_table([("PRN (the whole pipeline)", stats),
                       ("nearest-centre baseline", center)]))
  print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
  print(f"pictures (skeletons drawn on validation images): {prn.eval.pictures_dir}")
  print(f"keypoint AP = {stats['AP']:.3f}", flush=True)
  return stats


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  run(_WORKDIR.value, _PRESET.value)


if __name__ == "__main__":
  cli.run(main, "mpn_jax.quickstart")
