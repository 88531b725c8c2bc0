"""Dataset configs -> prepared TFDS builders and their COCO-format annotation files.

`config.dataset` (an ml_collections.ConfigDict or a plain dict) holds:
  name: 'coco_keypoints' or 'mpn_synthetic'.
  data_dir: where TFDS writes/reads the prepared records (default: TFDS's own, ~/tensorflow_datasets).
  coco_keypoints: coco_dir (COCO root with annotations/, train2017/, val2017/; None downloads the
    official archives), train_ann / val_ann (file names in annotations/ or absolute paths).
    Prepared records remember their source (coco_keypoints.SOURCE_FILE): `load_builder` stops with
    an errors.DataError when coco_dir or an annotation file's content differs from it.
  mpn_synthetic: image_size, num_train, num_val, seed (see synthetic.SyntheticConfig for defaults).
Split names are TFDS's 'train' and 'validation' ('val' is accepted as an alias).

Command line (builds, then prints the splits and annotation files):
  python -m mpn_jax.data.datasets --name=coco_keypoints --coco_dir=../shared/data/coco \
      --train_ann=person_keypoints_train2017_sample.json \
      --val_ann=person_keypoints_val2017_sample.json --data_dir=/tmp/tfds
  python -m mpn_jax.data.datasets --name=mpn_synthetic --image_size=128 --num_train=512 \
      --num_val=64 --seed=0 --data_dir=/tmp/tfds
coco_keypoints needs --coco_dir, or --download to fetch the official archives (~19 GB). Errors the
user can fix (a missing folder, a malformed annotation file, records of another source) print one
line, `mpn_jax.data.datasets: error: ...`, and exit with status 2.
"""

import argparse
import contextlib
import logging
import os
import pathlib

from mpn_jax import cli
from mpn_jax import errors
from mpn_jax.data import coco_keypoints
from mpn_jax.data import synthetic

NAMES = ("coco_keypoints", "mpn_synthetic")
PROG = "mpn_jax.data.datasets"
DATA_DIR_FLAG = "--config.dataset.data_dir"


def _get(cfg, key, default=None):
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None or value == "" else value  # "" = unset, as in flag overrides


def canonical_split(split):
  """'train' / 'validation' (also from 'val' and sliced names such as 'validation[:10]')."""
  base = str(split).split("[")[0]
  base = {"val": "validation", "eval": "validation"}.get(base, base)
  if base not in coco_keypoints.SPLITS:
    raise errors.ConfigError(f"unknown split {split!r}: use 'train' or 'validation'")
  return base


class _NoCustomConfigNotice(logging.Filter):
  """Drops TFDS's "Using custom data configuration" warning: both builders take their config from
  config.dataset by design (one per annotation-file pair / synthetic size), so it is no warning."""

  def filter(self, record):
    return not str(record.msg).startswith("Using custom data configuration")


@contextlib.contextmanager
def _custom_config_quiet():
  logger = logging.getLogger("absl")  # TFDS logs through absl.logging
  notice = _NoCustomConfigNotice()
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


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
        raise errors.ConfigError(f"dataset.data_dir {data_dir} lies inside dataset.coco_dir "
                                 f"{coco_dir}: build the records elsewhere (e.g. /tmp/tfds)")
    config = coco_keypoints.make_config(
        _get(cfg, "train_ann", coco_keypoints.OFFICIAL_ANNS["train"]),
        _get(cfg, "val_ann", coco_keypoints.OFFICIAL_ANNS["validation"]))
    with _custom_config_quiet():
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
    with _custom_config_quiet():
      return synthetic.MpnSynthetic(data_dir=data_dir,
                                    config=_config_arg(synthetic.MpnSynthetic, config))
  raise errors.ConfigError(f"unknown dataset.name {name!r}: use one of {NAMES}")


def check_source(builder, data_dir_flag=DATA_DIR_FLAG):
  """Raises errors.DataError when `builder`'s prepared records came from another source.

  Only coco_keypoints records are checked (`CocoKeypoints.source_mismatches`: coco_dir and the
  annotation files' sha256); mpn_synthetic records are fully determined by their config name.
  `data_dir_flag` is the flag the message tells the user to change.
  """
  mismatches = getattr(builder, "source_mismatches", lambda: None)()
  if mismatches:
    # One line that stays short (cli.fail cuts at 600 characters): the records' path relative to
    # data_dir, each difference a clause.
    records = pathlib.Path(builder.data_path)
    root = pathlib.Path(builder.data_dir_root)
    rel = records.relative_to(root) if records.is_relative_to(root) else records
    raise errors.DataError(
        f"data_dir {root}: the records {rel} do not match the config: {'; '.join(mismatches)}. "
        f"Delete {records} to rebuild them, or set {data_dir_flag} to another folder")


