"""`mpn_synthetic`: procedurally drawn multi-person keypoint images, a small learnable stand-in for COCO.

Build (seconds for a few hundred images):

  python -m mpn_jax.data.datasets --name=mpn_synthetic --image_size=128 --num_train=512 \
      --num_val=64 --seed=0 --data_dir=/tmp/tfds

Each image (image_size x image_size, png) shows 1 to 6 articulated figures over a cluttered
background (gradient, 0-3 random shapes, noise). A figure is a 3D stick body with COCO's 17
keypoints and rough human proportions (head with eyes, nose and ears; torso; arms and legs with joint
angles in plausible ranges) turned by a yaw angle (frontal, side and back views, so left/right appear
mirrored), rotated in the image plane, scaled and placed anywhere, often overlapping others (but
rarely covering more than 40% of another's box, MAX_OVERLAP) or cut by the border. Limbs are drawn
as thick lines with joint blobs, parts painted far to near, left limbs in a lighter tint than right
ones (SIDE_TINT). Keypoints follow COCO: v=2 visible, v=1 labelled but hidden (covered by a
later-drawn person, or the far ear behind the head), v=0 with x=y=0 when
unlabelled (outside the image, the face of a figure seen from behind). Some figures are unlabelled
(num_keypoints=0, so they land in the ignore mask) and some images hold a crowd region (iscrowd=1) of
small figures. Masks, boxes and areas come from the pixels each figure actually covers.
Features are those of `coco_keypoints` (docs/design.md "data"); the COCO-format annotation file of
each split is written next to the records as `annotations_{split}.json`.
Everything is a deterministic function of (seed, split, image index).
"""

import dataclasses
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from mpn_jax import cli  # pylint: disable=g-bad-import-order
cli.import_tensorflow_quietly()  # before TensorFlow first loads: its native start-up notices off
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from mpn_jax import boxes as box_lib
from mpn_jax import coco
from mpn_jax.data import coco_keypoints

SPLIT_INDEX = {"train": 0, "validation": 1}
K = coco.NUM_KEYPOINTS

# Body proportions as fractions of the figure's height (ankles to top of head ~ 1.0).
HIP_HALF_WIDTH = 0.085
SHOULDER_HALF_WIDTH = 0.115
TORSO = 0.30
NECK = 0.05
HEAD_UP = 0.085
HEAD_RADIUS = 0.065
UPPER_ARM, FOREARM = 0.16, 0.14
THIGH, SHIN = 0.245, 0.245
THICK = {"upper_arm": 0.07, "forearm": 0.06, "thigh": 0.095, "shin": 0.075, "neck": 0.06,
         "torso": 0.2}

SKIN = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36),
        (92, 58, 30))
HAIR = ((20, 15, 10), (70, 45, 20), (140, 90, 40), (200, 170, 90), (120, 120, 120), (160, 40, 20))

# Eyes and nose further behind the head centre than this (in head radii) are unlabelled (v=0).
FACE_LABEL_DEPTH = -0.2
CROWD_ID = 1  # id-map value of crowd pixels; person k is drawn with value k + 2.

