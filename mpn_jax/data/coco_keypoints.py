"""`coco_keypoints`: COCO 2017 person keypoints as a TFDS dataset (one example per image).

Build from a local copy in the standard COCO layout (`annotations/person_keypoints_{train,val}2017.json`,
`{train,val}2017/*.jpg`), e.g. the samples in ../shared/data/coco:

  python -m mpn_jax.data.datasets --name=coco_keypoints --coco_dir=../shared/data/coco \
      --train_ann=person_keypoints_train2017_sample.json \
      --val_ann=person_keypoints_val2017_sample.json --data_dir=/tmp/tfds

(in Python: `datasets.load_builder(config.dataset)`, or `CocoKeypoints(data_dir=..., config='2017_sample',
coco_dir=...)`; a TFDS `DownloadConfig(manual_dir=...)` works too). Without a coco_dir the official
files are used: the '2017' config downloads the archives (images ~19 GB +
annotations_trainval2017.zip; the command line asks for --download).
The config is named by the annotation files ('2017', '2017_sample' or 'custom_<hash>'), so the
records also remember their source in `source.json` (the resolved coco_dir or the download URLs,
and each annotation file's path and sha256): `datasets.load_builder` refuses records built from
another coco_dir or from an annotation file that has changed since (`source_mismatches`).

Every image of the annotation file becomes an example, also images without people (negatives for the
detector). Features (see docs/design.md "data"): 'image' uint8 [H, W, 3] jpeg, 'image_id' int64,
'file_name' text, 'people' Sequence of {'bbox' float32 [4] COCO xywh, 'keypoints' float32 [17, 3]
(x, y, v), 'num_keypoints' int32, 'iscrowd' bool, 'area' float32, 'id' int64}, 'person_mask' uint8
[H, W, 1] png (union of non-crowd people) and 'ignore_mask' uint8 [H, W, 1] png (crowd regions and
people without any labelled keypoint). The annotation file of each split, restricted to the images that
made it into the dataset, is written next to the records as `annotations_{split}.json`.

Annotation values are checked before anything is built (`load_annotations`, with the checks of
`mpn_jax.data.annotations` that the PRN's loader shares): a malformed, non-finite (NaN, Infinity) or
mis-sized value stops the build with an AnnotationError (an errors.DataError) naming the file, the
annotation (index, id, image_id) and the field.
"""

import dataclasses
import hashlib
import inspect
import io
import json
import os
import pathlib
import warnings

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from mpn_jax import cli  # pylint: disable=g-bad-import-order
cli.import_tensorflow_quietly()  # before TensorFlow first loads: its native start-up notices off
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax.data import annotations

SPLITS = ("train", "validation")
# COCO's own names for the split folders and the default annotation files.
SPLIT_DIRS = {"train": "train2017", "validation": "val2017"}
OFFICIAL_ANNS = {"train": "person_keypoints_train2017.json",
                 "validation": "person_keypoints_val2017.json"}
SAMPLE_ANNS = {"train": "person_keypoints_train2017_sample.json",
               "validation": "person_keypoints_val2017_sample.json"}
URLS = {
    "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    "train": "http://images.cocodataset.org/zips/train2017.zip",
    "validation": "http://images.cocodataset.org/zips/val2017.zip",
}
ANNOTATION_FILE_PATTERN = "annotations_{split}.json"
# Written next to the records: where they were built from (see `source_record`).
SOURCE_FILE = "source.json"

_IMAGE_FIELDS = {"id": int, "file_name": str, "width": int, "height": int}
_ANN_FIELDS = ("id", "image_id", "category_id", "bbox", "keypoints", "num_keypoints", "iscrowd",
               "area", "segmentation")


# A COCO annotation file is not valid JSON, lacks a field or holds a malformed value (a
# errors.DataError and a ValueError; shared with prn_samples, which reads the same files).
AnnotationError = annotations.AnnotationError


class UnreadableImageWarning(UserWarning):
  """An image file could not be decoded (or disagrees with its record) and was left out."""


