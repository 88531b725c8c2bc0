r"""The stage-one loss terms at initialisation on real images: how joint training would weigh them.

Builds the branches model of a config (default: the coco preset, ResNet-50 at 480), initialises it
(the config's init_from when given, else random weights), and evaluates the loss of
`training.steps.branches_loss_fn` on real COCO images (plain letterbox, no augmentation) with
every term reported apart: the keypoint L2 (final and intermediate), the focal and box losses, the
positive anchors per image. Prints a table and writes JSON; docs/experiments.md keeps the runs.

  python scripts/loss_magnitudes.py --coco_dir=../shared/data/coco --num=24 \
      --output=/tmp/loss_magnitudes.json
"""

import json
import pathlib

from absl import app
from absl import flags
import jax
import numpy as np

from mpn_jax import checkpoints
from mpn_jax import cli
from mpn_jax import models
from mpn_jax.configs import branches as branches_config
from mpn_jax.data import coco_keypoints
from mpn_jax.data import pipeline
from mpn_jax.evaluation import coco_io
from mpn_jax.training import steps

_COCO_DIR = flags.DEFINE_string("coco_dir", "../shared/data/coco", "COCO root")
_ANN = flags.DEFINE_string("annotations", "person_keypoints_val2017_sample.json",
                           "annotation file in coco_dir/annotations")
_IMAGES = flags.DEFINE_string("images", "val2017", "image folder inside coco_dir")
_PRESET = flags.DEFINE_string("preset", "coco", "preset of the branches config "
                               "(mpn_jax/configs/branches.py)")
_NUM = flags.DEFINE_integer("num", 24, "images with people to use")
_SIZE = flags.DEFINE_integer("size", 480, "input size S")
_BATCH = flags.DEFINE_integer("batch", 4, "images per forward pass")
_OUTPUT = flags.DEFINE_string("output", "", "JSON to write")


def main(argv):
  del argv
  config = branches_config.get_config(_PRESET.value)
  config.input.size = _SIZE.value
  config.model.backbone.frozen_bn = False
  root = pathlib.Path(_COCO_DIR.value).expanduser()
  _, items = coco_keypoints.load_annotations(root / "annotations" / _ANN.value)
  items = [it for it in items if any(not a["iscrowd"] for a in it[1])][:_NUM.value]
  examples = [pipeline.example_from_coco(rec, anns, root / _IMAGES.value) for rec, anns in items]
  cfg = config.input.copy_and_resolve_references()
  aug = cfg.augment
  aug.scale_min = aug.scale_max = 1.0
  aug.rotation = aug.translate = aug.flip = 0.0
  for k in aug.color_jitter:
    aug.color_jitter[k] = 0.0
  cfg.shuffle_buffer = 0
  ds = pipeline.train_batches(pipeline.examples_dataset(examples), cfg, _BATCH.value, 0)
  model = models.build_multiposenet(config.model)
  size = _SIZE.value
  variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3),
                                                                   np.float32)))()
  if config.get("init_from"):
    params, batch_stats, _ = checkpoints.restore_variables(config.init_from)
    variables = {"params": checkpoints.merge_pretrained(variables["params"], params),
                 "batch_stats": checkpoints.merge_pretrained(variables["batch_stats"],
                                                             batch_stats)}
  loss_fn = steps.branches_loss_fn(model, None, config.loss, "all")
  # BatchNorm on the batch's own statistics (train=True, frozen_bn off): random weights normalised
  # like trained ones; with running statistics (0 mean, unit variance) the features of a random
  # ResNet grow by an order of magnitude per stage.
  apply = jax.jit(lambda v, b: loss_fn(v["params"], v.get("batch_stats", {}), b,
                                       jax.random.key(0), True))
  rows = []
  for batch in ds.take(-(-len(examples) // _BATCH.value)).as_numpy_iterator():
    _, (_, metrics) = apply(variables, batch)
    rows.append({k: float(v) for k, v in metrics.items()})
  keys = ["keypoint_loss", "keypoint_final", "keypoint_intermediate", "focal_loss", "box_loss",
          "num_pos_anchors"]
  mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  det = mean["focal_loss"] + mean["box_loss"]
  mean["detection_over_keypoint"] = det / max(mean["keypoint_loss"], 1e-12)
  print(f"{len(examples)} images of {_ANN.value} at {size} px, branches:{_PRESET.value}, "
        f"init_from={config.get('init_from') or '(random)'}")
  for k, v in mean.items():
    print(f"  {k:26s} {v:10.4f}")
  if _OUTPUT.value:
    coco_io.write_json(_OUTPUT.value, dict(mean, images=len(examples), size=size,
                                              config=_CONFIG.value))


if __name__ == "__main__":
  cli.run(main, "scripts/loss_magnitudes.py")
