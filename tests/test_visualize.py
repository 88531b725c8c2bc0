"""Pictures: skeletons drawn where the limbs are and nowhere else; heatmap overlays; PNG round trip."""

import json

import numpy as np
import pytest
from PIL import Image

from mpn_jax import coco
from mpn_jax import visualize
from mpn_jax.data import preprocess


def _segment_distance(h, w, p, q):
  """Distance of every pixel centre of an h x w image to the segment p-q: [h, w]."""
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  p, q = np.asarray(p, np.float32), np.asarray(q, np.float32)
  d = q - p
  t = ((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / max(float(d @ d), 1e-9)
  t = np.clip(t, 0.0, 1.0)
  return np.hypot(xs - (p[0] + t * d[0]), ys - (p[1] + t * d[1]))


@pytest.fixture(scope="module")
def real_people(coco_dir):
  """The val sample image with the most annotated people: (image uint8, keypoints [N, 17, 3])."""
  with open(coco_dir / "annotations" / "person_keypoints_val2017_sample.json") as f:
    ann = json.load(f)
  per_image = {}
  for a in ann["annotations"]:
    if not a["iscrowd"] and a["num_keypoints"] >= 8:
      per_image.setdefault(a["image_id"], []).append(a["keypoints"])
  image_id = max(per_image, key=lambda i: len(per_image[i]))
  info = next(i for i in ann["images"] if i["id"] == image_id)
  image = preprocess.load_image(coco_dir / "val2017" / info["file_name"])
  assert image.shape[:2] == (info["height"], info["width"])
  return image, np.array(per_image[image_id], np.float32).reshape(-1, 17, 3)


def test_skeleton_drawn_on_limbs_and_nowhere_else(real_people):
  image, kps = real_people
  width = 3
  colors = visualize.person_colors(len(kps))
  out = visualize.draw_people(image, keypoints=kps, line_width=width, colors=colors)
  assert out.shape == image.shape and out.dtype == np.uint8
  assert not np.shares_memory(out, image)
  h, w = image.shape[:2]
  near = np.zeros((h, w), bool)
  core = np.zeros((h, w), bool)
  limbs = 0
  for person in kps:
    shown = person[:, 2] > 0
    for a, b in coco.SKELETON:
      if shown[a] and shown[b]:
        limbs += 1
        # The middle of every limb is painted in one of the people's colours (or the white outline
        # of a keypoint drawn over it).
        mx, my = (person[a, :2] + person[b, :2]) / 2
        assert tuple(out[int(my), int(mx)]) in colors + [(255, 255, 255)], (a, b)
    for k in np.flatnonzero(shown):
      near |= _segment_distance(h, w, person[k, :2], person[k, :2]) < width + 4
    for a, b in coco.SKELETON:
      if shown[a] and shown[b]:
        dist = _segment_distance(h, w, person[a, :2], person[b, :2])
        near |= dist < width + 2
        core |= dist < 0.75
  assert limbs >= 8
  changed = np.any(out != image, axis=-1)
  # Far from every limb and keypoint, not a single pixel changed.
  assert not changed[~near].any()
  # And right on the limbs, the pixels did change.
  assert changed[core].mean() > 0.97


def test_threshold_hides_low_score_keypoints_and_their_limbs():
  image = np.full((60, 80, 3), 40, np.uint8)
  kps = np.zeros((1, 17, 3), np.float32)
  kps[0, 5] = (20, 20, 0.9)   # left shoulder
  kps[0, 7] = (20, 50, 0.9)   # left elbow: limb (5, 7) drawn
  kps[0, 6] = (60, 20, 0.2)   # right shoulder below the threshold
  out = visualize.draw_people(image, keypoints=kps, threshold=0.5, line_width=2)
  assert np.any(out[35, 20] != 40)             # on the limb 5-7
  assert np.all(out[20, 60] == 40)             # hidden keypoint
  assert np.all(out[20, 40] == 40)             # hidden limb 5-6


def test_boxes_and_scores_drawn():
  image = np.zeros((100, 120, 3), np.uint8)
  out = visualize.draw_people(image, boxes=np.array([[30, 40, 90, 95]], np.float32),
                              scores=np.array([0.87]), line_width=2)
  assert np.any(out[60, 30] != 0) and np.any(out[95, 60] != 0)  # left and bottom edges
  assert np.all(out[70, 60] == 0)                                 # inside the box
  assert np.any(out[28:40, 30:60] != 0)                           # the score label above


def test_bad_image_is_a_clear_error():
  with pytest.raises(ValueError, match="uint8"):
    visualize.draw_people(np.zeros((10, 10, 3), np.float32))


def test_overlay_heatmaps_only_where_heat():
  image = np.full((64, 64, 3), 100, np.uint8)
  heat = np.zeros((16, 16, 17), np.float32)
  assert np.array_equal(visualize.overlay_heatmaps(image, heat), image)
  heat[4, 12, 3] = 1.0  # cell centre at input (50, 18)
  out = visualize.overlay_heatmaps(image, heat)
  assert np.any(out[18, 50] != 100)
  assert np.all(out[50:, :30] == 100)


def test_denormalize_inverts_normalize():
  rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
  assert np.array_equal(visualize.denormalize_image(coco.normalize_image(rgb)), rgb)


def test_training_targets_picture_and_png_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  s = 64
  example = {
      "image": coco.normalize_image(rng.integers(0, 256, (s, s, 3)).astype(np.float32)),
      "heatmaps": np.zeros((s // 4, s // 4, 17), np.float32),
      "weights": np.ones((s // 4, s // 4, 1), np.float32),
      "boxes": np.array([[8, 8, 40, 60], [0, 0, 0, 0]], np.float32),
      "box_labels": np.array([1, 0], np.int32),
      "keypoints": np.zeros((2, 17, 3), np.float32),
  }
  example["heatmaps"][10, 3, 0] = 1.0
  example["weights"][0:4, 12:16] = 0.0
  example["keypoints"][0, 0] = (20, 20, 2)
  pic = visualize.draw_training_targets(example)
  base = visualize.denormalize_image(example["image"])
  assert pic.shape == (s, s, 3)
  assert np.any(pic[42, 14] != base[42, 14])           # heat at cell (10, 3)
  assert np.all(pic[2:14, 50:62] == base[2:14, 50:62] // 3)  # ignored region darkened
  path = visualize.save_png(pic, str(tmp_path / "a" / "b.png"))
  assert np.array_equal(np.asarray(Image.open(path)), pic)
