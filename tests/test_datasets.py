"""The `coco_keypoints` TFDS builder against the real samples in ../shared and pycocotools."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from mpn_jax import errors
from mpn_jax.data import coco_keypoints
from mpn_jax.data import datasets

SAMPLE = {"train": "person_keypoints_train2017_sample.json",
          "validation": "person_keypoints_val2017_sample.json"}
# SOURCES.md: images, person annotations (incl. crowd), people with keypoints.
EXPECTED = {"train": (80, 172, 86), "validation": (127, 213, 114)}

tfds.disable_progress_bar()


def _cfg(coco_dir, data_dir, **kw):
  cfg = dict(name="coco_keypoints", coco_dir=None if coco_dir is None else str(coco_dir),
             data_dir=str(data_dir),
             train_ann=SAMPLE["train"], val_ann=SAMPLE["validation"])
  cfg.update(kw)
  return cfg


def _examples(builder, split):
  return {int(ex["image_id"]): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def _no_network(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args} {kwargs}")
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", fail)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", fail)


@pytest.fixture(scope="module")
def sample_build(coco_dir, tmp_path_factory):
  """The samples built once into a tmp data_dir (no network allowed)."""
  with pytest.MonkeyPatch.context() as mp:
    _no_network(mp)
    cfg = _cfg(coco_dir, tmp_path_factory.mktemp("tfds"))
    builder = datasets.load_builder(cfg)
  return cfg, builder, {s: _examples(builder, s) for s in coco_keypoints.SPLITS}


@pytest.mark.shared
@pytest.mark.parametrize("split", coco_keypoints.SPLITS)
def test_sample_counts_and_people_match_json(sample_build, coco_dir, split):
  examples = sample_build[2][split]
  with open(coco_dir / "annotations" / SAMPLE[split]) as f:
    data = json.load(f)
  n_images, n_people, n_kp = EXPECTED[split]
  assert len(examples) == n_images == len(data["images"])
  people = [p for ex in examples.values() for p in ex["people"]["id"]]
  assert len(people) == n_people
  assert sum(int((ex["people"]["num_keypoints"] > 0).sum()) for ex in examples.values()) == n_kp
  anns = {a["id"]: a for a in data["annotations"]}
  for img in data["images"]:
    ex = examples[img["id"]]
    assert ex["file_name"].decode() == img["file_name"]
    assert ex["image"].shape == (img["height"], img["width"], 3)
    expected_ids = [a["id"] for a in data["annotations"] if a["image_id"] == img["id"]]
    assert list(ex["people"]["id"]) == expected_ids
    for k, ann_id in enumerate(expected_ids):
      a = anns[ann_id]
      np.testing.assert_allclose(ex["people"]["keypoints"][k],
                                 np.reshape(a["keypoints"], (17, 3)), rtol=0, atol=1e-3)
      np.testing.assert_allclose(ex["people"]["bbox"][k], a["bbox"], rtol=1e-6, atol=1e-3)
      assert ex["people"]["num_keypoints"][k] == a["num_keypoints"]
      assert bool(ex["people"]["iscrowd"][k]) == bool(a["iscrowd"])
      assert ex["people"]["area"][k] == pytest.approx(a["area"], rel=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("split", coco_keypoints.SPLITS)
def test_masks_match_pycocotools(sample_build, coco_dir, split):
  """Masks equal the unions of pycocotools' own COCO.annToMask."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  examples = sample_build[2][split]
  gt = COCO(str(coco_dir / "annotations" / SAMPLE[split]))
  crowd_images = 0
  for image_id, ex in examples.items():
    h, w = ex["image"].shape[:2]
    person = np.zeros((h, w), np.uint8)
    ignore = np.zeros((h, w), np.uint8)
    for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=None)):
      m = gt.annToMask(a)
      if not a["iscrowd"]:
        person |= m
      if a["iscrowd"] or a["num_keypoints"] == 0:
        ignore |= m
      if a["iscrowd"]:
        crowd_images += 1
        assert ex["ignore_mask"][..., 0][m > 0].all()
    np.testing.assert_array_equal(ex["person_mask"][..., 0], person)
    np.testing.assert_array_equal(ex["ignore_mask"][..., 0], ignore)
    if (~ex["people"]["iscrowd"]).any():
      assert ex["person_mask"].any()
  assert crowd_images > 0