def example_features(image_format="jpeg"):
  """The feature dict shared by `coco_keypoints` and `mpn_synthetic` (docs/design.md "data")."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
      "image_id": np.int64,
      "file_name": tfds.features.Text(),
      "people": tfds.features.Sequence({
          "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
          "keypoints": tfds.features.Tensor(shape=(coco.NUM_KEYPOINTS, 3), dtype=np.float32),
          "num_keypoints": np.int32,
          "iscrowd": np.bool_,
          "area": np.float32,
          "id": np.int64,
      }),
      "person_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
      "ignore_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
  })


# ---------------------------------------------------------------------------------------------------
# Annotation file: loading and validation.


def _check_segmentation(path, where, segm):
  if isinstance(segm, dict):
    if "counts" not in segm or "size" not in segm:
      raise AnnotationError(f"{path}: {where}: field 'segmentation' is a dict but lacks 'counts' "
                            "or 'size' (expected COCO RLE)")
  elif isinstance(segm, list):
    for poly in segm:
      if (not isinstance(poly, list) or len(poly) % 2 or
          not all(annotations.is_number(v) for v in poly)):
        raise AnnotationError(f"{path}: {where}: field 'segmentation' must hold polygons, i.e. "
                              "lists of an even number of finite coordinates")
  else:
    raise AnnotationError(f"{path}: {where}: field 'segmentation' must be a list of polygons or an "
                          f"RLE dict, got {type(segm).__name__}")


def validate_annotation(path, ann, index):
  """Raises AnnotationError naming `path`, the annotation (index, id, image_id) and the field if
  `ann` is not a valid COCO person record with keypoints (every number finite)."""
  where = annotations.where(index, ann)
  if not isinstance(ann, dict):
    raise AnnotationError(f"{path}: {where} is not a JSON object")
  for field in _ANN_FIELDS:
    if field not in ann:
      raise AnnotationError(f"{path}: {where}: missing field '{field}'")
  for field in ("id", "image_id", "num_keypoints"):
    annotations.check_int(path, where, ann, field)
  annotations.check_bbox(path, where, ann["bbox"])
  annotations.check_keypoints(path, where, ann["keypoints"])
  vis = ann["keypoints"][2::3]
  labelled = sum(v > 0 for v in vis)
  if ann["num_keypoints"] != labelled:
    raise AnnotationError(f"{path}: {where}: field 'num_keypoints' is {ann['num_keypoints']} but "
                          f"'keypoints' has {labelled} labelled (v > 0) keypoints")
  if ann["iscrowd"] not in (0, 1):
    raise AnnotationError(f"{path}: {where}: field 'iscrowd' must be 0 or 1, got "
                          f"{ann['iscrowd']!r}")
  if not annotations.is_number(ann["area"]) or ann["area"] < 0:
    raise AnnotationError(f"{path}: {where}: field 'area' must be a finite non-negative number, "
                          f"got {ann['area']!r}")
  _check_segmentation(path, where, ann["segmentation"])


def load_annotations(path):
  """Reads and validates a COCO person-keypoint annotation file.

  Args:
    path: the JSON file.
  Returns:
    (dataset dict as loaded, list of (image record, [person annotation records]) in file order).
    Annotations of other categories than person are left out.
  Raises:
    errors.MissingFileError (a FileNotFoundError) if the file is missing; AnnotationError (an
    errors.DataError) naming the file, the record and the field if it is malformed: not JSON, a
    missing field, a non-finite (NaN, Infinity) or mis-sized value.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.MissingFileError(f"COCO annotation file {path} does not exist: check the "
                                  "dataset's coco_dir (manual dir) and train_ann/val_ann")
  data = annotations.read_json(path, fields=("images", "annotations"))
  images, order = {}, []
  for i, img in enumerate(data["images"]):
    for field, kind in _IMAGE_FIELDS.items():
      if not isinstance(img, dict) or field not in img:
        raise AnnotationError(f"{path}: image #{i}: missing field '{field}'")
      # NaN and Infinity are floats: the int fields (id, width, height) cannot hold them.
      if not isinstance(img[field], kind) or isinstance(img[field], bool):
        raise AnnotationError(f"{path}: image #{i} (id {img.get('id')}): field '{field}' must be "
                              f"{kind.__name__}, got {img[field]!r}")
    if img["width"] <= 0 or img["height"] <= 0:
      raise AnnotationError(f"{path}: image #{i} (id {img['id']}): field 'width'/'height' must be "
                            f"positive, got {img['width']}x{img['height']}")
    if img["id"] in images:
      raise AnnotationError(f"{path}: image #{i}: duplicate image id {img['id']}")
    images[img["id"]] = (img, [])
    order.append(img["id"])
  for i, ann in enumerate(data["annotations"]):
    if isinstance(ann, dict) and ann.get("category_id", coco.PERSON_CATEGORY_ID) != (
        coco.PERSON_CATEGORY_ID):
      continue
    validate_annotation(path, ann, i)
    if ann["image_id"] not in images:
      raise AnnotationError(f"{path}: {annotations.where(i, ann)}: field 'image_id' "
                            f"{ann['image_id']} names no image of the file")
    images[ann["image_id"]][1].append(ann)
  return data, [images[i] for i in order]


