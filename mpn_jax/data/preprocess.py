"""Image preprocessing and the heatmap-grid convention, shared by the input pipeline and inference.

Coordinate convention (the whole project): image coordinates are continuous, pixel i covers
[i, i + 1), so a horizontal flip of an image of width W maps x to W - x (and a box's x1 to W - x2).
A stride-s output map's cell j covers input [s*j, s*(j+1)) and its centre is the input point
s * (j + 0.5); a keypoint at input x therefore sits at continuous heatmap coordinate x / s.
"""

import numpy as np
from PIL import Image

from mpn_jax import coco

# Input pixels per cell of the keypoint heatmaps and person mask (the keypoint subnet's output
# stride): the one definition, for the training targets and for inference.
HEATMAP_STRIDE = 4


def letterbox_scale(height, width, size):
  """Scale that fits an image of (height, width) inside a size x size square, longest side = size."""
  return float(size) / float(max(height, width))


def letterbox(image, size):
  """Resizes the longest side to `size` and pads bottom/right with zeros (after normalisation).

  Args:
    image: [H, W, 3] uint8 RGB.
    size: output side length S.
  Returns:
    ([S, S, 3] float32 ImageNet-normalised image, scale) where input = original * scale.
  """
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an [H, W, 3] RGB image, got shape {image.shape}")
  h, w = image.shape[:2]
  scale = letterbox_scale(h, w, size)
  nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
  resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
  out = np.zeros((size, size, 3), np.float32)
  out[:nh, :nw] = coco.normalize_image(resized)
  return out, scale


def load_image(path):
  """Reads an image file as [H, W, 3] uint8 RGB; raises ValueError naming the file if unreadable."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f"cannot read image {path}: {e}") from e


def pad_axis(x, size, axis=0, fill=None):
  """x (numpy) padded along `axis` to `size` entries with zeros, or with copies of `fill` (an
  array broadcastable to one entry's shape); unchanged when it already has `size` or more."""
  x = np.asarray(x)
  pad = size - x.shape[axis]
  if pad <= 0:
    return x
  shape = list(x.shape)
  shape[axis] = pad
  if fill is None:
    extra = np.zeros(shape, x.dtype)
  else:
    entry = np.expand_dims(np.asarray(fill), axis)
    extra = np.broadcast_to(entry, shape).astype(x.dtype)
  return np.concatenate([x, extra], axis=axis)
