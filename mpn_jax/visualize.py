"""Pictures: predicted or annotated people drawn on images, and training targets over the input.

Everything here is numpy + PIL on the host. Images are [H, W, 3] uint8 RGB; keypoints [N, 17, 3]
(x, y, score-or-visibility) and boxes [N, 4] (x1, y1, x2, y2) are in the pixel coordinates of the
image they are drawn on (continuous convention: pixel i covers [i, i + 1), so a point at x = 10.5
is the centre of pixel 10).
"""

import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mpn_jax import coco
from mpn_jax import files


def person_colors(n):
  """n well separated, saturated RGB colours (golden-ratio hue steps), as a list of int 3-tuples."""
  out = []
  for i in range(n):
    r, g, b = colorsys.hsv_to_rgb((0.03 + 0.618034 * i) % 1.0, 0.9, 1.0)
    out.append((int(255 * r), int(255 * g), int(255 * b)))
  return out


PARTS = ("boxes", "keypoints", "skeleton", "scores")


def parse_parts(text):
  """The parts to draw from a comma-separated list (e.g. 'boxes,skeleton'; 'all' = PARTS; ''
  draws nothing): a tuple in PARTS order. Raises ValueError naming an unknown part."""
  names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
  if names == ["all"]:
    return PARTS
  unknown = [n for n in names if n not in PARTS]
  if unknown:
    raise ValueError(f"unknown part(s) {', '.join(unknown)} to draw: choose from "
                     f"{','.join(PARTS)} (or all)")
  return tuple(p for p in PARTS if p in names)


def _line_width(image_hw):
  # Thin enough for small people, visible on large images.
  return max(2, int(round(max(image_hw) / 250)))


def _font_size(image_hw):
  # 32 px on a 1920 x 1080 frame, 11 px on a 640 x 480 image; 10 px at least.
  return max(10, int(round(max(image_hw) / 60)))


def _font(size):
  """PIL's built-in font at `size` pixels (Pillow >= 10.1 scales it), else its fixed bitmap font."""
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: no size
    return ImageFont.load_default()


