"""PRN samples: targets on the person's own keypoints, inputs with everyone's, augmentation, batching."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import prn_grid
from mpn_jax.data import prn_samples

K = coco.NUM_KEYPOINTS


def _kps(points):
  """{keypoint index: (x, y)} -> COCO flat [51] list."""
  k = np.zeros((K, 3))
  for i, (x, y) in points.items():
    k[i] = (x, y, 2)
  return k.reshape(-1).tolist()


def _ann(i, image_id, bbox, points, iscrowd=0):
  return {"id": i, "image_id": image_id, "category_id": 1, "bbox": bbox, "iscrowd": iscrowd,
          "area": bbox[2] * bbox[3], "keypoints": _kps(points), "num_keypoints": len(points)}


@pytest.fixture
def scene_file(tmp_path):
  """One image: person A (box 100..150 x 100..200), B whose nose sits just right of A's box but
  inside its 21% widening, C far away, and a crowd region with (unusual) keypoints."""
  anns = [
      _ann(1, 7, [100, 100, 50, 100], {0: (126, 111), 5: (110, 130), 6: (140, 130), 15: (115, 195)}),
      _ann(2, 7, [152, 100, 40, 100], {0: (155, 112), 5: (160, 130), 6: (185, 130)}),
      _ann(3, 7, [400, 50, 30, 60], {0: (410, 60), 5: (405, 80)}),
      _ann(4, 7, [90, 90, 200, 200], {0: (200, 200)}, iscrowd=1),
  ]
  data = {"images": [{"id": 7, "width": 640, "height": 480, "file_name": "x.jpg"}],
          "annotations": anns, "categories": [coco.PERSON_CATEGORY]}
  path = tmp_path / "scene.json"
  path.write_text(json.dumps(data))
  return str(path)


def _cell(xy, box, widen=prn_grid.DEFAULT_WIDEN):
  g = prn_grid.points_to_grid(np.asarray(xy, np.float32), prn_grid.widen_boxes(box, widen))
  return int(np.floor(g[1])), int(np.floor(g[0]))


def test_people_index_excludes_crowd_and_counts_keypoints(scene_file):
  images = prn_samples.load_image_people(scene_file)
  assert [im.image_id for im in images] == [7]
  np.testing.assert_array_equal(images[0].boxes[0], [100, 100, 150, 200])
  assert prn_samples.person_index(images, 1).tolist() == [[0, 0], [0, 1], [0, 2]]
  assert prn_samples.person_index(images, 3).tolist() == [[0, 0], [0, 1]]
  assert prn_samples.person_index(images, 4).tolist() == [[0, 0]]


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_min_keypoints_below_one_is_refused_naming_the_field(scene_file, bad):
  # 0 would silently act as 1: a keypoint-less person has no target to learn.
  with pytest.raises(errors.ConfigError, match=r"config\.data\.min_keypoints=.*integer >= 1"):
    prn_samples.PrnSampleSource(scene_file, min_keypoints=bad)


def test_inputs_hold_everyones_keypoints_inside_the_widened_box(scene_file):
  src = prn_samples.PrnSampleSource(scene_file, input_sigma=1.0, target_sigma=0.0)
  s = src.sample(0)  # person A
  # B's nose (x=155 > A's x2=150, < widened x2 = 160.5) is drawn in the nose channel, like A's own.
  for xy in [(126, 111), (155, 112)]:
    r, c = _cell(xy, np.array([100, 100, 150, 200], np.float32))
    assert s["inputs"][r, c, 0] > 0.75
  # Each channel is exactly the Gaussians of the keypoints inside the widened box: B's nose joins
  # A's; B's right shoulder (x=185 > 160.5) and C's keypoints stay out.
  wbox = prn_grid.widen_boxes(np.array([100, 100, 150, 200], np.float32))
  def drawn(points):
    g = prn_grid.points_to_grid(np.array(points, np.float32)[:, None], wbox)
    return prn_grid.rasterize(g, np.ones((len(points), 1), bool), sigma=1.0)[..., 0]
  np.testing.assert_allclose(s["inputs"][..., 0], drawn([(126, 111), (155, 112)]), atol=1e-6)
  np.testing.assert_allclose(s["inputs"][..., 6], drawn([(140, 130)]), atol=1e-6)
  np.testing.assert_allclose(s["inputs"][..., 5], drawn([(110, 130), (160, 130)]), atol=1e-6)
  # C's keypoints are far away; channels without any keypoint nearby are empty.
  assert s["inputs"][..., 1].max() == 0
  # Only A's nose is the target, not B's.
  r, c = _cell((126, 111), np.array([100, 100, 150, 200], np.float32))
  assert s["targets"][r, c, 0] == 1.0 and s["targets"][..., 0].sum() == 1.0


def test_target_channels_are_distributions_with_valid_flags(scene_file):
  src = prn_samples.PrnSampleSource(scene_file, target_sigma=1.5)
  s = src.sample(0)
  np.testing.assert_array_equal(np.nonzero(s["target_valid"])[0], [0, 5, 6, 15])
  sums = s["targets"].sum(axis=(0, 1))
  np.testing.assert_allclose(sums[[0, 5, 6, 15]], 1.0, rtol=1e-5)
  assert np.all(sums[[1, 2, 3, 4, 7, 16]] == 0)


def test_targets_peak_on_own_keypoints_real_annotations(coco_dir):
  ann = str(coco_dir / "annotations" / "person_keypoints_val2017_prn_val.json")
  src = prn_samples.PrnSampleSource(ann, min_keypoints=1, target_sigma=2.0)
  assert len(src) == 216  # the people with keypoints in prn_val (README of ../shared)
  checked = 0
  for s in range(0, len(src), 7):
    sample = src.sample(s)
    i, p = src.index[s]
    im = src.images[i]
    assert not im.iscrowd[p]
    wbox = prn_grid.widen_boxes(im.boxes[p])
    for k in np.nonzero(sample["target_valid"])[0]:
      g = prn_grid.points_to_grid(im.keypoints[p, k, :2], wbox)
      flat = np.argmax(sample["targets"][..., k])
      assert np.unravel_index(flat, (56, 36)) == (int(g[1]), int(g[0]))
      # The PRN input has a peak of its own at the same cell.
      assert sample["inputs"][int(g[1]), int(g[0]), k] > 0.6
      checked += 1
  assert checked > 200


def _aug(**kw):
  aug = prn_samples.prn_data_config().augment
  for k in ("flip_prob", "compose_prob", "box_shift", "box_scale", "drop_own_prob",
            "drop_other_prob", "keypoint_jitter"):
    aug[k] = 0.0
  aug.update(kw)
  return aug


def test_flip_mirrors_the_grid_and_swaps_channels(scene_file):
  plain = prn_samples.PrnSampleSource(scene_file, augment=None, target_sigma=1.0)
  flip = prn_samples.PrnSampleSource(scene_file, augment=_aug(flip_prob=1.0), target_sigma=1.0)
  a = plain.sample(0)
  b = flip.sample(0, np.random.default_rng(0))
  for key in ("inputs", "targets"):
    np.testing.assert_allclose(b[key], a[key][:, ::-1][..., coco.FLIP_PERM], atol=1e-5)
  np.testing.assert_array_equal(b["target_valid"], a["target_valid"][coco.FLIP_PERM])


def test_compose_and_drop_change_inputs_not_targets(scene_file):
  plain = prn_samples.PrnSampleSource(scene_file, augment=None)
  aug = prn_samples.PrnSampleSource(
      scene_file, augment=_aug(compose_prob=1.0, compose_max_people=3, drop_other_prob=0.3))
  a = plain.sample(1)
  changed = 0
  for seed in range(5):
    b = aug.sample(1, np.random.default_rng(seed))
    np.testing.assert_array_equal(b["targets"], a["targets"])
    changed += not np.array_equal(b["inputs"], a["inputs"])
  assert changed >= 4


def test_dropped_own_keypoints_are_invalid_targets(scene_file):
  aug = prn_samples.PrnSampleSource(scene_file, augment=_aug(drop_own_prob=1.0))
  s = aug.sample(0, np.random.default_rng(0))
  assert s["target_valid"].sum() == 0 and s["targets"].sum() == 0


def test_batches_deterministic_and_independent_of_process_split(coco_dir):
  ann = str(coco_dir / "annotations" / "person_keypoints_val2017_prn_val.json")
  src = prn_samples.PrnSampleSource(ann, augment=prn_samples.prn_data_config().augment)
  a = prn_samples.batch_at(src, 3, 8, seed=5)
  b = prn_samples.batch_at(src, 3, 8, seed=5)
  c = prn_samples.batch_at(src, 3, 8, seed=6)
  halves = [prn_samples.batch_at(src, 3, 8, seed=5, process_index=p, process_count=2)
            for p in range(2)]
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a[k], np.concatenate([h[k] for h in halves]))
  assert not np.array_equal(a["inputs"], c["inputs"])
  assert a["inputs"].shape == (8, 56, 36, 17) and a["target_valid"].shape == (8, 17)
  assert a["inputs"].dtype == np.float32 and a["targets"].dtype == np.float32


def test_every_sample_once_per_epoch(scene_file):
  src = prn_samples.PrnSampleSource(scene_file, augment=None)  # 3 people
  batches = [prn_samples.batch_at(src, s, 3, seed=0) for s in range(2)]
  for b in batches:  # without augmentation, each epoch's batch is a permutation of the 3 samples
    keys = sorted(tuple(np.round(t.sum((0, 1)), 3)) for t in b["inputs"])
    ref = sorted(tuple(np.round(src.sample(i)["inputs"].sum((0, 1)), 3)) for i in range(3))
    assert keys == ref


def test_make_prn_iterator_and_eval_set(coco_dir):
  config = ml_collections.ConfigDict()
  config.seed = 1
  config.data = prn_samples.prn_data_config()
  config.data.data_dir = str(coco_dir)
  config.data.batch_size = 8
  it = prn_samples.make_prn_iterator(config)
  first = next(it)
  assert first["inputs"].shape == (8, 56, 36, 17)
  val = prn_samples.make_prn_eval_set(config.data)
  assert val["inputs"].shape == (216, 56, 36, 17)
  config.data.batch_size = 6  # not divisible over the 4 test devices
  with pytest.raises(ValueError, match="divisible"):
    next(prn_samples.make_prn_iterator(config))


def test_missing_file_names_the_field(tmp_path):
  dcfg = prn_samples.prn_data_config()
  dcfg.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="config.data"):
    prn_samples.make_prn_eval_set(dcfg)


def test_malformed_file_stops_the_source_with_file_id_and_field(scene_file, tmp_path):
  """The training and eval sources read through load_image_people's checks (see
  tests/test_annotation_validation.py for the full table)."""
  data = json.loads(pathlib.Path(scene_file).read_text())
  data["annotations"][1]["keypoints"] = data["annotations"][1]["keypoints"][:48]
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(data))
  with pytest.raises(errors.DataError) as e:
    prn_samples.PrnSampleSource(str(bad))
  assert str(e.value).startswith(f"{bad}: annotation #1 (id 2, image_id 7): field 'keypoints' ")
  assert "got 48 values" in str(e.value)
  dcfg = prn_samples.prn_data_config()
  dcfg.data_dir = str(tmp_path)
  with pytest.raises(errors.MissingFileError, match="config.data.data_dir"):
    prn_samples.make_prn_eval_set(dcfg)