@pytest.mark.shared
def test_images_are_the_source_pixels(sample_build, coco_dir):
  _, _, examples = sample_build
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for image_id, ex in list(examples["validation"].items())[:10]:
    path = coco_dir / "val2017" / ex["file_name"].decode()
    # The JPEG bytes are stored unchanged (no recompression).
    np.testing.assert_array_equal(tf.io.decode_jpeg(path.read_bytes(), channels=3).numpy(),
                                  ex["image"])
    src = np.asarray(Image.open(path).convert("RGB"))
    assert src.shape == ex["image"].shape
    # TF and PIL decode JPEG with different IDCTs: equal up to small rounding differences.
    assert np.abs(src.astype(np.int32) - ex["image"]).mean() < 3, image_id


@pytest.mark.shared
def test_annotation_file_lists_the_split(sample_build, coco_dir):
  cfg, builder, _ = sample_build
  for split in ("train", "val", "validation[:5]"):
    canonical = datasets.canonical_split(split)
    path = pathlib.Path(datasets.annotation_file(cfg, split))
    assert path.parent == builder.data_path
    with open(path) as f:
      written = json.load(f)
    with open(coco_dir / "annotations" / SAMPLE[canonical]) as f:
      original = json.load(f)
    assert written["images"] == original["images"]
    assert written["annotations"] == original["annotations"]


@pytest.mark.shared
def test_registered_with_tfds(sample_build):
  """Once the module is imported, plain TFDS finds the builder and its prepared records."""
  cfg, _, _ = sample_build
  builder = tfds.builder("coco_keypoints/2017_sample", data_dir=cfg["data_dir"])
  assert builder.info.splits["train"].num_examples == 80
  assert builder.info.splits["validation"].num_examples == 127


