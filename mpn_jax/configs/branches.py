r"""Stage one of MultiPoseNet: ResNet backbone + keypoint subnet + RetinaNet person detection.

Presets (the part after the colon):
  coco (default)  COCO 2017 person keypoints at 480x480, the paper's first phase: backbone and
                  keypoint subnet (Adam 1e-4); the detection subnet is not trained.
  coco_detection  the paper's second phase: the detection subnet (Adam 1e-5) on the frozen rest,
                  from the first phase's workdir (--config.init_from).
  coco_joint      both parts at once, with loss weights that balance them.
  coco_samples    the learning check: the 80 real train2017 samples in ../shared, CPU-sized.
  synthetic       the built-in synthetic dataset (128 px), a small network: minutes on a 2-core CPU.
  smoke           a few steps on tiny shapes, for tests.

  python train.py --config=configs/branches.py --workdir=/tmp/mpn/keypoints \
      --config.dataset.coco_dir=/data/coco --config.init_from=/tmp/resnet50_imagenet
  python train.py --config=configs/branches.py:coco_detection --workdir=/tmp/mpn/branches \
      --config.dataset.coco_dir=/data/coco --config.init_from=/tmp/mpn/keypoints
  python train.py --config=configs/branches.py:synthetic --workdir=/tmp/mpn/synthetic_branches
  python train.py --config=configs/branches.py:smoke --workdir=/tmp/mpn/smoke_branches

This file is mpn_jax/configs/branches.py; configs/branches.py in the checkout only re-exports it, so
both --config=configs/branches.py and --config=mpn_jax/configs/branches.py work (from an installed
package: the file inside it). Loading it imports only ml_collections (defaults.py holds the blocks).

Every field can be overridden on the command line, e.g. `--config.train.learning_rate=3e-4`; a
misspelt field is an error (the config is locked).

Recipe: Kocabas et al. (ECCV 2018) and the authors' reference code train the keypoint subnet with
Adam (lr 1e-4, no weight decay, lr x0.1 on plateau) on 480x480 crops from an ImageNet-initialised
ResNet, then the detection subnet with Adam (lr 1e-5) with backbone and keypoint subnet frozen;
the coco presets do the same in two runs (coco, then coco_detection). The plateau schedule becomes
a fixed x0.1 piecewise schedule at 75% and 90% of training, so that a resumed run is exact. Only
images with an annotated person are trained on (dataset.keep_empty). Frozen BatchNorm (the coco
presets) needs ImageNet weights: a run from scratch with it is refused.
"""

import ml_collections

from mpn_jax.configs import defaults

PRESETS = ("coco", "coco_detection", "coco_joint", "coco_samples", "synthetic", "smoke")


def get_config(arg=None):
  """Returns the branches config for the preset `arg` (one of PRESETS)."""
  preset = arg or "coco"
  if preset not in PRESETS:
    raise ValueError(f"configs/branches.py: unknown preset {preset!r}; use one of "
                     f"{', '.join(PRESETS)} (e.g. --config=configs/branches.py:synthetic)")
  config = ml_collections.ConfigDict()
  config.stage = "branches"
  config.preset = preset
  config.seed = 0

  # The TFDS builder (mpn_jax.data.datasets.load_builder prepares it on first use).
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "coco_keypoints"        # 'coco_keypoints' | 'mpn_synthetic'
  config.dataset.data_dir = "/tmp/mpn_tfds"     # where the prepared TFDS records live
  config.dataset.coco_dir = "~/data/coco"       # coco_keypoints: annotations/, train2017/, val2017/
  config.dataset.train_ann = "person_keypoints_train2017.json"  # in coco_dir/annotations/
  config.dataset.val_ann = "person_keypoints_val2017.json"
  config.dataset.image_size = 128               # mpn_synthetic: image side
  config.dataset.num_train = 512                # mpn_synthetic: images per split
  config.dataset.num_val = 64
  config.dataset.seed = 0
  config.dataset.train_split = "train"            # the validation split: config.eval.split
  # Fraction of the training images WITHOUT an annotated person that are kept (0: only images with
  # people; 1: every image). About half of COCO's images have no person and no keypoint signal.
  config.dataset.keep_empty = 0.0

  config.input = defaults.input_config()        # size S, batch_size (global), augmentation, targets
  config.input.batch_size = 24
  # The reference implementation's augmentation: each crop centred on an annotated person scaled
  # to 0.6 S, then scaled 0.8-1.2, rotated +-40 degrees, mirrored half the time.
  aug = config.input.augment
  aug.center = "person"
  aug.scale_min, aug.scale_max = 0.8, 1.2
  aug.rotation = 40.0
  aug.flip = 0.5
  config.model = defaults.multiposenet_config()   # ResNet-50 v1.5, FPN 256
  config.inference = defaults.inference_config()
  config.eval = defaults.eval_config("detector")  # python evaluate.py (mpn_jax/evaluation/evaluators.py)

  config.train = defaults.train_config(
      learning_rate=1e-4,
      warmup_steps=500,
      num_steps=200_000,                   # ~75 epochs of the 64k train2017 images with people
      log_every_steps=50,
      checkpoint_every_steps=2000,
      eval_every_steps=10_000,             # validation loss
      eval_batches=50)                     # batches of the eval split per evaluation (0: none)
  # 'keypoints' (backbone + keypoint subnet; coco, the paper's first phase) | 'detection' (the
  # RetinaNet subnet on the frozen rest; coco_detection) | 'all' (jointly; coco_joint).
  config.train.trainable = "keypoints"

  config.loss = ml_collections.ConfigDict()
  config.loss.keypoint_weight = 1.0        # final stride-4 heatmaps + mask
  config.loss.intermediate_weight = 1.0    # each of the 4 intermediate outputs (P2..P5)
  config.loss.peak_weight = 0.0            # L2 cells count 1 + peak_weight * target (0: paper)
  config.loss.focal_weight = 1.0
  config.loss.box_weight = 1.0
  config.loss.focal_alpha = 0.25
  config.loss.focal_gamma = 2.0
  config.loss.smooth_l1_beta = 0.11
  config.loss.pos_iou = 0.5                # anchor assignment (boxes.anchor_targets)
  config.loss.neg_iou = 0.4

  # Used when the workdir holds no checkpoint yet: an Orbax checkpoint of {'params': ...,
  # 'batch_stats': ...} (the whole model or some subtrees, e.g. only 'backbone' from converted
  # ImageNet weights), or another run's workdir. Matching variables are copied, others kept;
  # variables of another shape or absent from the model are an error.
  config.init_from = ""

  config.distributed = defaults.distributed_config()

  if preset == "coco_detection":
    _coco_detection(config)
  elif preset == "coco_joint":
    _coco_joint(config)
  elif preset == "coco_samples":
    _coco_samples(config)
  elif preset == "synthetic":
    _synthetic(config)
  elif preset == "smoke":
    _smoke(config)
  return config