# How many people an image holds (probabilities of 1..6) and their heights (fractions of the image
# side). Figures are large relative to the image: COCO's OKS scales with the segment area, and a
# stick figure covers far fewer pixels than a clothed person of the same height.
PEOPLE_PER_IMAGE = (0.3, 0.3, 0.2, 0.1, 0.06, 0.04)
HEIGHT = (0.4, 0.9)
SMALL_FRACTION = 0.1          # some small figures (mostly unlabelled, so in the ignore mask)
SMALL_HEIGHT = (0.15, 0.28)
# Left limbs are drawn in a lighter tint of the clothes and skin, right limbs in a darker one (like a
# two-tone jersey). In photos, telling a person's left from right in side and back views takes
# context that a network of CPU size does not learn in minutes; the tint makes the keypoint types
# learnable locally, so the quickstart measures detection, localisation and grouping.
# Mirroring a figure makes its lighter limbs the right ones: train and test it without flips
# (configs/branches.py:synthetic).
SIDE_TINT = {"left": 1.25, "right": 0.7}
# Background clutter: this many random shapes (some of them limb-like lines) behind the figures.
CLUTTER_SHAPES = (0, 4)
# Figures overlap, but rarely almost completely: a figure's position is drawn again (up to
# PLACE_TRIES times) while its box covers more than MAX_OVERLAP of an earlier figure's box or of its
# own. COCO's people overlap too, but most of them are well apart; without this a 128 px image with
# three or more figures is mostly one tangle.
MAX_OVERLAP = 0.4
PLACE_TRIES = 10
FIT_FRACTION = 0.8  # figures placed wholly inside the image; the rest anywhere, often cut


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Image side length in pixels, images per split and the seed everything derives from."""
  image_size: int = 128
  num_train: int = 512
  num_val: int = 64
  seed: int = 0


def make_config(image_size=128, num_train=512, num_val=64, seed=0):
  """A config named after its parameters, so that different datasets never share a folder."""
  if image_size < 32:
    raise ValueError(f"mpn_synthetic: image_size must be at least 32, got {image_size}")
  if num_train < 1 or num_val < 1:
    raise ValueError(f"mpn_synthetic: num_train/num_val must be positive, got {num_train}/{num_val}")
  return SyntheticConfig(
      name=f"s{image_size}_train{num_train}_val{num_val}_seed{seed}",
      description=f"{image_size}px, {num_train} train / {num_val} validation images, seed {seed}",
      image_size=image_size, num_train=num_train, num_val=num_val, seed=seed)


# ---------------------------------------------------------------------------------------------------
# Figure geometry. Body frame: X to the person's left, Y down, Z forward (towards the viewer at yaw 0);
# unit = figure height.


def _direction(outward, abduction, flexion):
  """Unit 3D vector pointing down, turned `abduction` rad sideways and `flexion` rad forward."""
  return np.array([outward * math.sin(abduction) * math.cos(flexion),
                   math.cos(abduction) * math.cos(flexion), math.sin(flexion)])


def sample_pose(rng):
  """Random joint angles (radians) of one figure."""
  pose = {"lean": rng.normal(0.0, 0.12), "bend": rng.uniform(-0.1, 0.5),
          "head_tilt": rng.normal(0.0, 0.15), "head_yaw": rng.normal(0.0, 0.3)}
  for side in ("left", "right"):
    raised = rng.random() < 0.2
    abd = rng.uniform(1.6, 3.0) if raised else rng.uniform(-0.2, 1.5)
    flex = rng.uniform(-0.6, 1.2)
    pose[f"{side}_upper_arm"] = (abd, flex)
    pose[f"{side}_forearm"] = (abd + rng.uniform(-0.6, 0.6), flex + rng.uniform(0.0, 2.2))
    abd = rng.uniform(-0.15, 0.5)
    flex = rng.uniform(-0.5, 1.3) if rng.random() < 0.3 else rng.uniform(-0.4, 0.5)
    pose[f"{side}_thigh"] = (abd, flex)
    pose[f"{side}_shin"] = (abd + rng.uniform(-0.3, 0.2), flex - rng.uniform(0.0, 1.6))
  return pose


def body_points(pose):
  """3D keypoints [17, 3] plus helper points (dict name -> [3]) of a figure in its body frame."""
  pts = {}
  lean, bend = pose["lean"], pose["bend"]
  torso_dir = np.array([math.sin(lean), -math.cos(lean) * math.cos(bend), math.sin(bend)])
  pelvis = np.zeros(3)
  shoulders = pelvis + TORSO * torso_dir
  for side, o in (("left", 1.0), ("right", -1.0)):
    hip = pelvis + [o * HIP_HALF_WIDTH, 0, 0]
    sh = shoulders + [o * SHOULDER_HALF_WIDTH, 0, 0]
    elbow = sh + UPPER_ARM * _direction(o, *pose[f"{side}_upper_arm"])
    wrist = elbow + FOREARM * _direction(o, *pose[f"{side}_forearm"])
    knee = hip + THIGH * _direction(o, *pose[f"{side}_thigh"])
    ankle = knee + SHIN * _direction(o, *pose[f"{side}_shin"])
    pts.update({f"{side}_hip": hip, f"{side}_shoulder": sh, f"{side}_elbow": elbow,
                f"{side}_wrist": wrist, f"{side}_knee": knee, f"{side}_ankle": ankle,
                f"{side}_toe": ankle + [0, 0.01, 0.06]})
  tilt = pose["head_tilt"]
  head_dir = np.array([math.sin(lean + tilt), -math.cos(lean + tilt) * math.cos(bend),
                       math.sin(bend)])
  neck = shoulders + NECK * torso_dir
  head = neck + HEAD_UP * head_dir
  r = HEAD_RADIUS
  cy, sy = math.cos(pose["head_yaw"]), math.sin(pose["head_yaw"])
  face = {"nose": (0.0, 0.15 * r, r), "left_eye": (0.38 * r, -0.2 * r, 0.85 * r),
          "right_eye": (-0.38 * r, -0.2 * r, 0.85 * r), "left_ear": (r, 0.0, -0.05 * r),
          "right_ear": (-r, 0.0, -0.05 * r)}
  for name, (x, y, z) in face.items():  # the head turns a little on its own
    pts[name] = head + [x * cy + z * sy, y, -x * sy + z * cy]
  pts.update(pelvis=pelvis, shoulders=shoulders, neck=neck, head=head)
  return pts


def project(pts, yaw, angle, height, center):
  """Turns body-frame points by `yaw` about the vertical, projects them orthographically, rotates
  the image by `angle`, scales to `height` pixels and moves the pelvis to `center`.

  Returns: dict name -> (xy [2] image pixels, depth: larger is nearer the viewer, in figure units).
  """
  c, s = math.cos(yaw), math.sin(yaw)
  ca, sa = math.cos(angle), math.sin(angle)
  out = {}
  for name, (x, y, z) in pts.items():
    u, depth = x * c + z * s, -x * s + z * c
    xy = np.array([ca * u - sa * y, sa * u + ca * y]) * height + center
    out[name] = (xy, depth)
  return out


# ---------------------------------------------------------------------------------------------------
# Drawing.


class Painter:
  """Draws the same shapes into the RGB image and, with a person's id, into an id map."""

  def __init__(self, image, ids):
    self.rgb = ImageDraw.Draw(image)
    self.ids = ImageDraw.Draw(ids)
    self.id = 0

  @staticmethod
  def _pil(xy):  # continuous coordinates (pixel i covers [i, i+1)) -> PIL's (pixel i centred at i)
    return float(xy[0]) - 0.5, float(xy[1]) - 0.5

  def line(self, a, b, width, color):
    a, b = self._pil(a), self._pil(b)
    w = max(1, int(round(width)))
    self.rgb.line([a, b], fill=color, width=w)
    self.ids.line([a, b], fill=self.id, width=w)
    self.disc(np.add(a, 0.5), width / 2, color)  # round caps
    self.disc(np.add(b, 0.5), width / 2, color)

  def disc(self, center, radius, color, ry=None):
    x, y = self._pil(center)
    rx, ry = max(radius, 0.6), max(radius if ry is None else ry, 0.6)
    box = [x - rx, y - ry, x + rx, y + ry]
    self.rgb.ellipse(box, fill=color)
    self.ids.ellipse(box, fill=self.id)
    # PIL may leave tiny ellipses empty: the pixel holding the centre (a keypoint) is always painted.
    pixel = (math.floor(center[0]), math.floor(center[1]))
    self.rgb.point(pixel, fill=color)
    self.ids.point(pixel, fill=self.id)

  def polygon(self, points, color):
    pts = [self._pil(p) for p in points]
    self.rgb.polygon(pts, fill=color)
    self.ids.polygon(pts, fill=self.id)


