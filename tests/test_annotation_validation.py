"""Malformed annotation files stop both stages' loaders with one message naming file, id and field.

Stage one reads annotations through `coco_keypoints.load_annotations` (the TFDS build), the PRN
through `prn_samples.load_image_people` (also the PRN-on-ground-truth protocol); both share the
checks of `mpn_jax.data.annotations`.
"""

import json
import math
import pathlib
import sys

import numpy as np
import pytest

from mpn_jax import errors
from mpn_jax.data import annotations
from mpn_jax.data import prn_samples

ANN_ID, IMAGE_ID = 7, 1


def _valid():
  """A minimal valid file: one image, one person with one labelled keypoint."""
  return {"images": [{"id": IMAGE_ID, "file_name": "a.jpg", "width": 64, "height": 48}],
          "annotations": [{"id": ANN_ID, "image_id": IMAGE_ID, "category_id": 1,
                           "bbox": [1, 2, 10, 20], "keypoints": [5, 6, 2] + [0] * 48,
                           "num_keypoints": 1, "iscrowd": 0, "area": 150.0,
                           "segmentation": [[1, 2, 11, 2, 11, 22, 1, 22]]}],
          "categories": []}


def _set(field, index, value):
  def edit(data):
    data["annotations"][0][field][index] = value
  return edit


def _replace(field, value):
  def edit(data):
    data["annotations"][0][field] = value(data["annotations"][0][field]) if callable(value) else (
        value)
  return edit


# (case, edit of the valid file, field the message must name). json.dumps writes float('nan') and
# float('inf') as NaN and Infinity, which json.load reads back: what a buggy exporter produces.
BAD_ANNOTATIONS = [
    ("nan_keypoint", _set("keypoints", 0, math.nan), "keypoints"),
    ("nan_keypoint_visibility", _set("keypoints", 2, math.nan), "keypoints"),
    ("infinity_bbox", _set("bbox", 2, math.inf), "bbox"),
    ("minus_infinity_bbox", _set("bbox", 0, -math.inf), "bbox"),
    ("48_keypoint_values", _replace("keypoints", lambda k: k[:48]), "keypoints"),
    ("negative_box_width", _set("bbox", 2, -3), "bbox"),
    ("visibility_3", _set("keypoints", 2, 3), "keypoints"),
    ("bbox_not_a_list", _replace("bbox", "1 2 10 20"), "bbox"),
    ("iscrowd_2", _replace("iscrowd", 2), "iscrowd"),
    ("nan_image_id", _replace("image_id", math.nan), "image_id"),
]
# (case, file text, what the message must say besides the file).
BAD_FILES = [
    ("truncated_json", json.dumps(_valid())[:150], "not valid JSON"),
    ("no_annotations_key", json.dumps({"images": _valid()["images"]}), "'annotations'"),
    ("annotations_not_a_list", json.dumps(dict(_valid(), annotations={"id": 1})), "'annotations'"),
    ("top_level_list", json.dumps([_valid()]), "JSON object"),
    ("empty_file", "", "not valid JSON"),
]


def _load_stage_one(path):
  from mpn_jax.data import coco_keypoints  # pylint: disable=g-import-not-at-top
  return coco_keypoints.load_annotations(path)