def _coco_detection(config):
  # The paper's second phase: the detection subnet alone (Adam 1e-5), backbone and keypoint subnet
  # frozen, from the first phase's workdir (--config.init_from=DIR; refused without it).
  config.train.trainable = "detection"
  config.train.learning_rate = 1e-5
  config.train.num_steps = 50_000          # ~19 epochs of the 64k images with people


def _coco_joint(config):
  # Both parts at once, weighted so that neither runs the shared backbone: at initialisation the
  # detection terms are ~12x the keypoint L2 on real images, and x10 makes them about equal
  # (docs/experiments.md, 2026-12-02: stage-one loss terms at initialisation).
  config.train.trainable = "all"
  config.loss.keypoint_weight = 10.0


def _cpu_network(config):
  """A narrow ResNet-FPN a 2-core CPU trains in minutes, from scratch: BatchNorm must learn its
  statistics."""
  m = config.model
  m.backbone.stage_sizes = (1, 2, 2, 1)
  m.backbone.width = 16
  m.backbone.frozen_bn = False
  m.backbone.zero_init_residual = True  # from scratch: each block starts as the identity
  m.fpn_channels = 64
  m.keypoint_head.channels = 32
  m.keypoint_head.fused_channels = 64
  m.retina_head.channels = 64
  m.retina_head.num_convs = 2


def _synthetic_data(config):
  """The built-in synthetic dataset (synthetic, smoke): every image has people worth keeping, both
  parts train jointly from scratch, and crops are of the whole (letterboxed) image."""
  config.dataset.name = "mpn_synthetic"
  config.dataset.keep_empty = 1.0
  config.train.trainable = "all"
  config.input.augment = defaults.augment_config()


