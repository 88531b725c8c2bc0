r"""Stage two: the Pose Residual Network, trained on samples built from COCO keypoint annotations.

No images are read: each sample is a person box (widened by 21%) with the keypoints of everyone
overlapping it drawn on the 56x36 grid as input and the person's own keypoints as target
(mpn_jax.data.prn_samples; geometry in mpn_jax.prn_grid).

Presets (the part after the colon):
  coco (default)  full train2017 person keypoint annotations, validated on val2017.
  coco_small      the prn_train / prn_val annotation files in ../shared/data/coco/annotations.
  synthetic       the annotations of the built-in synthetic dataset (built on first use).
  smoke           a few steps, for tests.

  python train.py --config=configs/prn.py --workdir=/tmp/mpn/prn --config.data.data_dir=/data/coco
  python train.py --config=configs/prn.py:coco_small --workdir=/tmp/mpn/prn_small
  python train.py --config=configs/prn.py:smoke --workdir=/tmp/mpn/prn_smoke

This file is mpn_jax/configs/prn.py; configs/prn.py in the checkout only re-exports it, so both
--config=configs/prn.py and --config=mpn_jax/configs/prn.py work (from an installed package: the
file inside it). Loading it imports only ml_collections (defaults.py holds the blocks).

Every field can be overridden, e.g. `--config.train.learning_rate=1e-4`; a misspelt field is an
error.

Recipe: the PRN authors' code trains with Adam (lr 1e-3, batch 8, 16 epochs, 1024 hidden units,
dropout 0.5). coco and coco_small share the recipe measured best on real annotations (`_recipe`:
256 hidden units, input x3 with a linear output, cosine lr 1e-3 at batch 32, one-to-one
assignment with a 5x5 scoring window, people scored by how decisively their boxes won their
keypoints, the best step by PRN-on-ground-truth AP kept) and differ only in their data and its step
count (~16 epochs for coco).
"""

import ml_collections

from mpn_jax.configs import defaults

PRESETS = ("coco", "coco_small", "synthetic", "smoke")


def get_config(arg=None):
  """Returns the PRN config for the preset `arg` (coco, coco_small, synthetic or smoke)."""
  preset = arg or "coco"
  if preset not in PRESETS:
    raise ValueError(f"configs/prn.py: unknown preset {preset!r}; use coco, coco_small, synthetic "
                     "or smoke (e.g. --config=configs/prn.py:coco_small)")
  config = ml_collections.ConfigDict()
  config.stage = "prn"
  config.preset = preset
  config.seed = 0

  # PRN samples (mpn_jax.data.prn_samples): annotation files, Gaussians, augmentation, batch size
  # (the authors' 8).
  config.data = defaults.prn_data_config()
  config.data.data_dir = "~/data/coco"
  config.data.train_files = ("annotations/person_keypoints_train2017.json",)
  config.data.val_file = "annotations/person_keypoints_val2017.json"
  # mpn_synthetic only: the synthetic TFDS dataset whose annotation files are used.
  config.data.synthetic = defaults.synthetic_dataset_config()

  config.model = defaults.prn_config()
  config.inference = defaults.inference_config()
  config.eval = defaults.eval_config("pipeline")  # python evaluate.py (mpn_jax/evaluation/evaluators.py)

  config.train = defaults.train_config(
      learning_rate=1e-3,
      warmup_steps=0,
      num_steps=240_000,                   # ~16 epochs of ~120k people at batch 8 (coco: _coco)
      log_every_steps=100,
      checkpoint_every_steps=5000,
      eval_every_steps=10_000,
      eval_batches=0)                      # validation-loss batches (0: the whole val_file)
  config.train.eval_batch_size = 256
  config.train.prn_gt_ap = False           # also the PRN-on-ground-truth AP (mpn_jax.evaluation.prn_protocol)
  # best_metric: e.g. 'prn_gt_AP' (with best_mode 'max') when prn_gt_ap is on.

  config.init_from = ""                    # an Orbax checkpoint / workdir to start from

  config.distributed = defaults.distributed_config()

  if preset == "coco":
    _coco(config)
  elif preset == "coco_small":
    _coco_small(config)
  elif preset == "synthetic":
    _synthetic(config)
  elif preset == "smoke":
    _smoke(config)
  return config


