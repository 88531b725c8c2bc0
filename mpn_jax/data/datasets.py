"""Dataset configs -> prepared TFDS builders and their COCO-format annotation files.

`config.dataset` (an ml_collections.ConfigDict or a plain dict) holds:
  name: 'coco_keypoints' or 'mpn_synthetic'.
  data_dir: where TFDS writes/reads the prepared records (default: TFDS's own, ~/tensorflow_datasets).
  coco_keypoints: coco_dir (COCO root with annotations/, train2017/, val2017/; None downloads the
    official archives), train_ann / val_ann (file names in annotations/ or absolute paths).
  mpn_synthetic: image_size, num_train, num_val, seed (see synthetic.SyntheticConfig for defaults).
Split names are TFDS's 'train' and 'validation' ('val' is accepted as an alias).

Command line (builds, then prints the splits and annotation files):
  python -m mpn_jax.data.datasets --name=coco_keypoints --coco_dir=../shared/data/coco \
      --train_ann=person_keypoints_train2017_sample.json \
      --val_ann=person_keypoints_val2017_sample.json --data_dir=/tmp/tfds
  python -m mpn_jax.data.datasets --name=mpn_synthetic --image_size=128 --num_train=512 \
      --num_val=64 --seed=0 --data_dir=/tmp/tfds
"""

import argparse
import os
import pathlib


from mpn_jax.data import coco_keypoints
from mpn_jax.data import synthetic

NAMES = ("coco_keypoints", "mpn_synthetic")


def _get(cfg, key, default=None):
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None or value == "" else value  # "" = unset, as in flag overrides


def canonical_split(split):
  """'train' / 'validation' (also from 'val' and sliced names such as 'validation[:10]')."""
  base = str(split).split("[")[0]
  base = {"val": "validation", "eval": "validation"}.get(base, base)
  if base not in coco_keypoints.SPLITS:
    raise ValueError(f"unknown split {split!r}: use 'train' or 'validation'")
  return base


def _config_arg(builder_cls, config):
  """A predefined config by name (TFDS refuses an equal custom instance under the same name)."""
  return config.name if config.name in {c.name for c in builder_cls.BUILDER_CONFIGS} else config


def make_builder(cfg):
  """The (not necessarily prepared) TFDS builder named by `cfg`."""
  name = _get(cfg, "name")
  data_dir = _get(cfg, "data_dir")
  if data_dir is not None:
    data_dir = os.fspath(pathlib.Path(data_dir).expanduser())
  if name == "coco_keypoints":
    coco_dir = _get(cfg, "coco_dir")
    if coco_dir is not None and data_dir is not None:
      root, out = pathlib.Path(coco_dir).expanduser().resolve(), pathlib.Path(data_dir).resolve()
      if out == root or root in out.parents:
        raise ValueError(f"dataset.data_dir {data_dir} lies inside dataset.coco_dir {coco_dir}: "
                         "build the records elsewhere (e.g. /tmp/tfds)")
    config = coco_keypoints.make_config(
        _get(cfg, "train_ann", coco_keypoints.OFFICIAL_ANNS["train"]),
        _get(cfg, "val_ann", coco_keypoints.OFFICIAL_ANNS["validation"]))
    return coco_keypoints.CocoKeypoints(
        data_dir=data_dir, config=_config_arg(coco_keypoints.CocoKeypoints, config),
        coco_dir=coco_dir)
  if name == "mpn_synthetic":
    defaults = synthetic.SyntheticConfig(name="defaults")
    config = synthetic.make_config(
        image_size=int(_get(cfg, "image_size", defaults.image_size)),
        num_train=int(_get(cfg, "num_train", defaults.num_train)),
        num_val=int(_get(cfg, "num_val", defaults.num_val)),
        seed=int(_get(cfg, "seed", defaults.seed)))
    return synthetic.MpnSynthetic(data_dir=data_dir,
                                  config=_config_arg(synthetic.MpnSynthetic, config))
  raise ValueError(f"unknown dataset.name {name!r}: use one of {NAMES}")


def load_builder(cfg):
  """Returns the TFDS builder for `cfg` (config.dataset), preparing the records first if needed."""
  builder = make_builder(cfg)
  builder.download_and_prepare()
  return builder


def annotation_file(cfg, split):
  """Path of the COCO-format annotation json of `split`, written next to the prepared records.

  It lists exactly the images in the split's records (images that could not be read are left out).
  """
  builder = load_builder(cfg)
  path = builder.data_path / coco_keypoints.ANNOTATION_FILE_PATTERN.format(
      split=canonical_split(split))
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: the records in {builder.data_dir} were prepared "
                            "by another version; delete that folder to rebuild them")
  return os.fspath(path)


def main(argv=None):
  parser = argparse.ArgumentParser(description="Builds a dataset of this project with TFDS.")
  parser.add_argument("--name", required=True, choices=NAMES)
  parser.add_argument("--data_dir", required=True, help="where the TFDS records go")
  parser.add_argument("--coco_dir", help="coco_keypoints: COCO root (none: download)")
  parser.add_argument("--train_ann", help="coco_keypoints: train annotation file")
  parser.add_argument("--val_ann", help="coco_keypoints: validation annotation file")
  for name in ("image_size", "num_train", "num_val", "seed"):
    parser.add_argument(f"--{name}", type=int, help="mpn_synthetic")
  cfg = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
  builder = load_builder(cfg)
  for split, info in builder.info.splits.items():
    print(f"{split}: {info.num_examples} examples, annotations {annotation_file(cfg, split)}")


if __name__ == "__main__":
  main()
