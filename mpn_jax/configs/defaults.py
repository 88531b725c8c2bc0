"""The default config blocks of both stages, as plain data (ml_collections only).

Each function returns a fresh `ml_collections.ConfigDict` that a stage config (branches.py,
prn.py) embeds and then adjusts for its preset. Every field is documented here, where it is
defined. The modules that use a block re-export its builder under the old name
(`pipeline.input_config`, `prn_samples.prn_data_config`, `models.multiposenet_config`,
`models.prn_config`), so that loading a config never imports TensorFlow, JAX or Flax.
"""

import os

import ml_collections

from mpn_jax import errors  # (imports nothing itself)

# The PRN box widening on each side (mpn_jax.prn_grid.DEFAULT_WIDEN; a test checks they agree):
# the official PRN code's 21%.
BOX_WIDEN = 0.21

# multiposenet_config / prn_config sizes: the paper's network, or one of a few channels (tests).
MODEL_SIZES = ("full", "tiny")


# ---------------------------------------------------------------------------------------------------
# Shared by both stages.


def train_config(*, learning_rate, warmup_steps, num_steps, log_every_steps,
                 checkpoint_every_steps, eval_every_steps, eval_batches):
  """config.train fields both stages have; the arguments are those each stage sets itself."""
  c = ml_collections.ConfigDict()
  c.optimizer = "adam"              # 'adam' | 'adamw' | 'sgd' (momentum 0.9)
  c.learning_rate = learning_rate   # peak learning rate (after warmup)
  c.weight_decay = 0.0              # adamw: decoupled; adam / sgd: added to the gradient
  c.schedule = "piecewise"          # 'constant' | 'piecewise' | 'cosine'
  c.decay_fractions = (0.75, 0.9)   # piecewise: x decay_factor at these fractions of num_steps
  c.decay_factor = 0.1
  c.warmup_steps = warmup_steps     # linear warmup from 0 over these steps
  c.grad_clip_norm = 0.0            # 0 disables clipping
  c.num_steps = num_steps
  c.log_every_steps = log_every_steps
  c.checkpoint_every_steps = checkpoint_every_steps
  c.keep_checkpoints = 3            # the last N, plus the best by best_metric
  c.eval_every_steps = eval_every_steps  # 0: only at the end
  c.eval_batches = eval_batches     # batches of the eval data per evaluation (see the stage)
  c.best_metric = "val_loss"        # '' keeps only the last N checkpoints
  c.best_mode = "min"               # 'min' | 'max': which value of best_metric is best
  return c


def distributed_config():
  """config.distributed: multi-process training (each field 0 / '' / -1: from MPN_* env vars)."""
  return ml_collections.ConfigDict(dict(
      coordinator_address="",   # 'host:port' of process 0: multi-process (else MPN_* env vars)
      num_processes=0,
      process_id=-1,
  ))


def synthetic_dataset_config():
  """The built-in synthetic TFDS dataset (mpn_jax.data.synthetic) of both stages' synthetic
  presets: stage one trains on its images, stage two on its annotations, so both name the same
  dataset."""
  return ml_collections.ConfigDict(dict(
      data_dir="/tmp/mpn_tfds",  # where the prepared TFDS records live (built on first use)
      image_size=128,            # image side
      num_train=2048,            # training images: built in under a minute, and more of them
                                 # generalise better than the 512 of the dataset's own default
      num_val=64,
      seed=0,                    # the generator's seed (another seed: other images)
  ))


# ---------------------------------------------------------------------------------------------------
# Stage one: data, network.