# ---------------------------------------------------------------------------------------------------
# Masks.


def segmentation_mask(ann, height, width):
  """Decodes an annotation's segmentation (polygons, RLE or uncompressed RLE) to [H, W] uint8 0/1.

  An empty segmentation falls back to the filled bounding box, so that a person never vanishes from
  the masks.
  """
  segm = ann["segmentation"]
  if isinstance(segm, list) and not segm:
    x, y, w, h = ann["bbox"]
    out = np.zeros((height, width), np.uint8)
    out[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = 1
    return out
  if isinstance(segm, list):  # polygons
    rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
  elif isinstance(segm["counts"], list):  # uncompressed RLE (COCO's crowd regions)
    rle = mask_utils.frPyObjects(segm, height, width)
  else:
    rle = dict(segm)
    if isinstance(rle["counts"], str):
      rle["counts"] = rle["counts"].encode("ascii")
  mask = mask_utils.decode(rle)
  if mask.shape[:2] != (height, width):
    raise AnnotationError(f"annotation id {ann['id']}: segmentation size {mask.shape[:2]} differs "
                          f"from its image's {(height, width)}")
  return mask.astype(np.uint8)


def people_masks(anns, height, width):
  """Union masks of a list of COCO person annotations.

  Returns:
    (person_mask [H, W] uint8: 1 on non-crowd people, ignore_mask [H, W] uint8: 1 on crowd regions
    and on people without any labelled keypoint).
  """
  person = np.zeros((height, width), np.uint8)
  ignore = np.zeros((height, width), np.uint8)
  for ann in anns:
    m = segmentation_mask(ann, height, width)
    if not ann["iscrowd"]:
      person |= m
    if ann["iscrowd"] or ann["num_keypoints"] == 0:
      ignore |= m
  return person, ignore


def encode_png(array):
  """[H, W] or [H, W, C] uint8 -> PNG bytes (deterministic, no TF session)."""
  array = np.asarray(array, np.uint8)
  if array.ndim == 3 and array.shape[-1] == 1:  # PIL wants single-channel images as [H, W]
    array = array[..., 0]
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def person_features(ann):
  """One COCO person annotation -> the 'people' feature dict."""
  return {
      "bbox": np.asarray(ann["bbox"], np.float32),
      "keypoints": np.asarray(ann["keypoints"], np.float32).reshape(coco.NUM_KEYPOINTS, 3),
      "num_keypoints": np.int32(ann["num_keypoints"]),
      "iscrowd": bool(ann["iscrowd"]),
      "area": np.float32(ann["area"]),
      "id": np.int64(ann["id"]),
  }


def read_jpeg(path, width, height):
  """Returns JPEG bytes of an RGB image file, checking that it decodes and has the recorded size.

  The original bytes are kept when the file already is an RGB JPEG (no recompression); grey or CMYK
  images are converted to RGB and re-encoded.
  Raises:
    ValueError naming the file when it is missing, cannot be decoded or has another size.
  """
  try:
    data = pathlib.Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # decodes everything: truncated/corrupt files raise here
      if im.size != (width, height):
        raise ValueError(f"size {im.size[0]}x{im.size[1]} differs from the annotation's "
                         f"{width}x{height}")
      if im.format == "JPEG" and im.mode == "RGB":
        return data
      buf = io.BytesIO()
      im.convert("RGB").save(buf, format="JPEG", quality=95)
      return buf.getvalue()
  except Exception as e:  # PIL raises many types for broken files.
    raise ValueError(f"cannot read image {path}: {e}") from e


# ---------------------------------------------------------------------------------------------------
# Builder.


class CodePathMixin:
  """Locates the builder's source file without `importlib_resources`; logs its build in one line.

  TFDS 4.9.x's own `code_path` touches the `importlib_resources` backport, which it only declares as
  a dependency for Python < 3.9; on newer Pythons without it every builder in an installed package
  fails. The source file is all TFDS needs (to look for an optional checksums.tsv beside it).
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(inspect.getfile(cls))

  # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)" before
  # a build and a bold "downloaded and prepared" line after it; these builders download nothing.
  def _log_download_bytes(self):
    logging.info("preparing the %s records in %s (once: later runs reuse them)", self.name,
                 self.data_dir)

  def _log_download_done(self):
    pass


@dataclasses.dataclass(eq=False)
class CocoKeypointsConfig(tfds.core.BuilderConfig):
  """Which annotation files (in `annotations/`, or absolute paths) make the train/validation split."""
  train_ann: str = OFFICIAL_ANNS["train"]
  val_ann: str = OFFICIAL_ANNS["validation"]

  def ann(self, split):
    return self.train_ann if split == "train" else self.val_ann

  @property
  def is_official(self):
    return (self.train_ann, self.val_ann) == (OFFICIAL_ANNS["train"], OFFICIAL_ANNS["validation"])


def make_config(train_ann, val_ann):
  """The predefined config for these annotation files, or a custom one named by their hash."""
  for config in CocoKeypoints.BUILDER_CONFIGS:
    if (config.train_ann, config.val_ann) == (train_ann, val_ann):
      return config
  digest = hashlib.sha1(f"{train_ann}\n{val_ann}".encode()).hexdigest()[:10]
  return CocoKeypointsConfig(name=f"custom_{digest}", train_ann=train_ann, val_ann=val_ann,
                             description=f"train: {train_ann}, validation: {val_ann}")


class CocoKeypoints(CodePathMixin, tfds.core.GeneratorBasedBuilder):
  """COCO 2017 person keypoints, one example per image, with person and ignore masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      CocoKeypointsConfig(name="2017", description="Official COCO 2017 train/val keypoints."),
      CocoKeypointsConfig(name="2017_sample", train_ann=SAMPLE_ANNS["train"],
                          val_ann=SAMPLE_ANNS["validation"],
                          description="The project's real samples (../shared/data/coco)."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional: point the manual dir (builder kwarg coco_dir=, or --manual_dir) to a COCO root "
      "holding annotations/<train_ann>, annotations/<val_ann>, train2017/ and val2017/. Without it "
      "the '2017' config downloads the official archives.")

  def __init__(self, *, coco_dir=None, **kwargs):
    """`coco_dir`: COCO root to build from (takes precedence over the TFDS manual dir)."""
    self._coco_dir = None if coco_dir is None else pathlib.Path(coco_dir).expanduser()
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=example_features(),
        homepage="https://cocodataset.org/#keypoints-2020",
    )

  def _local_root(self, dl_manager):
    """The COCO root to read, or None to download. Never touches the network."""
    if self._coco_dir is not None:
      root = self._coco_dir
    else:
      root = getattr(dl_manager, "_manual_dir", None)
      default = dl_manager.download_dir / "manual"
      # The default manual dir counts only when filled; one the user named must exist.
      if root is None or (pathlib.Path(root) == pathlib.Path(default) and not (
          pathlib.Path(root).is_dir() and any(pathlib.Path(root).iterdir()))):
        return None
    root = pathlib.Path(root)
    if not root.is_dir():
      raise errors.MissingFileError(
          f"COCO directory {root} does not exist: pass the folder that holds annotations/, "
          "train2017/ and val2017/ as coco_dir (or --manual_dir)")
    return root

  def _split_generators(self, dl_manager):
    config = self.builder_config
    root = self._local_root(dl_manager)
    if root is not None:
      sources = {s: (self._ann_path(root, config.ann(s)), root / SPLIT_DIRS[s]) for s in SPLITS}
    else:
      if not config.is_official:
        raise errors.MissingFileError(
            f"coco_keypoints config '{config.name}' reads {config.train_ann} / {config.val_ann}, "
            "which are not in the official archives: pass coco_dir (or --manual_dir) holding them "
            "in annotations/")
      paths = dl_manager.download_and_extract(URLS)
      sources = {s: (pathlib.Path(paths["annotations"]) / "annotations" / OFFICIAL_ANNS[s],
                     pathlib.Path(paths[s]) / SPLIT_DIRS[s]) for s in SPLITS}
    for split, (ann_path, image_dir) in sources.items():
      if not ann_path.is_file():
        raise errors.MissingFileError(
            f"COCO annotation file {ann_path} for split '{split}' does not exist: check coco_dir "
            "and train_ann/val_ann")
      if not image_dir.is_dir():
        raise errors.MissingFileError(
            f"COCO image directory {image_dir} for split '{split}' does not exist: coco_dir must "
            "hold train2017/ and val2017/")
    # self.data_dir is TFDS's temporary folder here: source.json moves with the records.
    write_source(os.path.join(self.data_dir, SOURCE_FILE), root,
                 {s: sources[s][0] for s in SPLITS})
    return {s: self._generate_examples(s, *sources[s]) for s in SPLITS}

  def source_mismatches(self):
    """How the source of the prepared records differs from this builder's coco_dir and files.

    Call it on prepared records only.
    Returns:
      list of one-line descriptions (empty when the source matches), or None when there is nothing
      to compare: no coco_dir was given (the records are read as they are), or the records were
      prepared before source.json was written (a warning is logged once per records folder).
    Raises:
      errors.DataError when source.json cannot be read.
    """
    if self._coco_dir is None:
      return None
    recorded = read_source(self.data_path)
    if recorded is None:
      key = os.fspath(self.data_path)
      if key not in _UNCHECKED_WARNED:
        _UNCHECKED_WARNED.add(key)
        logging.warning("coco_keypoints: the records in %s were prepared without %s, so their "
                        "source cannot be checked against coco_dir %s; delete them to rebuild if "
                        "the COCO files changed", key, SOURCE_FILE, self._coco_dir)
      return None
    root = self._coco_dir.resolve()
    return source_mismatches(recorded, root, {
        s: self._ann_path(root, self.builder_config.ann(s)) for s in SPLITS})

  @staticmethod
  def _ann_path(root, ann):
    ann = pathlib.Path(ann)
    return ann if ann.is_absolute() else root / "annotations" / ann

  def _generate_examples(self, split, ann_path, image_dir):
    """Yields (image id, example); warns about and counts images that cannot be read."""
    data, records = load_annotations(ann_path)
    skipped = []
    for img, anns in records:
      path = image_dir / img["file_name"]
      try:
        jpeg = read_jpeg(path, img["width"], img["height"])
      except ValueError as e:
        warnings.warn(f"coco_keypoints: skipping image id {img['id']}: {e}",
                      UnreadableImageWarning)
        skipped.append(img)
        continue
      person, ignore = people_masks(anns, img["height"], img["width"])
      yield img["id"], {
          "image": jpeg,
          "image_id": img["id"],
          "file_name": img["file_name"],
          "people": [person_features(a) for a in anns],
          "person_mask": encode_png(person[..., None]),
          "ignore_mask": encode_png(ignore[..., None]),
      }
    if skipped:
      msg = (f"coco_keypoints: skipped {len(skipped)} of {len(records)} images of split '{split}' "
             f"({ann_path}) that could not be read: "
             f"{', '.join(i['file_name'] for i in skipped[:10])}{' ...' if len(skipped) > 10 else ''}")
      warnings.warn(msg, UnreadableImageWarning)
      logging.warning(msg)
      if len(skipped) == len(records):
        raise errors.DataError(f"coco_keypoints: no image of {ann_path} could be read from "
                               f"{image_dir}")
    write_annotations(data, {i["id"] for i in skipped},
                      os.path.join(self.data_dir, ANNOTATION_FILE_PATTERN.format(split=split)))