def _shade(color, factor):
  return tuple(int(min(255, max(0, c * factor))) for c in color)


def _random_color(rng, lo=30, hi=230):
  return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def sample_style(rng):
  """Colours of one figure."""
  return {"skin": SKIN[rng.integers(len(SKIN))], "hair": HAIR[rng.integers(len(HAIR))],
          "shirt": _random_color(rng), "pants": _random_color(rng, 20, 200),
          "shoes": _random_color(rng, 0, 90), "long_sleeves": rng.random() < 0.5,
          "shorts": rng.random() < 0.3}


def draw_figure(painter, proj, height, style):
  """Paints one projected figure far part to near part (painter's algorithm)."""
  px = lambda n: proj[n][0]  # noqa: E731
  depth = lambda *ns: float(np.mean([proj[n][1] for n in ns]))  # noqa: E731
  t = lambda part: max(1.0, THICK[part] * height)  # noqa: E731
  parts = []

  for side in ("left", "right"):
    def arm(side=side):
      shade = (0.8 if depth(f"{side}_shoulder") < 0 else 1.0) * SIDE_TINT[side]
      shirt, skin = _shade(style["shirt"], shade), _shade(style["skin"], shade)
      sh, el, wr = px(f"{side}_shoulder"), px(f"{side}_elbow"), px(f"{side}_wrist")
      painter.line(sh, el, t("upper_arm"), shirt)
      painter.line(el, wr, t("forearm"), shirt if style["long_sleeves"] else skin)
      painter.disc(el, 0.55 * t("forearm"), _shade(shirt, 0.8))
      painter.disc(wr, 0.6 * t("forearm"), _shade(skin, 0.85))

    def leg(side=side):
      shade = (0.8 if depth(f"{side}_hip") < 0 else 1.0) * SIDE_TINT[side]
      pants, skin = _shade(style["pants"], shade), _shade(style["skin"], shade)
      hip, kn, an = px(f"{side}_hip"), px(f"{side}_knee"), px(f"{side}_ankle")
      painter.line(hip, kn, t("thigh"), pants)
      painter.line(kn, an, t("shin"), skin if style["shorts"] else pants)
      painter.disc(kn, 0.55 * t("shin"), _shade(pants, 0.8))
      painter.line(an, px(f"{side}_toe"), 0.8 * t("shin"), style["shoes"])
      painter.disc(an, 0.55 * t("shin"), _shade(style["shoes"], 1.3))

    parts.append((depth(f"{side}_shoulder", f"{side}_elbow", f"{side}_wrist") + 0.01, arm))
    parts.append((depth(f"{side}_hip", f"{side}_knee", f"{side}_ankle"), leg))

  def torso():
    shirt = style["shirt"]
    quad = [px("left_shoulder"), px("right_shoulder"), px("right_hip"), px("left_hip")]
    painter.polygon(quad, shirt)
    painter.line(px("pelvis"), px("shoulders"), t("torso"), shirt)
    painter.line(px("left_hip"), px("right_hip"), t("thigh"), style["pants"])
    for n in ("left_shoulder", "right_shoulder"):
      painter.disc(px(n), 0.55 * t("upper_arm"), _shade(shirt, 0.85))
    for n in ("left_hip", "right_hip"):
      painter.disc(px(n), 0.5 * t("thigh"), _shade(style["pants"], 0.85))

  def head():
    r = HEAD_RADIUS * height
    hd = proj["head"][1]
    painter.line(px("shoulders"), px("neck"), t("neck"), style["skin"])
    ears = sorted(("left_ear", "right_ear"), key=lambda n: proj[n][1])
    painter.disc(px(ears[0]), 0.3 * r, _shade(style["skin"], 0.8))
    facing = proj["nose"][1] - hd  # > 0: the face turns towards the viewer
    up = px("head") - px("neck")
    up = up / max(np.linalg.norm(up), 1e-6)
    # Hair: the whole head seen from behind, a cap peeking out above the face otherwise.
    painter.disc(px("head") + 0.15 * r * up, r, style["hair"], ry=1.1 * r)
    if facing > -0.3 * HEAD_RADIUS:
      painter.disc(px("head") - 0.1 * r * up, 0.9 * r, style["skin"], ry=r)
    painter.disc(px(ears[1]), 0.3 * r, _shade(style["skin"], 0.9))
    # Eyes and nose are drawn exactly when they are labelled (see figure_keypoints).
    for n in ("left_eye", "right_eye"):
      if proj[n][1] - hd >= FACE_LABEL_DEPTH * HEAD_RADIUS:
        painter.disc(px(n), max(0.6, 0.16 * r), (20, 20, 30))
    if facing >= FACE_LABEL_DEPTH * HEAD_RADIUS:
      painter.disc(px("nose"), max(0.6, 0.14 * r), _shade(style["skin"], 0.6))

  parts.append((0.0, torso))
  parts.append((proj["head"][1] + 0.02, head))
  for _, draw in sorted(parts, key=lambda p: p[0]):
    draw()