def augment_config():
  """Default augmentation ranges (config.input.augment). Zero/1.0 ranges switch a part off."""
  return ml_collections.ConfigDict(dict(
      center="letterbox",  # "letterbox": the whole image, longest side S, zoomed about its centre;
                           # "person": centred on one annotated person scaled to person_height
      person_height=0.6,  # center="person": the person's box height as a fraction of S, before
                          # the random scale (OpenPose's target_dist); 0: the letterbox scale
      max_zoom=4.0,       # center="person": cap of that zoom relative to the letterbox scale
      scale_min=0.75,     # random zoom factor, uniform in [scale_min, scale_max], times the
      scale_max=1.25,     # letterbox (or person) scale
      rotation=40.0,      # degrees, uniform in [-rotation, rotation] (the paper's +-40)
      translate=0.1,      # shift as a fraction of S, uniform in [-translate, translate] per axis
      flip=0.5,           # probability of a horizontal flip (left/right keypoints swapped)
      color_jitter=ml_collections.ConfigDict(dict(
          brightness=0.2,   # max additive delta on the 0..1 scale
          contrast=0.2,     # factor uniform in [1 - c, 1 + c]
          saturation=0.2,   # factor uniform in [1 - s, 1 + s]
          hue=0.02,         # max hue shift (fraction of the colour wheel)
      )),
      min_box_size=2.0,   # boxes narrower/lower than this (input pixels) after clipping are dropped
  ))


def input_config():
  """Default config.input of the branches stage."""
  return ml_collections.ConfigDict(dict(
      size=480,                # S: square network input (letterbox: longest image side -> S;
                               # see augment.center for person-centred training crops)
      crop_size=0,             # C: train on the central C x C window of the augmented S x S
                               # canvas (0: all of it); evaluation always sees S x S
      batch_size=32,           # global train (and validation-loss) batch, split over processes
                               # and devices; evaluate.py's images: config.eval.batch_size
      whole_every=0,           # with crop_size: every n-th training batch is instead
                               # whole_batch_size whole letterboxed S x S images (no crop, no
                               # shift), so the detector also sees people too large for a window;
                               # 0: never
      whole_batch_size=1,      # global batch of those whole-image steps
      heatmap_sigma=2.0,       # Gaussian sigma in stride-4 heatmap cells (= 8 input pixels)
      max_boxes=100,           # M: person/crowd boxes per image (more are dropped)
      max_people=32,           # P: people with keypoints per image in 'keypoints'
      shuffle_buffer=1000,     # examples (compressed: images are decoded after the shuffle)
      prefetch=2,              # batches prepared ahead
      num_parallel_calls=-1,   # tf.data map parallelism; -1 = AUTOTUNE
      augment=augment_config(),
  ))


def multiposenet_config(size="full"):
  """The branches network's config: `size='full'` (paper defaults) or 'tiny' (tests, CPU)."""
  if size not in MODEL_SIZES:
    raise errors.ConfigError(
        f"multiposenet_config: size must be one of {MODEL_SIZES}, got {size!r}")
  c = ml_collections.ConfigDict()
  c.dtype = "float32"        # compute dtype; 'bfloat16' on GPU/TPU. Outputs, output layers and
                             # BatchNorm are always float32.
  c.param_dtype = "float32"

  c.backbone = ml_collections.ConfigDict()
  c.backbone.depth = 50            # 50 | 101 (| 152)
  c.backbone.stage_sizes = ()      # () = from depth; e.g. (1, 1, 1, 1) for a tiny trunk
  c.backbone.width = 64            # first-stage inner width; C2..C5 have 4w, 8w, 16w, 32w channels
  c.backbone.variant = "v1.5"      # 'v1.5' torchvision | 'v1' Keras/Caffe (see mpn_jax.weights)
  c.backbone.bn_epsilon = 1e-5     # torchvision 1e-5; Keras 1.001e-5
  c.backbone.bn_momentum = 0.9
  c.backbone.frozen_bn = True      # BN uses running stats and never updates them (also in training)
  c.backbone.freeze_at = 0         # stop_gradient below: 1 stem, k>=2 stem+layer1..layer(k-1)
  c.backbone.zero_init_residual = False  # last BN scale of each block = 0 (training from scratch)

  c.fpn_channels = 256

  c.keypoint_head = ml_collections.ConfigDict()
  c.keypoint_head.channels = 128
  c.keypoint_head.fused_channels = 256
  c.keypoint_head.upsample = "nearest"       # 'nearest' | 'bilinear' (to stride 4)
  c.keypoint_head.intermediate_on = "fpn"  # 1x1 supervision conv on P_l ('fpn') | 'subnet'
  c.keypoint_head.output_init = "zeros"    # output convs start at 0 ('zeros') | 'fan_in'

  c.detection_fpn = ml_collections.ConfigDict()
  c.detection_fpn.p6_input = "C5"  # 'C5' (RetinaNet paper) | 'P5'

  c.retina_head = ml_collections.ConfigDict()
  c.retina_head.num_classes = 1
  c.retina_head.num_anchors = 9    # 3 ratios x 3 scales, as mpn_jax.boxes.generate_anchors
  c.retina_head.channels = 256
  c.retina_head.num_convs = 4
  c.retina_head.prior_prob = 0.01
  c.retina_head.norm = "none"        # 'none' (paper) | 'group' (GroupNorm after each subnet conv)

  if size == "tiny":
    c.backbone.stage_sizes = (1, 1, 1, 1)
    c.backbone.width = 4
    c.fpn_channels = 16
    c.keypoint_head.channels = 8
    c.keypoint_head.fused_channels = 16
    c.retina_head.channels = 16
    c.retina_head.num_convs = 1
  return c