def write_annotations(data, skip_ids, path):
  """Writes `data` without the images in `skip_ids` (and their annotations) to `path`."""
  out = dict(data)
  out["images"] = [i for i in data["images"] if i["id"] not in skip_ids]
  out["annotations"] = [a for a in data["annotations"] if a.get("image_id") not in skip_ids]
  out.setdefault("categories", [coco.PERSON_CATEGORY])
  with open(path, "w") as f:
    json.dump(out, f)


# ---------------------------------------------------------------------------------------------------
# Where prepared records came from (source.json): the config names only the annotation files, so
# that the same data_dir with another coco_dir or an edited file of the same name is caught.

_SHA256_CACHE = {}  # (resolved path, size, mtime_ns) -> hex digest: hash a 240 MB file once a run
_UNCHECKED_WARNED = set()  # records folders without source.json already warned about


def file_sha256(path, chunk_size=1 << 20):
  """Hex sha256 of a file, read in chunks; cached by (path, size, mtime) within the process."""
  path = pathlib.Path(path).resolve()
  st = path.stat()
  key = (os.fspath(path), st.st_size, st.st_mtime_ns)
  if key not in _SHA256_CACHE:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(chunk_size), b""):
        digest.update(chunk)
    _SHA256_CACHE[key] = digest.hexdigest()
  return _SHA256_CACHE[key]


