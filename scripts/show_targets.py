r"""Draws augmented examples with their training targets, to check them by eye.

Each example becomes one row of two panels:
  left:  the augmented input with boxes (green person, red crowd) and the transformed keypoints
         (left side blue, right side orange, skeleton lines); with --center=person, the chosen
         person's box is cyan and a thin cyan square marks where its centre may land (canvas
         centre +- translate * S);
  right: the same picture, dimmed, with the 17 heatmaps (max over channels, yellow), the person mask
         (green tint) and the cells left out of the loss (weights = 0, red tint: crowd regions and
         people without labelled keypoints).
Stride-4 maps are shown as 4x4 blocks, exactly the input pixels their cell covers. The augmentation
is the training pipeline's (`pipeline.preprocess_train`) with the ranges of --config (the coco
preset by default); --center picks the crop: "person" (centred on one annotated person scaled to
augment.person_height of S) or "letterbox" (the whole image zoomed about its centre).

Augmented real samples, person-centred crops (one command, run from the repository root):

  python scripts/show_targets.py --coco_dir=../shared/data/coco --center=person --num=6 \
      --size=320 --output=/tmp/targets_person.png

The same with --center=letterbox for the whole-image mode, --seed=N for other draws, and
  python scripts/show_targets.py --coco_dir=../shared/data/coco --output=/tmp/targets.png
  python scripts/show_targets.py --dataset=mpn_synthetic --data_dir=/tmp/tfds --output=/tmp/t.png
"""

import pathlib

from absl import app
from absl import flags
import numpy as np
from PIL import Image, ImageDraw
import tensorflow as tf
import tensorflow_datasets as tfds

from mpn_jax import coco
from mpn_jax.configs import branches as branches_config
from mpn_jax.data import augment
from mpn_jax.data import coco_keypoints
from mpn_jax.data import datasets
from mpn_jax.data import pipeline
from mpn_jax.data import preprocess

_REPO = pathlib.Path(__file__).resolve().parents[1]

_COCO_DIR = flags.DEFINE_string("coco_dir", None, "COCO root (annotations/, train2017/, val2017/).")
_ANN = flags.DEFINE_string("annotations", "person_keypoints_train2017_sample.json",
                           "annotation file in coco_dir/annotations (or an absolute path)")
_IMAGES = flags.DEFINE_string("images", "train2017", "image folder inside coco_dir")
_DATASET = flags.DEFINE_string("dataset", None, "a TFDS dataset name instead of --coco_dir "
                               "(coco_keypoints or mpn_synthetic)")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/mpn_tfds", "TFDS data_dir for --dataset")
_SPLIT = flags.DEFINE_string("split", "train", "TFDS split for --dataset")
_OUTPUT = flags.DEFINE_string("output", "/tmp/targets.png", "PNG to write")
_NUM = flags.DEFINE_integer("num", 4, "examples to draw (images with keypoints first)")
_SIZE = flags.DEFINE_integer("size", 480, "input size S")
_SIGMA = flags.DEFINE_float("sigma", 2.0, "heatmap sigma in stride-4 cells")
_SEED = flags.DEFINE_integer("seed", 0, "augmentation seed")
_NO_AUG = flags.DEFINE_bool("no_augment", False, "no random augmentation (person-centred crops "
                             "stay centred, unrotated, at person_height)")
_PRESET = flags.DEFINE_string("preset", "coco", "preset of mpn_jax/configs/branches.py whose "
                              "config.input.augment ranges are used")
_CENTER = flags.DEFINE_enum("center", None, ["letterbox", "person"],
                            "crop centring (config.input.augment.center); default: the config's")

def load_examples(num):
  """Decoded examples (numpy dicts) from --coco_dir or --dataset."""
  if _COCO_DIR.value:
    root = pathlib.Path(_COCO_DIR.value).expanduser()
    ann = pathlib.Path(_ANN.value)
    ann = ann if ann.is_absolute() else root / "annotations" / ann
    _, items = coco_keypoints.load_annotations(ann)
    # Images with keypoints first, and among them those with a crowd region (to see the ignores).
    items = sorted(items, key=lambda it: (not any(a["num_keypoints"] for a in it[1]),
                                          not any(a["iscrowd"] for a in it[1])))[:num]
    return [pipeline.example_from_coco(rec, anns, root / _IMAGES.value) for rec, anns in items]
  if _DATASET.value:
    builder = datasets.load_builder(dict(name=_DATASET.value, data_dir=_DATA_DIR.value))
    ds = builder.as_dataset(split=_SPLIT.value, read_config=tfds.ReadConfig(try_autocache=False))
    return list(ds.take(num).as_numpy_iterator())
  raise app.UsageError("give --coco_dir=... or --dataset=...")


def denormalize(image):
  """[S, S, 3] ImageNet-normalised float -> uint8 RGB."""
  rgb = image * coco.IMAGENET_STD_RGB + coco.IMAGENET_MEAN_RGB
  return np.clip(rgb, 0, 255).astype(np.uint8)


def upsample(x):
  """[h, w] stride-4 map -> [4h, 4w] (each cell a 4x4 block)."""
  return np.repeat(np.repeat(x, preprocess.HEATMAP_STRIDE, 0), preprocess.HEATMAP_STRIDE, 1)