def figure_keypoints(proj):
  """[17, 3] float (x, y, v) before occlusion: v=2, or 0 for a face seen from behind, 1 for an ear
  behind the head."""
  kps = np.zeros((K, 3), np.float64)
  hd = proj["head"][1]
  for i, name in enumerate(coco.KEYPOINT_NAMES):
    xy, depth = proj[name]
    v = 2
    rel = (depth - hd) / HEAD_RADIUS if name in ("nose", "left_eye", "right_eye", "left_ear",
                                                  "right_ear") else 0.0
    if name.endswith("_ear") and rel < -0.5:
      v = 1
    elif name in ("nose", "left_eye", "right_eye") and rel < FACE_LABEL_DEPTH:
      v = 0
    kps[i] = (xy[0], xy[1], v)
  return kps


def draw_background(rng, size):
  """[size, size, 3] uint8: a colour gradient with random shapes."""
  a, b = np.array(_random_color(rng, 0, 255), np.float32), np.array(_random_color(rng, 0, 255),
                                                                      np.float32)
  theta = rng.uniform(0, 2 * math.pi)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  w = np.clip((xx * math.cos(theta) + yy * math.sin(theta) + 1) / 2, 0, 1)[..., None]
  image = Image.fromarray((a * (1 - w) + b * w).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(*CLUTTER_SHAPES))):
    kind = rng.integers(4)
    x0, y0 = rng.uniform(-0.2, 1.0, size=2) * size
    x1, y1 = np.array([x0, y0]) + rng.uniform(0.05, 0.6, size=2) * size
    color = _random_color(rng, 0, 255)
    if kind == 0:
      draw.rectangle([x0, y0, x1, y1], fill=color)
    elif kind == 1:
      draw.ellipse([x0, y0, x1, y1], fill=color)
    elif kind == 2:
      draw.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(1, max(2, size // 24))))
    else:
      pts = rng.uniform(-0.1, 1.1, size=(int(rng.integers(3, 6)), 2)) * size
      draw.polygon([tuple(p) for p in pts], fill=color)
  return image


# ---------------------------------------------------------------------------------------------------
# Images and their annotations.


def _sample_view(rng):
  """Yaw: mostly frontal, some side and back views (left/right mirrored on the image)."""
  u = rng.random()
  if u < 0.6:
    yaw = rng.uniform(-0.9, 0.9)
  elif u < 0.8:
    yaw = rng.choice([-1, 1]) * rng.uniform(0.9, 1.6)
  else:
    yaw = math.pi + rng.uniform(-0.7, 0.7)
  angle = rng.choice([-1, 1]) * rng.uniform(1.2, 1.8) if rng.random() < 0.05 else rng.normal(0, 0.15)
  return yaw, angle


def _overlap(a, b):
  """Largest fraction of either xyxy box covered by their intersection."""
  a, b = np.asarray([a], np.float64), np.asarray([b], np.float64)
  inter = box_lib.intersection(a, b, xp=np)[0, 0]
  small = min(box_lib.area(a, xp=np)[0], box_lib.area(b, xp=np)[0])
  return float(inter / max(small, 1e-6))


def _extent(proj):
  xy = np.array([v[0] for v in proj.values()])
  return (*xy.min(0), *xy.max(0))


def _place(rng, painter, size, height, person_id, style=None, taken=None):
  """Samples and paints one figure; returns its keypoints [17, 3] before occlusion.

  taken: optional list of xyxy extents of earlier figures; the figure's position is redrawn while it
  covers one of them by more than MAX_OVERLAP, and its own extent is appended.
  """
  yaw, angle = _sample_view(rng)
  pts = body_points(sample_pose(rng))
  fit = rng.random() < FIT_FRACTION and height < 0.8 * size  # most figures fit, the rest may be cut
  half = np.array([0.3, 0.5]) * height
  for _ in range(PLACE_TRIES if taken else 1):
    if fit:
      center = rng.uniform(half, size - half)
    else:
      center = rng.uniform(0.08, 0.92, size=2) * size
    proj = project(pts, yaw, angle, height, center)
    box = _extent(proj)
    if not taken or all(_overlap(box, t) <= MAX_OVERLAP for t in taken):
      break
  if taken is not None:
    taken.append(box)
  painter.id = person_id
  draw_figure(painter, proj, height, style or sample_style(rng))
  return figure_keypoints(proj)


def _rle(mask):
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _bbox(mask, kps=None):
  """COCO [x, y, w, h] around the mask's pixels and the labelled keypoints."""
  ys, xs = np.nonzero(mask)
  x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0
  if kps is not None and (kps[:, 2] > 0).any():
    lab = kps[kps[:, 2] > 0]
    x0, y0 = min(x0, lab[:, 0].min()), min(y0, lab[:, 1].min())
    x1, y1 = max(x1, lab[:, 0].max()), max(y1, lab[:, 1].max())
  return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
          round(float(y1 - y0), 2)]


def render_image(rng, size):
  """Draws one synthetic image.

  Returns:
    (image [size, size, 3] uint8, list of COCO annotation dicts without 'id' / 'image_id').
  """
  image = draw_background(rng, size)
  ids = Image.new("L", (size, size), 0)
  painter = Painter(image, ids)
  anns = []
  has_crowd = rng.random() < 0.12
  if has_crowd:  # a bunch of small figures, annotated as one crowd region
    for _ in range(int(rng.integers(4, 10))):
      _place(rng, painter, size, rng.uniform(0.12, 0.22) * size, CROWD_ID)
  num_people = int(rng.choice(np.arange(1, 7), p=PEOPLE_PER_IMAGE))
  people, taken = [], []
  for k in range(num_people):
    small = rng.random() < SMALL_FRACTION
    height = size * (rng.uniform(*SMALL_HEIGHT) if small else rng.uniform(*HEIGHT))
    labelled = rng.random() >= (0.6 if small else 0.08)
    people.append((_place(rng, painter, size, height, k + 2, taken=taken), labelled))
  # Noise over everything, so that the figures are not flat colour either.
  pixels = np.asarray(image, np.float32) + rng.normal(0.0, 5.0, size=(size, size, 3))
  pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
  id_map = np.asarray(ids)

  if has_crowd and (id_map == CROWD_ID).any():
    mask = id_map == CROWD_ID
    anns.append({"iscrowd": 1, "segmentation": _rle(mask), "area": float(mask.sum()),
                 "bbox": _bbox(mask), "keypoints": [0] * (3 * K), "num_keypoints": 0})
  for k, (kps, labelled) in enumerate(people):
    mask = id_map == k + 2
    if not mask.any():
      continue  # completely hidden or outside the image
    kps = kps.copy()
    kps[:, :2] = np.round(kps[:, :2], 2)  # as written to the file, before any pixel look-up
    inside = (kps[:, 0] >= 0) & (kps[:, 0] < size) & (kps[:, 1] >= 0) & (kps[:, 1] < size)
    kps[~inside] = 0
    for i in np.nonzero(kps[:, 2] == 2)[0]:
      if id_map[int(kps[i, 1]), int(kps[i, 0])] != k + 2:
        kps[i, 2] = 1  # covered by a later-drawn figure
    if not labelled:
      kps[:] = 0
    kps[kps[:, 2] == 0, :2] = 0
    anns.append({"iscrowd": 0, "segmentation": _rle(mask), "area": float(mask.sum()),
                 "bbox": _bbox(mask, kps), "num_keypoints": int((kps[:, 2] > 0).sum()),
                 "keypoints": [float(v) if j % 3 < 2 else int(v)
                               for j, v in enumerate(kps.reshape(-1))]})
  return pixels, anns


def generate_split(config, split):
  """Yields (image record, [annotation records], image [S, S, 3] uint8) for every image of a split."""
  num = config.num_train if split == "train" else config.num_val
  size = config.image_size
  for i in range(num):
    rng = np.random.default_rng([config.seed, SPLIT_INDEX[split], i])
    image_id = SPLIT_INDEX[split] * 10_000_000 + i + 1
    pixels, anns = render_image(rng, size)
    record = {"id": image_id, "file_name": f"{split}_{i:06d}.png", "width": size, "height": size}
    for k, ann in enumerate(anns):
      ann.update(id=image_id * 100 + k, image_id=image_id, category_id=coco.PERSON_CATEGORY_ID)
    yield record, anns, pixels


class MpnSynthetic(coco_keypoints.CodePathMixin, tfds.core.GeneratorBasedBuilder):
  """Synthetic multi-person keypoint images with COCO-style annotations and masks."""

  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Larger, thicker figures (0.4-0.9 of the image), fewer people per image.",
                   "1.2.0": "Left/right limb tints, less background clutter.",
                   "1.3.0": "Figures rarely cover each other almost completely; 0-3 clutter shapes; "
                            "80% of figures wholly inside the image."}
  BUILDER_CONFIGS = [make_config()]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=coco_keypoints.example_features(image_format="png"))

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is drawn here
    return {split: self._generate_examples(split) for split in SPLIT_INDEX}

  def _generate_examples(self, split):
    images, annotations = [], []
    for record, anns, pixels in generate_split(self.builder_config, split):
      images.append(record)
      annotations.extend(anns)
      size = record["height"]
      person, ignore = coco_keypoints.people_masks(anns, size, size)
      yield record["id"], {
          "image": coco_keypoints.encode_png(pixels),
          "image_id": record["id"],
          "file_name": record["file_name"],
          "people": [coco_keypoints.person_features(a) for a in anns],
          "person_mask": coco_keypoints.encode_png(person[..., None]),
          "ignore_mask": coco_keypoints.encode_png(ignore[..., None]),
      }
    data = {"info": {"description": f"mpn_synthetic {self.builder_config.name} {split}"},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [coco.PERSON_CATEGORY]}
    path = os.path.join(self.data_dir, coco_keypoints.ANNOTATION_FILE_PATTERN.format(split=split))
    with open(path, "w") as f:
      json.dump(data, f)