LOADERS = {"stage_one": _load_stage_one, "prn": prn_samples.load_image_people}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("case,edit,field", BAD_ANNOTATIONS, ids=[c[0] for c in BAD_ANNOTATIONS])
def test_bad_annotation_names_file_id_image_and_field(tmp_path, loader, case, edit, field):
  data = _valid()
  edit(data)
  path = tmp_path / f"{case}.json"
  path.write_text(json.dumps(data))
  with pytest.raises(annotations.AnnotationError) as e:
    LOADERS[loader](str(path))
  msg = str(e.value)
  assert isinstance(e.value, errors.DataError) and isinstance(e.value, ValueError)
  assert "\n" not in msg
  image_id = "nan" if case == "nan_image_id" else IMAGE_ID
  assert msg.startswith(f"{path}: annotation #0 (id {ANN_ID}, image_id {image_id}): ")
  assert f"field '{field}'" in msg


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("case,text,says", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_names_file(tmp_path, loader, case, text, says):
  path = tmp_path / f"{case}.json"
  path.write_text(text)
  with pytest.raises(errors.DataError) as e:
    LOADERS[loader](str(path))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(str(path)) and says in msg


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_missing_file(tmp_path, loader):
  with pytest.raises(errors.MissingFileError, match="nope.json"):
    LOADERS[loader](str(tmp_path / "nope.json"))


@pytest.mark.parametrize("field,value", [("width", math.nan), ("height", math.inf),
                                         ("width", 0), ("height", 64.0)])
def test_stage_one_bad_image_size_names_image_and_field(tmp_path, field, value):
  data = _valid()
  data["images"][0][field] = value
  path = tmp_path / "bad_image.json"
  path.write_text(json.dumps(data))
  with pytest.raises(annotations.AnnotationError) as e:
    _load_stage_one(path)
  msg = str(e.value)
  assert msg.startswith(f"{path}: image #0 (id {IMAGE_ID})") and f"'{field}'" in msg


def test_prn_loader_keeps_people_without_keypoints(tmp_path):
  """Keypoints absent, null or [] mean 'none labelled' (crowd regions often have none)."""
  data = _valid()
  extra = [dict(data["annotations"][0], id=ANN_ID + 1 + i) for i in range(3)]
  del extra[0]["keypoints"]
  extra[1]["keypoints"] = None
  extra[2]["keypoints"] = []
  data["annotations"] += extra
  path = tmp_path / "people.json"
  path.write_text(json.dumps(data))
  (im,) = prn_samples.load_image_people(str(path))
  assert im.keypoints.shape == (4, 17, 3)
  assert im.keypoints[0, 0].tolist() == [5, 6, 2] and not im.keypoints[1:].any()
  assert im.ann_ids.tolist() == [7, 8, 9, 10]


def test_other_categories_are_not_checked_by_the_prn_loader(tmp_path):
  data = _valid()
  data["annotations"].append({"id": 99, "image_id": IMAGE_ID, "category_id": 3,
                              "bbox": [0, 0, -1, math.nan]})
  path = tmp_path / "cars.json"
  path.write_text(json.dumps(data))
  assert len(prn_samples.load_image_people(str(path))) == 1


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_every_real_annotation_file_loads(coco_dir, loader):
  files = sorted((coco_dir / "annotations").glob("*.json"))
  assert len(files) >= 4
  for path in files:
    loaded = LOADERS[loader](str(path))
    images = loaded[1] if loader == "stage_one" else loaded  # stage one: (data, records)
    assert len(images) > 0, path


def test_prn_loader_needs_no_tensorflow_datasets():
  """prn_samples (and the checks it shares with stage one) stay free of TFDS / TensorFlow."""
  import subprocess  # pylint: disable=g-import-not-at-top
  code = ("import sys; from mpn_jax.data import prn_samples, annotations; "
          "bad = [m for m in ('tensorflow_datasets', 'tensorflow') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                 cwd=pathlib.Path(__file__).resolve().parents[1])


def test_prn_gt_protocol_validates_its_ground_truth(tmp_path):
  """`evaluate.py --config.eval.mode=prn_gt` reads the file through load_image_people."""
  from mpn_jax.evaluation import prn_protocol  # pylint: disable=g-import-not-at-top
  data = _valid()
  data["annotations"][0]["keypoints"][3] = math.inf
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(data))
  with pytest.raises(annotations.AnnotationError, match=r"\(id 7, image_id 1\): field 'keypoints'"):
    prn_protocol.evaluate_prn_gt(str(path), assign="center")


def test_is_number():
  assert annotations.is_number(1) and annotations.is_number(-2.5)
  for bad in (math.nan, math.inf, -math.inf, True, "1", None, np.nan):
    assert not annotations.is_number(bad), bad