def source_record(coco_dir, ann_paths):
  """What source.json holds.

  Args:
    coco_dir: the COCO root the records are built from, or None when the archives are downloaded.
    ann_paths: {split: annotation file path}.
  Returns:
    {'coco_dir': absolute resolved path or None, 'download_urls': URLS or None,
     'annotations': {split: {'path': absolute resolved path, 'sha256': hex digest}}}.
  """
  return {
      "coco_dir": None if coco_dir is None else os.fspath(pathlib.Path(coco_dir).resolve()),
      "download_urls": dict(URLS) if coco_dir is None else None,
      "annotations": {s: {"path": os.fspath(pathlib.Path(p).resolve()), "sha256": file_sha256(p)}
                      for s, p in ann_paths.items()},
  }


def write_source(path, coco_dir, ann_paths):
  """Writes `source_record(coco_dir, ann_paths)` as JSON to `path`."""
  with open(path, "w") as f:
    json.dump(source_record(coco_dir, ann_paths), f, indent=1)


def read_source(records_dir):
  """The source record in `records_dir`, or None for records prepared before it was written.

  Raises:
    errors.DataError when the file exists but is not a source record.
  """
  path = os.path.join(os.fspath(records_dir), SOURCE_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    record = e
  if not isinstance(record, dict) or not isinstance(record.get("annotations"), dict):
    raise errors.DataError(f"{path} is unreadable ({errors.first_line(record)[:100]}): delete "
                           f"{records_dir} to rebuild the records")
  return record


def _short(digest):
  return str(digest)[:8]


def source_mismatches(recorded, coco_dir, ann_paths):
  """The differences between a source record and the current source, one short clause each.

  Args:
    recorded: a `source_record` as read from source.json.
    coco_dir: the current COCO root.
    ann_paths: {split: current annotation file path}.
  Returns:
    list of str, empty when coco_dir and every annotation file's content match. An annotation file
    that no longer exists is not a difference (the records may outlive their source; logged).
  """
  out = []
  now = pathlib.Path(coco_dir).resolve()
  if recorded.get("coco_dir") is None:
    out.append(f"built from the official download, the config says coco_dir {now} (leave "
               "coco_dir unset to read them)")
  elif recorded["coco_dir"] != os.fspath(now):
    out.append(f"built from coco_dir {recorded['coco_dir']}, the config says {now}")
  for split, given in ann_paths.items():
    then = recorded["annotations"].get(split) or {}
    path = pathlib.Path(given).resolve()
    if not path.is_file():
      logging.warning("coco_keypoints: cannot check the records' %s annotations: %s is gone",
                      split, path)
      continue
    digest = file_sha256(path)
    if digest == then.get("sha256"):
      continue
    hashes = f"sha256 {_short(then.get('sha256'))} then, {_short(digest)} now"
    if then.get("path") == os.fspath(path):
      out.append(f"annotation file {path} changed since the records were built ({hashes})")
    elif out and pathlib.Path(given).is_relative_to(now):  # coco_dir named above: keep it short
      out.append(f"{pathlib.Path(given).relative_to(now)} differs ({hashes})")
    else:
      out.append(f"built from annotation file {then.get('path')}, the config's {path} differs "
                 f"({hashes})")
  return out