# ---------------------------------------------------------------------------------------------------
# Stage two: data, network.


def prn_data_config():
  """Defaults of the PRN sample pipeline (embedded as `config.data` by the prn config)."""
  c = ml_collections.ConfigDict()
  c.name = "coco_prn"
  c.batch_size = 8           # global batch (split over processes; divisible by the device count)
  # Annotation files, relative to data_dir unless absolute; several training files are concatenated.
  # data_dir: $MPN_COCO_DIR, else the project's shared samples beside the checkout.
  c.data_dir = os.environ.get("MPN_COCO_DIR", "../shared/data/coco")
  c.train_files = ("annotations/person_keypoints_val2017_prn_train.json",)
  c.val_file = "annotations/person_keypoints_val2017_prn_val.json"
  c.min_keypoints = 1        # official code: > 3 (666 of prn_train's 732 people); 1 keeps all
  c.widen = BOX_WIDEN
  c.input_sigma = 1.0        # grid cells; the official skimage.gaussian default
  c.target_sigma = 1.0       # grid cells; 0 = one-hot in the keypoint's cell
  c.augment = ml_collections.ConfigDict(dict(
      enabled=True,
      flip_prob=0.5,           # mirror the scene about the box centre, swap left/right channels
      compose_prob=0.5,        # paste people from other images around the person
      compose_max_people=3,    # up to this many pasted people per sample
      compose_offset=0.6,      # pasted centre = centre + U(-a, a) * box size
      compose_scale=1.4,       # pasted height = person's height * exp(U(-log s, log s))
      box_shift=0.05,          # detector error: centre shift ~ N(0, shift * box size)
      box_scale=0.1,           # detector error: size factor ~ exp(N(0, scale))
      drop_own_prob=0.0,       # drop a person's own keypoint (input and target)
      drop_other_prob=0.1,     # drop another person's keypoint from the input
      keypoint_jitter=0.0,     # moves every keypoint by N(0, jitter) grid cells (input and target)
  ))
  return c


def prn_config(size="full"):
  """The PRN's config: `size='full'` (paper: one 1024-unit hidden layer) or 'tiny'."""
  if size not in MODEL_SIZES:
    raise errors.ConfigError(f"prn_config: size must be one of {MODEL_SIZES}, got {size!r}")
  c = ml_collections.ConfigDict()
  c.dtype = "float32"
  c.param_dtype = "float32"
  c.hidden_sizes = (1024,)
  c.dropout_rate = 0.5
  # e.g. (1, 2, 4): dilated 3x3 convs before the MLP (or, with hidden_sizes=(), instead of it).
  c.conv_dilations = ()
  c.conv_channels = 64
  c.input_scale = 1.0              # x the input (and residual); 1 = paper
  if size == "tiny":
    c.hidden_sizes = (16,)
  return c