def _recipe(config):
  """The recipe measured best on real annotations: the coco and coco_small presets share it and
  differ only in their data."""
  # 732 training people in coco_small: 256 hidden units (a quarter of the paper's cost per step).
  # Inputs x3: the residual then marks every candidate and the MLP only has to choose; with a
  # scaled input the MLP output is linear (PoseResidualNet.output_relu), since the paper's ReLU
  # there dies.
  config.model.hidden_sizes = (256,)
  config.model.input_scale = 3.0
  # Assignment measured on prn_val: one-to-one per keypoint type with a 5x5 scoring window beats
  # the paper's per-box greedy choice with a 1x1 one; the most likely one-to-one assignment
  # (product of probabilities) beats the largest sum of them.
  config.inference.assign_method = "hungarian_log"
  config.inference.assign_window = 5
  # On a network's heatmaps of real images, the paper's PRN input (the heatmaps cropped to the box)
  # instead of the peaks redrawn alike: a weak spurious peak then stays weak (docs/experiments.md).
  config.inference.prn_input = "heatmaps"
  # A person scores by how decisively its box won its keypoints (assignment.assignment_shares):
  # where two boxes wanted the same keypoints, as when overlapping people's keypoints get mixed,
  # the person ranks lower (+0.007-0.012 AP on 7 of 7 prn_val checkpoints, docs/experiments.md).
  config.eval.score_mode = "decisive"
  config.train.schedule = "cosine"         # as in the experiments
  config.train.prn_gt_ap = True
  config.train.best_metric = "prn_gt_AP"
  config.train.best_mode = "max"
  # People with at least one labelled keypoint make samples (data.min_keypoints = 1); the
  # official code keeps only those with more than 3 (666 of prn_train's 732 people).


def _shared_prn_files(config):
  """The prn_train / prn_val annotation files of ../shared (prn_data_config's, $MPN_COCO_DIR)."""
  files = defaults.prn_data_config()
  config.data.data_dir = files.data_dir
  config.data.train_files = files.train_files
  config.data.val_file = files.val_file


def _coco(config):
  _recipe(config)
  config.data.batch_size = 32
  # ~16 epochs of train2017's ~150k people with a labelled keypoint (the paper's 16 epochs).
  config.train.num_steps = 75_000
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 5000
  config.train.eval_every_steps = 5000


def _coco_small(config):
  # Tuned on ../shared/data/coco/annotations/*_prn_{train,val}.json (docs/experiments.md).
  _recipe(config)
  _shared_prn_files(config)
  config.data.batch_size = 32
  config.train.num_steps = 3000
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  config.train.eval_every_steps = 500
  config.eval.mode = "prn_gt"


def _synthetic(config):
  # The measurements behind these settings: docs/experiments.md, 2026-12-02 (why the synthetic
  # preset is set as it is).
  config.data.name = "mpn_synthetic"
  config.data.data_dir = ""
  config.data.train_files = ()          # filled in from config.data.synthetic
  config.data.val_file = ""
  config.data.batch_size = 32
  # The coco_small recipe's network (256 hidden units, input x3, linear output): on the synthetic
  # annotations it learns more than the paper's MLP in a third of the time.
  config.model.hidden_sizes = (256,)
  config.model.input_scale = 3.0
  config.train.schedule = "cosine"
  config.train.num_steps = 400
  config.train.log_every_steps = 25
  config.train.checkpoint_every_steps = 200
  config.train.eval_every_steps = 200
  config.eval.mode = "prn_gt"
  # Test-time augmentation: the image at 1.25x, 1.5x and 1.75x, as stage one trains at 1.1-1.5x
  # zooms (configs/branches.py:synthetic); heatmaps averaged on the 1.75x grid, boxes merged by NMS.
  # No mirrored pass: the synthetic figures' left/right tint does not survive mirroring.
  config.inference.flip = False
  config.inference.scales = (1.25, 1.5, 1.75)
  # The PRN's 'peaks' inputs draw every detected peak alike; weighing each box's choice by the
  # square of the peak's heatmap value too lets a strong peak beat a spurious one nearby.
  config.inference.peak_score_power = 2.0
  # The synthetic figures rarely overlap that much (synthetic.MAX_OVERLAP).
  config.inference.iou_threshold = 0.4
  config.inference.assign_window = 3


def _smoke(config):
  _shared_prn_files(config)
  config.model = defaults.prn_config("tiny")
  config.data.batch_size = 8
  config.train.eval_batch_size = 64
  config.train.schedule = "constant"
  config.train.num_steps = 3
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_steps = 0
  config.train.eval_batches = 1
  config.eval.mode = "prn_gt"
