"""The `mpn_synthetic` builder: determinism, COCO-consistent annotations, masks and statistics."""

import json
import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mpn_jax import coco
from mpn_jax.evaluation import coco_io
from mpn_jax.data import datasets
from mpn_jax.data import synthetic

tfds.disable_progress_bar()

EARS = (coco.KEYPOINT_NAMES.index("left_ear"), coco.KEYPOINT_NAMES.index("right_ear"))


def _cfg(data_dir, size=64, num_train=24, num_val=8, seed=0):
  return dict(name="mpn_synthetic", data_dir=str(data_dir), image_size=size, num_train=num_train,
              num_val=num_val, seed=seed)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  cfg = _cfg(tmp_path_factory.mktemp("tfds"))
  builder = datasets.load_builder(cfg)
  examples = {s: {int(ex["image_id"]): ex for ex in tfds.as_numpy(builder.as_dataset(split=s))}
              for s in ("train", "validation")}
  return cfg, builder, examples


@pytest.fixture(scope="module")
def sample():
  """200 images drawn directly (no TFDS), for statistics."""
  config = synthetic.make_config(image_size=80, num_train=200, num_val=1, seed=3)
  return config, list(synthetic.generate_split(config, "train"))


def test_generate_split_is_deterministic():
  config = synthetic.make_config(image_size=64, num_train=6, num_val=1, seed=7)
  a = list(synthetic.generate_split(config, "train"))
  b = list(synthetic.generate_split(config, "train"))
  for (rec_a, anns_a, px_a), (rec_b, anns_b, px_b) in zip(a, b):
    assert rec_a == rec_b and anns_a == anns_b
    np.testing.assert_array_equal(px_a, px_b)
  other = list(synthetic.generate_split(synthetic.make_config(64, 6, 1, seed=8), "train"))
  assert not all(np.array_equal(x[2], y[2]) for x, y in zip(a, other))


def test_build_is_deterministic(built, tmp_path):
  cfg, builder, examples = built
  again = datasets.load_builder(dict(cfg, data_dir=str(tmp_path)))
  assert again.data_path != builder.data_path
  for split in ("train", "validation"):
    other = {int(ex["image_id"]): ex for ex in tfds.as_numpy(again.as_dataset(split=split))}
    assert sorted(other) == sorted(examples[split])
    for image_id, ex in examples[split].items():
      for key in ("image", "person_mask", "ignore_mask"):
        np.testing.assert_array_equal(ex[key], other[image_id][key])
      for key, value in ex["people"].items():
        np.testing.assert_array_equal(value, other[image_id]["people"][key])
    with open(datasets.annotation_file(cfg, split), "rb") as f1, open(
        datasets.annotation_file(dict(cfg, data_dir=str(tmp_path)), split), "rb") as f2:
      assert f1.read() == f2.read()


@pytest.mark.parametrize("split,count", [("train", 24), ("validation", 8)])
def test_examples_match_annotation_file_and_masks(built, split, count):
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  cfg, _, examples = built
  gt = COCO(datasets.annotation_file(cfg, split))
  assert len(examples[split]) == count == len(gt.getImgIds())
  assert gt.loadCats(gt.getCatIds()) == [coco.PERSON_CATEGORY]
  for image_id, ex in examples[split].items():
    assert ex["image"].shape == (64, 64, 3) and ex["person_mask"].shape == (64, 64, 1)
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=None))
    assert list(ex["people"]["id"]) == [a["id"] for a in anns]
    masks = [gt.annToMask(a) for a in anns]
    person = np.zeros((64, 64), np.uint8)
    ignore = np.zeros((64, 64), np.uint8)
    for k, (a, m) in enumerate(zip(anns, masks)):
      np.testing.assert_allclose(ex["people"]["keypoints"][k], np.reshape(a["keypoints"], (17, 3)))
      np.testing.assert_allclose(ex["people"]["bbox"][k], a["bbox"], atol=1e-4)
      assert a["area"] == m.sum() > 0
      person |= m if not a["iscrowd"] else 0
      ignore |= m if (a["iscrowd"] or a["num_keypoints"] == 0) else 0
      kps = np.reshape(a["keypoints"], (17, 3))
      for i, (x, y, v) in enumerate(kps):
        if v == 2:
          assert m[int(y), int(x)] == 1, (image_id, a["id"], i)  # visible: on the figure
        elif v == 1 and i not in EARS:
          # hidden: on another, later-drawn figure
          assert m[int(y), int(x)] == 0 and ex["person_mask"][int(y), int(x), 0] == 1
        elif v == 0:
          assert x == y == 0
    np.testing.assert_array_equal(ex["person_mask"][..., 0], person)
    np.testing.assert_array_equal(ex["ignore_mask"][..., 0], ignore)


def test_ground_truth_against_itself_scores_perfectly(built):
  cfg, _, _ = built
  path = datasets.annotation_file(cfg, "train")
  with open(path) as f:
    anns = json.load(f)["annotations"]
  kp_results = [dict(image_id=a["image_id"], category_id=1, keypoints=a["keypoints"], score=1.0)
                for a in anns if a["num_keypoints"] > 0 and not a["iscrowd"]]
  assert coco_io.run_coco_eval(path, kp_results, "keypoints")["AP"] == 1.0
  box_results = [dict(image_id=a["image_id"], category_id=1, bbox=a["bbox"], score=1.0)
                 for a in anns if not a["iscrowd"]]
  assert coco_io.run_coco_eval(path, box_results, "bbox")["AP"] == 1.0