# ---------------------------------------------------------------------------------------------------
# Both stages: inference and evaluation.


def inference_config():
  """Defaults of the inference pipeline (embedded as `config.inference` by the train/eval configs)."""
  c = ml_collections.ConfigDict()
  # Keypoint peaks.
  c.heatmap_threshold = 0.1       # on the raw heatmap outputs (targets are Gaussians with max 1)
  c.peaks_per_keypoint = 20       # C: candidates kept per keypoint type
  c.peak_refine = "quadratic"     # 'quadratic' | 'quarter' | 'none' (sub-pixel refinement)
  # Person detection.
  c.score_threshold = 0.05
  c.iou_threshold = 0.5
  c.pre_nms_top_k = 1000          # anchors decoded per image and TTA variant before NMS
  c.max_people = 20               # N: COCO keypoint AP counts at most 20 people per image
  # PRN and assignment.
  # (The PRN input's box widening and 'peaks' sigma are the PRN run's data.widen / input_sigma.)
  c.prn_input = "peaks"           # 'peaks' (as in PRN training) | 'heatmaps' (bilinear crops)
  c.assign_method = "greedy"      # one of mpn_jax.inference.assignment.METHODS
  c.assign_window = 1             # odd window (grid cells) of PRN probability around a candidate
  c.candidate_scores = "prn"      # 'prn' | 'center' (PRN-free nearest-centre baseline)
  c.instance_score = "box"        # one of mpn_jax.inference.assignment.SCORE_MODES
  c.peak_score_power = 0.0        # candidate score x peak value ** this (0: the PRN's alone)
  # Test-time augmentation.
  c.flip = False                  # also run on the mirrored image and average
  c.scales = (1.0,)               # input scales; heatmaps averaged on the largest scale's grid
  # Where the network and the PRN run (mpn_jax.inference.runtimes).
  c.runtime = "jax"               # 'jax' | 'onnxruntime' | 'openvino' (CPU serving, the [export] extra)
  c.precision = "fp32"            # 'fp32' | 'bf16' (bf16: OpenVINO on CPUs with AMX/AVX512_BF16, or JAX)
  # COCO results.
  c.keypoint_visibility = "score"  # 'score' | 'one': the v written for each keypoint
  return c


def eval_config(mode="pipeline"):
  """Defaults of the evaluation fields (embedded as `config.eval` by the stage configs)."""
  c = ml_collections.ConfigDict()
  c.mode = mode                  # 'pipeline' | 'detector' | 'prn_gt'
  c.assign = "prn"               # prn_gt: 'prn' (needs the PRN checkpoint) | 'center' | 'oracle'
  c.method = ""                  # assignment method ('' = config.inference.assign_method, greedy)
  c.score_mode = ""              # prn_gt instance score: one of mpn_jax.inference.assignment.SCORE_MODES
                                 # ('' = the PRN config's eval.score_mode, else 'keypoints')
  c.breakdown = False            # prn_gt: also the errors against the oracle and the AP with each
                                 # kind corrected (prn_protocol.error_breakdown)
  c.boxes = "detector"           # pipeline: 'detector' | 'ground_truth' (the annotated people's
                                 # boxes, each scoring 1, instead of the detector's: what the
                                 # heatmaps and the PRN make of perfect detections)
  c.ann_file = ""                # COCO annotation file ('' = the config's validation split)
  c.image_dir = ""               # images of ann_file ('' = TFDS eval split of the branches config)
  c.split = "validation"         # TFDS split when image_dir is '' (also the branches training's
                                 # validation loss)
  c.output = ""                  # stats JSON ('' = workdir/eval/<mode>_stats.json)
  c.results_file = ""            # COCO results JSON ('' = workdir/eval/<mode>_results.json, or
                                 # beside a given output: <output stem>_results.json)
  c.max_images = 0               # 0 = every image
  c.batch_size = 8               # images per inference batch
  c.pictures = 8                 # draw the first N images
  c.pictures_dir = ""            # '' = workdir/eval/pictures
  c.picture_min_score = 0.1      # draw people scoring at least this
  return c