def draw_people(image, keypoints=None, boxes=None, scores=None, threshold=0.0, line_width=None,
                colors=None, draw_labels=True, parts=PARTS, font_size=None):
  """Draws skeletons, keypoints, boxes and scores, one colour per person.

  Line widths, keypoint radius and label font are scaled to the image (`_line_width`,
  `_font_size`), so that a picture drawn on a 4K frame reads like one drawn on a thumbnail.

  Args:
    image: [H, W, 3] uint8 RGB.
    keypoints: [N, 17, 3] float (x, y, s); a keypoint is drawn when s > threshold (for COCO
      annotations s is the visibility flag, so threshold=0 draws every labelled keypoint), a limb of
      coco.SKELETON when both its ends are drawn. None draws no keypoints.
    boxes: [N, 4] float xyxy or None.
    scores: [N] float person scores, written at the top-left of each box (or of the skeleton).
    threshold: keypoint score threshold.
    line_width: limb width in pixels (default: from the image size).
    colors: optional list of N RGB tuples (default person_colors(N)).
    draw_labels: write the scores as text.
    parts: what to draw, a subset of PARTS ('boxes', 'keypoints' (the dots), 'skeleton' (the
      limbs), 'scores'); e.g. `parse_parts('boxes,skeleton')`.
    font_size: label font size in pixels (default: from the image size).
  Returns:
    [H, W, 3] uint8 RGB, a new array (the input is not modified).
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"draw_people expects an [H, W, 3] uint8 RGB image, got {image.shape} "
                     f"{image.dtype}")
  if keypoints is not None and boxes is not None and len(keypoints) != len(boxes):
    raise ValueError(f"draw_people: {len(keypoints)} keypoint sets but {len(boxes)} boxes")
  unknown = set(parts) - set(PARTS)
  if unknown:
    raise ValueError(f"draw_people: unknown parts {sorted(unknown)}; choose from {PARTS}")
  n = len(keypoints) if keypoints is not None else (0 if boxes is None else len(boxes))
  colors = colors or person_colors(n)
  width = line_width or _line_width(image.shape[:2])
  radius = width + 1
  font = _font(font_size or _font_size(image.shape[:2]))
  canvas = Image.fromarray(image.copy())
  draw = ImageDraw.Draw(canvas)
  for i in range(n):
    color = colors[i]
    if boxes is not None and "boxes" in parts:
      x1, y1, x2, y2 = (float(v) for v in boxes[i])
      draw.rectangle([x1, y1, x2, y2], outline=color, width=max(1, width // 2))
    if keypoints is not None:
      kp = np.asarray(keypoints[i], np.float32)
      shown = kp[:, 2] > threshold
      if "skeleton" in parts:
        for a, b in coco.SKELETON:
          if shown[a] and shown[b]:
            draw.line([tuple(kp[a, :2]), tuple(kp[b, :2])], fill=color, width=width)
      if "keypoints" in parts:
        for k in np.flatnonzero(shown):
          x, y = kp[k, :2]
          draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color,
                       outline=(255, 255, 255))
    if draw_labels and scores is not None and "scores" in parts:
      text = f"{float(scores[i]):.2f}"
      left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
      pad = max(1, width // 2)
      anchor = _label_anchor(i, keypoints, boxes, threshold, bottom - top + 2 * pad)
      if anchor is not None:
        tx, ty = anchor
        draw.rectangle([tx, ty, tx + right - left + 2 * pad, ty + bottom - top + 2 * pad],
                       fill=color)
        draw.text((tx + pad - left, ty + pad - top), text, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def _label_anchor(i, keypoints, boxes, threshold, height=12.0):
  """Top-left corner of person i's label, `height` pixels tall: just above its box (or the top
  of its shown keypoints), or inside at the top where there is no room above."""
  if boxes is not None:
    return float(boxes[i][0]), max(0.0, float(boxes[i][1]) - height)
  if keypoints is None:
    return None
  kp = np.asarray(keypoints[i], np.float32)
  shown = kp[:, 2] > threshold
  if not shown.any():
    return None
  return float(kp[shown, 0].min()), max(0.0, float(kp[shown, 1].min()) - height)


def heatmap_colors(values):
  """Maps values [...] in [0, 1] to RGB [..., 3] float in [0, 1] (black-red-yellow-white ramp)."""
  v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)
  return np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)


def overlay_heatmaps(image, heatmaps, alpha=0.6):
  """Blends the maximum over channels of stride-s heatmaps onto the image they were computed from.

  Args:
    image: [H, W, 3] uint8 RGB, the network input (e.g. `denormalize_image` of a batch image).
    heatmaps: [h, w, K] float, values expected in [0, 1] (clipped); the map covers the whole image
      (h = H / stride), and is resized bilinearly to H x W.
    alpha: opacity of the heatmap where it is 1 (it fades to 0 with the value).
  Returns:
    [H, W, 3] uint8 RGB.
  """
  image = np.asarray(image)
  heat = np.max(np.asarray(heatmaps, np.float32), axis=-1)
  heat = np.clip(heat, 0.0, 1.0)
  h, w = image.shape[:2]
  heat = np.asarray(Image.fromarray(heat).resize((w, h), Image.BILINEAR), np.float32)
  heat = np.clip(heat, 0.0, 1.0)
  a = (alpha * heat)[..., None]
  out = (1.0 - a) * image.astype(np.float32) + a * 255.0 * heatmap_colors(heat)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def denormalize_image(image):
  """Inverse of coco.normalize_image: [..., 3] normalised float -> uint8 RGB (padding -> mean)."""
  rgb = np.asarray(image, np.float32) * coco.IMAGENET_STD_RGB + coco.IMAGENET_MEAN_RGB
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def draw_training_targets(example, alpha=0.6):
  """Pictures one branches training example: input, target heatmaps, boxes and keypoints.

  Args:
    example: one element of a `pipeline.make_train_iterator` batch (numpy): 'image' [S, S, 3]
      normalised float32, 'heatmaps' [S/4, S/4, 17]; optional 'weights' [S/4, S/4, 1] (regions
      with weight 0 are darkened), 'boxes' [M, 4] xyxy input pixels with 'box_labels' [M] (1
      person drawn white, -1 crowd drawn grey, 0 padding not drawn), 'keypoints' [P, 17, 3] input
      pixels (v > 0 labelled, one colour per person). The person mask can be pictured on its own
      with `overlay_heatmaps(denormalize_image(image), mask)`.
    alpha: heatmap opacity.
  Returns:
    [S, S, 3] uint8 RGB.
  """
  img = denormalize_image(example["image"])
  if "weights" in example:
    wmap = np.asarray(example["weights"], np.float32)[..., 0]
    wmap = np.asarray(Image.fromarray(wmap).resize(img.shape[1::-1], Image.NEAREST))
    img = np.where((wmap > 0)[..., None], img, (img // 3).astype(np.uint8))
  img = overlay_heatmaps(img, example["heatmaps"], alpha=alpha)
  if "boxes" in example:
    boxes = np.asarray(example["boxes"], np.float32)
    labels = np.asarray(example.get("box_labels", np.ones(len(boxes), np.int32)))
    for label, color in ((1, (255, 255, 255)), (-1, (128, 128, 128))):
      sel = boxes[labels == label]
      img = draw_people(img, boxes=sel, colors=[color] * len(sel))
  if "keypoints" in example:
    kps = np.asarray(example["keypoints"], np.float32)
    img = draw_people(img, keypoints=kps[(kps[..., 2] > 0).any(-1)])
  return img


def save_png(image, path):
  """Writes [H, W, 3] uint8 RGB as a PNG, atomically (see `files.replace_atomically`), creating the
  folder; returns the path."""
  picture = Image.fromarray(np.asarray(image, np.uint8))
  return files.replace_atomically(path, lambda f: picture.save(f, format="PNG"))