def test_statistics(sample):
  config, images = sample
  size = config.image_size
  counts, heights, flips = set(), [], set()
  truncated = crowds = unlabelled = 0
  for _, anns, _ in images:
    people = [a for a in anns if not a["iscrowd"]]
    counts.add(len(people))
    crowds += len(anns) - len(people)
    for a in people:
      kps = np.reshape(a["keypoints"], (17, 3))
      lab = kps[kps[:, 2] > 0]
      assert ((lab[:, :2] >= 0) & (lab[:, :2] < size)).all()
      if a["num_keypoints"] == 0:
        unlabelled += 1
        continue
      heights.append(a["bbox"][3])
      x, y, w, h = a["bbox"]
      if a["num_keypoints"] < 17 and (min(x, y) <= 0 or max(x + w, y + h) >= size):
        truncated += 1
      if kps[5, 2] and kps[6, 2]:
        flips.add(np.sign(kps[5, 0] - kps[6, 0]))
  assert counts == {1, 2, 3, 4, 5, 6}
  assert crowds > 5 and unlabelled > 10 and truncated > 20
  assert flips == {-1.0, 1.0}  # left/right appear mirrored in back views
  assert np.mean(heights) > size / 4


def test_body_follows_coco_skeleton():
  rng = np.random.default_rng(0)
  for _ in range(50):
    pts = synthetic.body_points(synthetic.sample_pose(rng))
    xyz = np.stack([pts[n] for n in coco.KEYPOINT_NAMES])
    for a, b in coco.SKELETON:
      assert 0.02 < np.linalg.norm(xyz[a] - xyz[b]) < 0.35  # fractions of the figure's height
    # Left/right shoulders and hips sit symmetrically about the body's midline, left at +X.
    for left, mid in ((5, pts["shoulders"]), (11, pts["pelvis"])):
      right = coco.FLIP_PERM[left]
      np.testing.assert_allclose(xyz[left] + xyz[right], 2 * mid)
      assert xyz[left][0] > xyz[right][0]
    assert xyz[0][1] < xyz[5][1] < xyz[11][1]  # nose above shoulders above hips (y down)


def test_projection_is_a_similarity():
  pts = {"a": np.array([0.0, 0.0, 0.0]), "b": np.array([0.0, 0.5, 0.0])}
  proj = synthetic.project(pts, yaw=0.3, angle=math.pi / 2, height=40, center=np.array([10., 20.]))
  np.testing.assert_allclose(proj["a"][0], [10, 20])
  np.testing.assert_allclose(proj["b"][0], [10 - 20, 20], atol=1e-9)  # down turned by 90 degrees


def test_default_config_is_predefined(tmp_path):
  builder = datasets.make_builder(dict(name="mpn_synthetic", data_dir=str(tmp_path)))
  assert builder.builder_config is synthetic.MpnSynthetic.BUILDER_CONFIGS[0]
  assert builder.builder_config.image_size == 128


def test_bad_config():
  with pytest.raises(ValueError, match="image_size"):
    synthetic.make_config(image_size=16)
  with pytest.raises(ValueError, match="num_train"):
    synthetic.make_config(num_train=0)


@pytest.mark.parametrize("yaw", [0.0, math.pi])  # seen from the front and from behind
def test_left_limbs_are_lighter_than_right_ones(yaw):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  size, height = 160, 140.0
  pose = {"lean": 0.0, "bend": 0.0, "head_tilt": 0.0, "head_yaw": 0.0}
  for side in ("left", "right"):  # arms and legs spread sideways, so nothing overlaps
    pose[f"{side}_upper_arm"] = pose[f"{side}_forearm"] = (1.2, 0.0)
    pose[f"{side}_thigh"] = pose[f"{side}_shin"] = (0.35, 0.0)
  proj = synthetic.project(synthetic.body_points(pose), yaw, 0.0, height,
                           np.array([size / 2, size * 0.6]))
  image = Image.new("RGB", (size, size), (0, 0, 0))
  painter = synthetic.Painter(image, Image.new("L", (size, size), 0))
  grey = (120, 120, 120)
  style = dict(skin=grey, hair=grey, shirt=grey, pants=grey, shoes=grey, long_sleeves=True,
               shorts=False)
  synthetic.draw_figure(painter, proj, height, style)
  pixels = np.asarray(image, np.float32).mean(-1)

  def brightness(a, b):  # the middle of the limb a-b
    x, y = (proj[a][0] + proj[b][0]) / 2
    return pixels[int(y), int(x)]

  for upper, lower in (("shoulder", "elbow"), ("hip", "knee")):
    left = brightness(f"left_{upper}", f"left_{lower}")
    right = brightness(f"right_{upper}", f"right_{lower}")
    # The far side is also shaded x0.8 (which side is "far" is a rounding matter when edge-on).
    assert left >= 0.8 * 120 * synthetic.SIDE_TINT["left"] - 1
    assert right <= 120 * synthetic.SIDE_TINT["right"] + 1
    assert left > 1.3 * right


def test_overlap_is_the_covered_fraction_of_the_smaller_box():
  assert synthetic._overlap((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 100)
  assert synthetic._overlap((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(1.0)  # inside
  assert synthetic._overlap((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching


def test_labelled_figures_rarely_cover_each_other():
  # Positions are redrawn while a figure covers more than MAX_OVERLAP of an earlier one's extent;
  # only when PLACE_TRIES draws all fail does a heavier overlap remain.
  cfg = synthetic.make_config(image_size=128, num_train=40, num_val=1, seed=3)
  pairs = heavy = 0
  for _, anns, _ in synthetic.generate_split(cfg, "train"):
    boxes = [a["bbox"] for a in anns if not a["iscrowd"] and a["area"] > 200]
    for i in range(len(boxes)):
      for j in range(i):
        a, b = ([x, y, x + w, y + h] for x, y, w, h in (boxes[i], boxes[j]))
        pairs += 1
        heavy += synthetic._overlap(a, b) > 0.8
  assert pairs > 20 and heavy <= 0.1 * pairs