def chosen_person(example, seed, cfg):
  """Index and input-pixel xyxy box of the person a person-centred crop is centred on (or None).

  Draws the same parameters as `pipeline.preprocess_train` (its geometry seed is the first half of
  the example's seed split in two).
  """
  geo_seed = tf.random.experimental.stateless_split(seed, num=2)[0]
  params = augment.sample_params(geo_seed, cfg.augment, example["people"])
  index = int(params["person"])
  if index < 0:
    return None
  shape = tf.shape(example["image"])
  matrix = augment.params_matrix(shape[0], shape[1], cfg.size, params)
  box = augment.coco_boxes_to_xyxy(params["box"])[None]
  boxes, _ = augment.transform_boxes(box, matrix, (cfg.size, cfg.size))
  return index, boxes.numpy()[0]


def draw_left(rgb, t, centre_box=None, person_box=None):
  """Boxes, keypoints and skeleton on the augmented input; `centre_box` and `person_box` (xyxy)
  in cyan."""
  im = Image.fromarray(rgb)
  d = ImageDraw.Draw(im)
  if centre_box is not None:
    d.rectangle(list(centre_box), outline=(0, 255, 255), width=1)
  for box, label in zip(t["boxes"], t["box_labels"]):
    if label:
      d.rectangle(list(box), outline=(0, 255, 0) if label > 0 else (255, 0, 0), width=2)
  for kp in t["keypoints"]:
    for a, b in coco.SKELETON:
      if kp[a, 2] > 0 and kp[b, 2] > 0:
        d.line([tuple(kp[a, :2]), tuple(kp[b, :2])], fill=(255, 255, 255), width=1)
    for k, (x, y, v) in enumerate(kp):
      if v > 0:
        name = coco.KEYPOINT_NAMES[k]
        color = (60, 120, 255) if name.startswith("left") else (
            (255, 150, 0) if name.startswith("right") else (255, 0, 255))
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
  if person_box is not None:
    d.rectangle(list(person_box), outline=(0, 255, 255), width=3)
  return np.asarray(im)


def draw_right(rgb, t):
  out = rgb.astype(np.float32) * 0.4
  heat = upsample(t["heatmaps"].max(-1))[..., None]
  mask = upsample(t["mask"][..., 0])[..., None]
  ignored = upsample(1.0 - t["weights"][..., 0])[..., None]
  out = out + mask * np.array([0, 90, 0]) + ignored * np.array([120, 0, 0])
  out = out * (1 - heat) + heat * np.array([255, 255, 0])
  return np.clip(out, 0, 255).astype(np.uint8)


def input_config():
  """config.input of --config with --size, --sigma, --center and --no_augment applied."""
  cfg = branches_config.get_config(_PRESET.value).input.copy_and_resolve_references()
  cfg.size = _SIZE.value
  cfg.heatmap_sigma = _SIGMA.value
  cfg.crop_size = 0  # the whole S x S canvas
  if _CENTER.value:
    cfg.augment.center = _CENTER.value
  if _NO_AUG.value:
    cfg.augment.update(dict(scale_min=1.0, scale_max=1.0, rotation=0.0, translate=0.0, flip=0.0))
    cfg.augment.color_jitter.update(dict(brightness=0., contrast=0., saturation=0., hue=0.))
  return cfg


def main(argv):
  del argv
  cfg = input_config()
  aug = cfg.augment
  person = aug.get("center", "letterbox") == "person"
  centre_box = None
  if person:
    lo, hi = (0.5 - aug.translate) * cfg.size, (0.5 + aug.translate) * cfg.size
    centre_box = (lo, lo, hi, hi)
  print(f"center={aug.get('center', 'letterbox')} size={cfg.size} scale={aug.scale_min}-"
        f"{aug.scale_max} rotation=+-{aug.rotation} translate=+-{aug.translate} flip={aug.flip}" +
        (f" person_height={aug.person_height} max_zoom={aug.max_zoom}" if person else ""))
  rows = []
  for i, example in enumerate(load_examples(_NUM.value)):
    example = tf.nest.map_structure(tf.convert_to_tensor, example)
    seed = pipeline.example_seed(_SEED.value, 0, i)
    t = tf.nest.map_structure(np.asarray, pipeline.preprocess_train(example, seed, cfg))
    chosen = chosen_person(example, seed, cfg) if person else None
    rgb = denormalize(t["image"])
    rows.append(np.concatenate([draw_left(rgb, t, centre_box, chosen and chosen[1]),
                                draw_right(rgb, t)], 1))
    where = ""
    if person:
      where = (f"centred on person {chosen[0]} ({chosen[1][3] - chosen[1][1]:.0f} px tall), "
               if chosen else "no person: letterbox, ")
    print(f"example {i} (image {int(example['image_id'])}): {where}"
          f"{int((t['box_labels'] > 0).sum())} person boxes, "
          f"{int((t['box_labels'] < 0).sum())} crowd boxes, "
          f"{int((t['keypoints'][..., 2] > 0).sum())} visible keypoints, "
          f"heatmap max {t['heatmaps'].max():.3f}, ignored cells {(t['weights'] == 0).mean():.1%}")
  if not rows:
    raise app.UsageError("no examples found")
  pathlib.Path(_OUTPUT.value).parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.concatenate(rows, 0)).save(_OUTPUT.value)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