def _coco_samples(config):
  """The learning check on real images (python -m mpn_jax.quickstart --preset=coco_samples): the
  coco recipe's data path (real masks, crowd and unlabelled-person ignore regions, images with
  people only, person-centred crops) on the 80 train2017 samples, with a network a 2-core CPU
  trains in ~22 minutes (from scratch, so both parts jointly and BatchNorm trained)."""
  config.dataset.coco_dir = "../shared/data/coco"
  config.dataset.train_ann = "person_keypoints_train2017_sample.json"
  config.dataset.val_ann = "person_keypoints_val2017_sample.json"
  config.input.size = 384
  config.input.crop_size = 192           # a 192 px window around the chosen person per example
  config.input.batch_size = 4
  config.input.shuffle_buffer = 64
  config.input.max_boxes = 32
  config.input.max_people = 16
  config.input.heatmap_sigma = 1.5
  # The check asks whether the model can fit these images as they are evaluated (the whole image,
  # letterboxed to 384): each window shows its person at the letterbox scale, unrotated and
  # unmirrored, shifted by up to 15% of S; only the window's position varies
  # (docs/experiments.md, 2026-12-02: the learning check).
  aug = config.input.augment
  aug.person_height = 0.0
  aug.scale_min = aug.scale_max = 1.0
  aug.rotation = 0.0
  aug.flip = 0.0
  aug.translate = 0.15
  aug.color_jitter.update(dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0))
  _cpu_network(config)  # as the synthetic preset's: narrow, from scratch
  # From scratch, the RetinaNet head's shared convs see pyramid levels whose activations are 10-20x
  # apart and their ReLUs die; GroupNorm after each keeps the detector learning.
  config.model.retina_head.norm = "group"
  config.loss.keypoint_weight = 30.0
  config.loss.intermediate_weight = 0.5
  # Cells under the targets count 1 + 5 * target: the heatmaps' peaks rise where the plain L2
  # over mostly-background cells keeps them low (docs/experiments.md, 2026-12-04).
  config.loss.peak_weight = 5.0
  config.train.trainable = "all"
  config.train.learning_rate = 2e-3
  config.train.schedule = "cosine"
  config.train.warmup_steps = 50
  config.train.num_steps = 10_000        # ~1,100 windows per image with people; ~22 min on Zen 4
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.train.eval_every_steps = 0
  config.train.eval_batches = 0
  config.train.best_metric = ""
  # Test-time: the whole image at the training scale; no mirroring (not trained on).
  config.inference.scales = (1.0,)
  config.inference.flip = False
  config.eval.max_images = 0


def _synthetic(config):
  # The measurements behind these settings: docs/experiments.md, 2026-12-02 (why the synthetic
  # preset is set as it is).
  _synthetic_data(config)
  config.dataset.update(defaults.synthetic_dataset_config())  # 2048 training images
  config.input.size = 128
  config.input.shuffle_buffer = 256
  config.input.max_boxes = 16
  config.input.max_people = 8
  # Small, sharp peaks: sigma 1.5 cells = 6 input pixels on figures ~50-115 px tall.
  config.input.heatmap_sigma = 1.5
  # No rotation and no colour jitter: the generator already draws every figure at its own angle,
  # size and colours, and the validation loss stays level with the training loss (nothing to
  # regularise), so the extra variation only makes the task harder.
  config.input.augment.rotation = 0.0
  config.input.augment.color_jitter.update(dict(brightness=0.0, contrast=0.0, saturation=0.0,
                                                hue=0.0))
  # Zoomed in 1.1-1.5x (a 128 px window, shifted up to 20% so the whole image is seen) and tested
  # at 1.25x, 1.5x and 1.75x (configs/prn.py:synthetic): the network sees larger figures at no
  # extra training cost, and the peaks come out on a finer grid.
  config.input.augment.scale_min = 1.1
  config.input.augment.scale_max = 1.5
  config.input.augment.translate = 0.2
  # No mirroring, in training or at test time: the synthetic figures' left limbs are drawn lighter
  # than their right ones (synthetic.SIDE_TINT), and a mirrored figure's lighter limbs are its
  # right ones, so flipped training images teach that the tint means nothing and flip TTA averages
  # in the opposite answer.
  config.input.augment.flip = 0.0
  config.inference.flip = False
  config.inference.scales = (1.25, 1.5, 1.75)
  _cpu_network(config)
  # The heatmaps are sparse (an L2 over mostly-background cells): without a larger weight the focal
  # loss drives the shared features and the peaks stay near zero after a few hundred steps.
  config.loss.keypoint_weight = 30.0
  # The coarse levels' intermediate outputs (P4 is 8x8, P5 4x4 at 128 px) cannot draw sigma-1.5
  # Gaussians at stride 4: weighted fully, their residual error runs the shared features.
  config.loss.intermediate_weight = 0.5
  # Small batches, many steps: in a fixed time, batch 4 learns more than larger batches (a step
  # takes ~0.12 s on 2 cores, half of batch 8's); a higher lr makes the focal loss spike early.
  config.input.batch_size = 4
  config.train.learning_rate = 2e-3
  config.train.schedule = "cosine"
  config.train.warmup_steps = 50
  config.train.num_steps = 6400   # ~15 minutes on 2 CPU cores
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.train.eval_every_steps = 2000
  config.train.eval_batches = 8
  config.eval.max_images = 64


def _smoke(config):
  _synthetic_data(config)
  config.dataset.image_size = 64
  config.dataset.num_train = 8
  config.dataset.num_val = 4
  config.input.size = 64
  config.input.batch_size = 4
  config.input.shuffle_buffer = 8
  config.input.max_boxes = 8
  config.input.max_people = 4
  config.input.prefetch = 1
  config.model = defaults.multiposenet_config("tiny")
  config.model.backbone.frozen_bn = False
  config.train.learning_rate = 1e-3
  config.train.schedule = "constant"
  config.train.warmup_steps = 0
  config.train.num_steps = 3
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_steps = 0
  config.train.eval_batches = 1
  config.eval.max_images = 4
  config.eval.batch_size = 4
  config.eval.pictures = 0