def test_segmentation_mask_formats():
  """Polygons, compressed and uncompressed RLE, and the empty-segmentation box fallback."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  expected = np.zeros((6, 8), np.uint8)
  expected[1:4, 2:7] = 1
  rle = mask_utils.encode(np.asfortranarray(expected))
  compressed = {"size": [6, 8], "counts": rle["counts"].decode("ascii")}
  # Column-major run lengths of `expected`: 2 empty columns (12 px), then 5 columns of 1+3+2.
  uncompressed = {"size": [6, 8], "counts": [13] + [3, 3] * 4 + [3, 8]}
  bbox = [2, 1, 5, 3]
  for segm in (compressed, uncompressed, []):
    ann = {"id": 1, "segmentation": segm, "bbox": bbox}
    np.testing.assert_array_equal(coco_keypoints.segmentation_mask(ann, 6, 8), expected)
  ann = {"id": 1, "segmentation": [[2, 1, 7, 1, 7, 4, 2, 4]], "bbox": bbox}
  poly = coco_keypoints.segmentation_mask(ann, 6, 8)
  assert poly[2, 3:6].all() and poly[:, 0].sum() == 0 and poly[5].sum() == 0


def test_people_masks_split_crowd_and_unlabelled():
  def box(x, y, w, h, crowd=0, nkp=1):
    return {"id": 0, "bbox": [x, y, w, h], "segmentation": [], "iscrowd": crowd,
            "num_keypoints": nkp}
  person, ignore = coco_keypoints.people_masks(
      [box(0, 0, 2, 2), box(4, 0, 2, 2, crowd=1, nkp=0), box(0, 4, 2, 2, nkp=0)], 6, 6)
  assert person.sum() == 8 and person[0:2, 0:2].all() and person[4:6, 0:2].all()
  assert ignore.sum() == 8 and ignore[0:2, 4:6].all() and ignore[4:6, 0:2].all()


def test_data_dir_inside_coco_dir_is_refused(tmp_path):
  with pytest.raises(ValueError, match="data_dir"):
    datasets.make_builder(_cfg(tmp_path, tmp_path / "tfds"))


def test_missing_coco_dir(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    datasets.load_builder(_cfg(missing, tmp_path / "tfds"))


def test_sample_config_without_coco_dir_needs_one(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  with pytest.raises(FileNotFoundError, match="coco_dir"):
    datasets.load_builder(_cfg(None, tmp_path / "tfds"))


def _mini_coco(coco_dir, root, n=3, split_dirs=("train2017", "val2017"), ann_names=None):
  """Copies n images of the val sample (with their annotations) into a COCO layout under root."""
  with open(coco_dir / "annotations" / SAMPLE["validation"]) as f:
    data = json.load(f)
  images = data["images"][:n]
  ids = {i["id"] for i in images}
  mini = dict(data, images=images, annotations=[a for a in data["annotations"]
                                                if a["image_id"] in ids])
  (root / "annotations").mkdir(parents=True)
  for d in split_dirs:
    (root / d).mkdir()
    for img in images:
      shutil.copy(coco_dir / "val2017" / img["file_name"], root / d / img["file_name"])
  for name in ann_names or SAMPLE.values():
    with open(root / "annotations" / name, "w") as f:
      json.dump(mini, f)
  return mini


@pytest.mark.shared
def test_tfds_manual_dir_is_read_offline(coco_dir, tmp_path, monkeypatch):
  """The TFDS way: DownloadConfig(manual_dir=...) instead of the coco_dir builder argument."""
  _no_network(monkeypatch)
  _mini_coco(coco_dir, tmp_path / "coco", n=2)
  builder = coco_keypoints.CocoKeypoints(data_dir=str(tmp_path / "tfds"), config="2017_sample")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "coco")))
  assert builder.info.splits["validation"].num_examples == 2
  missing = coco_keypoints.CocoKeypoints(data_dir=str(tmp_path / "tfds2"), config="2017")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    missing.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "nowhere")))


@pytest.mark.shared
def test_missing_annotation_file(coco_dir, tmp_path, monkeypatch):
  _no_network(monkeypatch)
  _mini_coco(coco_dir, tmp_path / "coco", n=1)
  with pytest.raises(FileNotFoundError, match="person_keypoints_nope.json"):
    datasets.load_builder(_cfg(tmp_path / "coco", tmp_path / "tfds",
                               val_ann="person_keypoints_nope.json"))


def _break(field, value):
  def edit(data):
    target = data["images"][0] if field.startswith("image.") else data["annotations"][0]
    key = field.split(".", 1)[1]
    if value is None:
      del target[key]
    else:
      target[key] = value(target[key]) if callable(value) else value
  return edit


@pytest.mark.parametrize("field,value,message", [
    ("ann.keypoints", None, "missing field 'keypoints'"),
    ("ann.keypoints", lambda k: k[:-1], "'keypoints' must be a list of 51"),
    ("ann.keypoints", lambda k: k[:-1] + [3], "visibility"),
    ("ann.num_keypoints", lambda n: n + 1, "'num_keypoints'"),
    ("ann.bbox", lambda b: b[:3], "'bbox'"),
    ("ann.segmentation", 5, "'segmentation'"),
    ("ann.image_id", 123456789, "'image_id'"),
    ("ann.iscrowd", None, "missing field 'iscrowd'"),
    ("image.file_name", None, "missing field 'file_name'"),
    ("image.width", "640", "'width'"),
])
def test_malformed_annotation_names_file_and_field(tmp_path, field, value, message):
  data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
          "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20],
                           "keypoints": [5, 6, 2] + [0] * 48, "num_keypoints": 1, "iscrowd": 0,
                           "area": 150.0, "segmentation": [[1, 2, 11, 2, 11, 22, 1, 22]]}],
          "categories": []}
  path = tmp_path / "person_keypoints_bad.json"
  _break(field, value)(data)
  path.write_text(json.dumps(data))
  with pytest.raises(coco_keypoints.AnnotationError, match=message) as e:
    coco_keypoints.load_annotations(path)
  assert str(path) in str(e.value)


@pytest.mark.shared
def test_malformed_annotation_stops_the_build(coco_dir, tmp_path, monkeypatch):
  _no_network(monkeypatch)
  mini = _mini_coco(coco_dir, tmp_path / "coco", n=2)
  mini["annotations"][0]["keypoints"] = mini["annotations"][0]["keypoints"][:34]
  bad = tmp_path / "coco" / "annotations" / SAMPLE["train"]
  bad.write_text(json.dumps(mini))
  with pytest.raises(coco_keypoints.AnnotationError, match="'keypoints'") as e:
    datasets.load_builder(_cfg(tmp_path / "coco", tmp_path / "tfds"))
  assert str(bad) in str(e.value)


@pytest.mark.shared
def test_corrupt_image_is_skipped_with_warnings(coco_dir, tmp_path, monkeypatch):
  _no_network(monkeypatch)
  mini = _mini_coco(coco_dir, tmp_path / "coco", n=3)
  broken = mini["images"][1]
  path = tmp_path / "coco" / "val2017" / broken["file_name"]
  path.write_bytes(path.read_bytes()[:2000])  # truncated JPEG
  cfg = _cfg(tmp_path / "coco", tmp_path / "tfds")
  with pytest.warns(coco_keypoints.UnreadableImageWarning) as record:
    builder = datasets.load_builder(cfg)
  messages = [str(w.message) for w in record]
  assert any(broken["file_name"] in m and "skipping" in m for m in messages)
  assert any("skipped 1 of 3 images of split 'validation'" in m for m in messages)
  examples = _examples(builder, "validation")
  assert sorted(examples) == sorted(i["id"] for i in mini["images"] if i is not broken)
  assert len(_examples(builder, "train")) == 3  # the train copy is intact
  with open(datasets.annotation_file(cfg, "validation")) as f:
    written = json.load(f)
  assert broken["id"] not in {i["id"] for i in written["images"]}
  assert broken["id"] not in {a["image_id"] for a in written["annotations"]}
  assert len(written["images"]) == 2


@pytest.mark.shared
def test_official_config_downloads_the_archives(coco_dir, tmp_path, monkeypatch):
  """Without a local copy the '2017' config fetches the official archives and reads their layout."""
  root = tmp_path / "extracted"
  _mini_coco(coco_dir, root, n=2, ann_names=coco_keypoints.OFFICIAL_ANNS.values())
  requested = []

  def fake_download_and_extract(self, urls):
    requested.append(urls)
    return {k: root for k in urls}
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      fake_download_and_extract)
  cfg = dict(name="coco_keypoints", data_dir=str(tmp_path / "tfds"))
  builder = datasets.load_builder(cfg)
  assert builder.builder_config.name == "2017"
  assert requested == [coco_keypoints.URLS]
  assert len(_examples(builder, "train")) == 2 and len(_examples(builder, "validation")) == 2


# --------------------------------------------------------------------------------------------------
# Prepared records remember their source (source.json).


def _sha256(path):
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.mark.shared
def test_records_remember_their_source(sample_build, coco_dir):
  cfg, builder, _ = sample_build
  with open(pathlib.Path(builder.data_path) / coco_keypoints.SOURCE_FILE) as f:
    source = json.load(f)
  assert source["coco_dir"] == str(coco_dir.resolve()) and source["download_urls"] is None
  for split in coco_keypoints.SPLITS:
    path = coco_dir.resolve() / "annotations" / SAMPLE[split]
    assert source["annotations"][split] == {"path": str(path), "sha256": _sha256(path)}
  datasets.load_builder(cfg)  # the unchanged source passes


@pytest.mark.shared
def test_records_of_another_coco_dir_are_refused(sample_build, coco_dir, tmp_path):
  """Same data_dir, a copy of the COCO folder with an edited train annotation file."""
  cfg, builder, _ = sample_build
  copy = tmp_path / "coco_copy"
  (copy / "annotations").mkdir(parents=True)
  for d in coco_keypoints.SPLIT_DIRS.values():
    (copy / d).symlink_to(coco_dir / d, target_is_directory=True)
  shutil.copy(coco_dir / "annotations" / SAMPLE["validation"], copy / "annotations")
  data = json.loads((coco_dir / "annotations" / SAMPLE["train"]).read_text())
  data["annotations"][0]["keypoints"][0] += 1
  edited = copy / "annotations" / SAMPLE["train"]
  edited.write_text(json.dumps(data))
  with pytest.raises(errors.DataError) as e:
    datasets.load_builder(dict(cfg, coco_dir=str(copy)))
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"data_dir {cfg['data_dir']}: the records coco_keypoints/2017_sample/")
  assert f"built from coco_dir {coco_dir.resolve()}, the config says {copy.resolve()}" in msg
  assert f"annotations/{SAMPLE['train']} differs (sha256 " in msg and _sha256(edited)[:8] in msg
  assert SAMPLE["validation"] not in msg  # its content is the same
  assert f"Delete {builder.data_path} to rebuild" in msg and "--config.dataset.data_dir" in msg


@pytest.mark.shared
def test_changed_annotation_file_is_refused_old_records_warn(coco_dir, tmp_path, monkeypatch):
  _no_network(monkeypatch)
  _mini_coco(coco_dir, tmp_path / "coco", n=1)
  cfg = _cfg(tmp_path / "coco", tmp_path / "tfds")
  builder = datasets.load_builder(cfg)
  ann = (tmp_path / "coco" / "annotations" / SAMPLE["validation"]).resolve()
  before = _sha256(ann)
  data = json.loads(ann.read_text())
  data["annotations"][0]["area"] += 1.0
  ann.write_text(json.dumps(data))
  with pytest.raises(errors.DataError, match="annotation file") as e:
    datasets.load_builder(cfg)
  msg = str(e.value)
  assert f"annotation file {ann} changed since the records were built" in msg
  assert f"sha256 {before[:8]} then, {_sha256(ann)[:8]} now" in msg
  assert SAMPLE["train"] not in msg
  # The command line names its own flag.
  with pytest.raises(errors.DataError, match="set --data_dir to another folder"):
    datasets.load_builder(cfg, data_dir_flag="--data_dir")
  # Records prepared before source.json existed: a warning (once), and they are used.
  (pathlib.Path(builder.data_path) / coco_keypoints.SOURCE_FILE).unlink()
  warned = []
  monkeypatch.setattr(coco_keypoints.logging, "warning",
                      lambda msg, *a, **k: warned.append(str(msg) % a))
  for _ in range(2):
    assert datasets.load_builder(cfg).info.splits["validation"].num_examples == 1
  warned = [w for w in warned if coco_keypoints.SOURCE_FILE in w]  # TFDS logs through absl too
  assert len(warned) == 1, warned
  assert "cannot be checked" in warned[0] and str(builder.data_path) in warned[0]


def test_file_sha256_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
  path = tmp_path / "a.json"
  path.write_text("[1]")
  assert coco_keypoints.file_sha256(path) == _sha256(path)
  opened = []
  real_open = open
  monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
  assert coco_keypoints.file_sha256(path) == _sha256(path) and not opened  # from the cache
  path.write_text("[1, 2]")
  assert coco_keypoints.file_sha256(path) == _sha256(path)


# --------------------------------------------------------------------------------------------------
# The command line: user errors are one line and exit status 2.


def _run_cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "mpn_jax.data.datasets", *args], env=env,
                        cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
                        text=True, timeout=300)


def _assert_one_line_error(proc, *names):
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if "error:" in line]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("mpn_jax.data.datasets: error: "), lines[0]
  for name in names:
    assert name in lines[0], lines[0]
  return lines[0]


def _sample_flags(tmp_path):
  return [f"--train_ann={SAMPLE['train']}", f"--val_ann={SAMPLE['validation']}",
          "--name=coco_keypoints", f"--data_dir={tmp_path / 'tfds'}"]


def test_cli_without_coco_dir_asks_for_it_or_download(tmp_path):
  line = _assert_one_line_error(_run_cli(*_sample_flags(tmp_path)), "--coco_dir is required",
                                "--download")
  assert "~19 GB" in line
  assert not (tmp_path / "tfds").exists()


def test_cli_missing_coco_dir(tmp_path):
  missing = tmp_path / "nowhere"
  _assert_one_line_error(_run_cli(*_sample_flags(tmp_path), f"--coco_dir={missing}"),
                         str(missing), "does not exist")


@pytest.mark.shared
def test_cli_truncated_annotation_file(coco_dir, tmp_path):
  _mini_coco(coco_dir, tmp_path / "coco", n=1)
  bad = tmp_path / "coco" / "annotations" / SAMPLE["train"]
  bad.write_text(bad.read_text()[:300])
  _assert_one_line_error(_run_cli(*_sample_flags(tmp_path), f"--coco_dir={tmp_path / 'coco'}"),
                         str(bad), "not valid JSON")


@pytest.mark.shared
def test_cli_download_flag_fetches_the_official_archives(coco_dir, tmp_path, monkeypatch, capsys):
  root = tmp_path / "extracted"
  _mini_coco(coco_dir, root, n=1, ann_names=coco_keypoints.OFFICIAL_ANNS.values())
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, urls: {k: root for k in urls})
  datasets.main(["--name=coco_keypoints", f"--data_dir={tmp_path / 'tfds'}", "--download"])
  out = capsys.readouterr().out
  assert "train: 1 examples" in out and "validation: 1 examples" in out
  with pytest.raises(SystemExit) as e:
    datasets.main(["--name=coco_keypoints", f"--data_dir={tmp_path / 'tfds'}", "--download",
                   f"--coco_dir={coco_dir}"])
  assert e.value.code == 2 and "pass one of them" in capsys.readouterr().err
