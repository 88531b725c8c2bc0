"""COCO annotation files: reading them and checking their values (no TensorFlow, no TFDS).

Both stages read COCO person-keypoint files: stage one through the `coco_keypoints` TFDS builder
(which imports TFDS), the PRN through `prn_samples` (which must not). The checks they share live
here, so that a malformed value is reported the same way by both: one line naming the file, the
annotation (index, id, image id) and the field.

`json.load` accepts NaN and Infinity (not JSON, but Python writes them): every number is checked to
be finite.
"""

import json
import math
import os

import numpy as np

from mpn_jax import coco
from mpn_jax import errors

NUM_KEYPOINT_VALUES = 3 * coco.NUM_KEYPOINTS  # 51: (x, y, v) per keypoint
VISIBILITY_FLAGS = (0, 1, 2)  # not labelled, labelled but hidden, labelled and visible


class AnnotationError(errors.DataError, ValueError):
  """A COCO annotation file is not valid JSON, lacks a field or holds a malformed value."""


def is_number(x):
  """True for a finite int or float (bools, NaN and infinities are not numbers here)."""
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x):
  """True for an int that is not a bool."""
  return isinstance(x, int) and not isinstance(x, bool)


def where(index, ann):
  """'annotation #3 (id 7, image_id 12)': how messages name annotation number `index` of a file."""
  if not isinstance(ann, dict):
    return f"annotation #{index}"
  return f"annotation #{index} (id {ann.get('id', '?')}, image_id {ann.get('image_id', '?')})"


def _describe_bad(value, length):
  """What is wrong with `value` as a list of `length` finite numbers, for the message."""
  if not isinstance(value, (list, tuple)):
    return f"got {type(value).__name__} {repr(value)[:60]}"
  if len(value) != length:
    return f"got {len(value)} values"
  for i, v in enumerate(value):
    if not is_number(v):
      return f"got {v!r} at position {i}"
  return "got something else"


def check_numbers(path, at, field, value, length):
  """Raises AnnotationError unless `value` is a list of `length` finite numbers.

  Args:
    path: the file (named in the message).
    at: which record, e.g. `where(index, ann)`.
    field: the field's name.
    value: the field's value as loaded from JSON.
    length: the number of values required.
  """
  if (not isinstance(value, (list, tuple)) or len(value) != length
      or not all(is_number(v) for v in value)):
    raise AnnotationError(f"{path}: {at}: field '{field}' must be a list of {length} finite "
                          f"numbers, {_describe_bad(value, length)}")


def check_bbox(path, at, bbox):
  """Raises AnnotationError unless `bbox` is COCO [x, y, w, h]: 4 finite numbers, w, h >= 0."""
  check_numbers(path, at, "bbox", bbox, 4)
  if bbox[2] < 0 or bbox[3] < 0:
    raise AnnotationError(f"{path}: {at}: field 'bbox' has a negative width/height {list(bbox)} "
                          "(COCO boxes are [x, y, w, h])")


def check_keypoints(path, at, keypoints):
  """Raises AnnotationError unless `keypoints` is 51 finite numbers (x, y, v) with v in 0/1/2."""
  check_numbers(path, at, "keypoints", keypoints, NUM_KEYPOINT_VALUES)
  vis = list(keypoints[2::3])
  if any(v not in VISIBILITY_FLAGS for v in vis):
    raise AnnotationError(f"{path}: {at}: field 'keypoints' has visibility flags {vis}; each "
                          "must be 0, 1 or 2")


def check_int(path, at, record, field):
  """Raises AnnotationError unless record[field] is an integer."""
  if not is_int(record[field]):
    raise AnnotationError(f"{path}: {at}: field '{field}' must be an integer, got "
                          f"{record[field]!r}")