def load_builder(cfg, data_dir_flag=DATA_DIR_FLAG):
  """Returns the TFDS builder for `cfg` (config.dataset), preparing the records first if needed.

  Prepared coco_keypoints records are checked against cfg's coco_dir and annotation files first
  (`check_source`; errors.DataError on a mismatch, naming `data_dir_flag` as one way out).
  """
  builder = make_builder(cfg)
  # Not builder.is_prepared(): it logs a warning for the empty folder TFDS leaves after a failed
  # build.
  if os.path.exists(os.path.join(os.fspath(builder.data_path), "dataset_info.json")):
    check_source(builder, data_dir_flag)
  builder.download_and_prepare()
  return builder


def annotation_file(cfg, split, data_dir_flag=DATA_DIR_FLAG):
  """Path of the COCO-format annotation json of `split`, written next to the prepared records.

  It lists exactly the images in the split's records (images that could not be read are left out).
  """
  builder = load_builder(cfg, data_dir_flag)
  path = builder.data_path / coco_keypoints.ANNOTATION_FILE_PATTERN.format(
      split=canonical_split(split))
  if not path.exists():
    raise errors.MissingFileError(f"{path} is missing: the records in {builder.data_dir} were "
                                  "prepared by another version; delete that folder to rebuild them")
  return os.fspath(path)


COCO_DIR_REQUIRED = ("--coco_dir is required: the COCO root with annotations/, train2017/, "
                     "val2017/ (or pass --download to fetch the official archives, ~19 GB)")


def _fail(message):
  """Prints `PROG: error: message` (one line) to stderr and exits with status 2, as argparse."""
  cli.fail(PROG, message)


def _build(args):
  cfg = {k: v for k, v in vars(args).items() if v is not None and k != "download"}
  builder = load_builder(cfg, data_dir_flag="--data_dir")
  for split, info in builder.info.splits.items():
    path = annotation_file(cfg, split, data_dir_flag="--data_dir")
    print(f"{split}: {info.num_examples} examples, annotations {path}")


def main(argv=None):
  """The command line: builds one dataset, prints its splits; user errors as one line, status 2."""
  parser = argparse.ArgumentParser(prog=PROG,
                                   description="Builds a dataset of this project with TFDS.")
  parser.add_argument("--name", required=True, choices=NAMES)
  parser.add_argument("--data_dir", required=True, help="where the TFDS records go")
  parser.add_argument("--coco_dir",
                      help="coco_keypoints: COCO root with annotations/, train2017/, val2017/")
  parser.add_argument("--download", action="store_true",
                      help="coco_keypoints without --coco_dir: download the official archives "
                           "(~19 GB)")
  parser.add_argument("--train_ann", help="coco_keypoints: train annotation file")
  parser.add_argument("--val_ann", help="coco_keypoints: validation annotation file")
  for name in ("image_size", "num_train", "num_val", "seed"):
    parser.add_argument(f"--{name}", type=int, help="mpn_synthetic")
  args = parser.parse_args(argv)
  # Downloading ~19 GB is never a default: a forgotten --coco_dir must not start it.
  if args.name == "coco_keypoints" and not args.coco_dir and not args.download:
    _fail(COCO_DIR_REQUIRED)
  if args.coco_dir and args.download:
    _fail("--download fetches the official archives instead of reading --coco_dir: pass one of "
          "them")
  try:
    _build(args)
  except errors.UserError as e:  # AnnotationError, MissingFileError, ConfigError, ...
    _fail(str(e))
  except OSError as e:
    if e.filename is not None:  # a path the user named: unwritable data_dir, disk full, ...
      _fail(cli.describe_os_error(e))
    if isinstance(e, FileNotFoundError):  # raised with a message naming the path
      _fail(str(e))
    raise  # not about a path the user gave: a programming error


if __name__ == "__main__":
  main()