def check_person(path, ann, index):
  """Checks what the PRN reads of one person annotation; raises AnnotationError naming the field.

  Required: 'id' and 'image_id' integers, 'bbox' [x, y, w, h] (finite, w, h >= 0). Optional:
  'keypoints' (absent, null or [] = no labelled keypoint, else 51 finite numbers with visibility
  0/1/2), 'iscrowd' (0 or 1), 'num_keypoints' (a non-negative integer).
  """
  at = where(index, ann)
  if not isinstance(ann, dict):
    raise AnnotationError(f"{path}: {at} is not a JSON object")
  for field in ("id", "image_id", "bbox"):
    if field not in ann:
      raise AnnotationError(f"{path}: {at}: missing field '{field}'")
  check_int(path, at, ann, "id")
  check_int(path, at, ann, "image_id")
  check_bbox(path, at, ann["bbox"])
  if ann.get("keypoints"):
    check_keypoints(path, at, ann["keypoints"])
  if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):  # as stage one: JSON true/false pass
    raise AnnotationError(f"{path}: {at}: field 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
  if "num_keypoints" in ann and (not is_int(ann["num_keypoints"]) or ann["num_keypoints"] < 0):
    raise AnnotationError(f"{path}: {at}: field 'num_keypoints' must be a non-negative integer, "
                          f"got {ann['num_keypoints']!r}")


def read_json(path, fields=("annotations",)):
  """Loads a COCO annotation file: a JSON object whose `fields` are lists.

  Args:
    path: the file.
    fields: top-level fields that must be present and hold lists.
  Returns:
    the loaded dict.
  Raises:
    errors.MissingFileError if the file does not exist; AnnotationError naming the file when it is
    not valid JSON (e.g. truncated), not an object, or lacks one of `fields`.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"COCO annotation file {path} does not exist")
  try:
    with open(path, "rb") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise AnnotationError(f"{path}: not valid JSON (truncated or not an annotation file?): "
                          f"{e.msg} at line {e.lineno} column {e.colno}") from e
  except UnicodeDecodeError as e:
    raise AnnotationError(f"{path}: not valid JSON (not UTF-8 text: {e.reason})") from e
  except RecursionError as e:  # pathologically nested input
    raise AnnotationError(f"{path}: not valid JSON (nested too deeply)") from e
  if not isinstance(data, dict):
    raise AnnotationError(f"{path}: expected a JSON object with {' and '.join(map(repr, fields))} "
                          f"at the top level, got a {type(data).__name__}")
  _require_lists(path, data, fields)
  return data


def _require_lists(path, data, fields):
  for field in fields:
    if not isinstance(data.get(field), list):
      got = "it is missing" if field not in data else f"got {type(data[field]).__name__}"
      raise AnnotationError(f"{path}: not a COCO annotation file: the top-level field '{field}' "
                            f"must be a list, {got}")


def check_ground_truth(path, data):
  """Checks what COCO evaluation (pycocotools) reads of a loaded annotation file: 'images' and
  'annotations' lists, every image an object with an integer 'id', every annotation's 'image_id'
  one of them. Raises AnnotationError naming the file and the first fault."""
  _require_lists(path, data, ("images", "annotations"))
  _check_image_ids(path, data)


def _check_image_ids(path, data):
  ids = set()
  for i, image in enumerate(data["images"]):
    if not isinstance(image, dict) or not is_int(image.get("id")):
      raise AnnotationError(f"{path}: images[{i}] must be an object with an integer 'id'")
    ids.add(image["id"])
  for i, ann in enumerate(data["annotations"]):
    image_id = ann.get("image_id") if isinstance(ann, dict) else None
    if not is_int(image_id) or image_id not in ids:
      raise AnnotationError(f"{path}: {where(i, ann)}: 'image_id' {image_id!r} is not the id of "
                            "any entry of 'images'; fix or drop that annotation")


def read_ground_truth(path):
  """`read_json` + `check_ground_truth`: an annotation file COCO evaluation can score against."""
  data = read_json(path, fields=("images", "annotations"))
  _check_image_ids(path, data)
  return data


def people_arrays(anns):
  """One image's person annotations (COCO dicts) as arrays.

  Returns:
    dict with 'boxes' [M, 4] float32 (x1, y1, x2, y2), 'keypoints' [M, 17, 3] float32 (x, y, v; all
    zero where an annotation has none), 'iscrowd' [M] bool, 'num_keypoints' [M] int32 (the
    annotation's own, else its count of labelled keypoints), 'ann_ids' [M] int64 (-1 where absent);
    original pixels, COCO's own values.
  """
  k = coco.NUM_KEYPOINTS
  kps = np.array([a.get("keypoints") or [0] * (3 * k) for a in anns], np.float32).reshape(-1, k, 3)
  xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
  return {
      "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
      "keypoints": kps,
      "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
      "num_keypoints": np.array([int(a.get("num_keypoints", (kps[i, :, 2] > 0).sum()))
                                 for i, a in enumerate(anns)], np.int32),
      "ann_ids": np.array([int(a.get("id", -1)) for a in anns], np.int64),
  }
