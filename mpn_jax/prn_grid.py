"""Geometry of the Pose Residual Network's 56x36 grid: the one owner of box <-> grid mapping.

PRN training samples, inference crops of the keypoint heatmaps and the ground-truth protocol all map
a person box to the grid through these functions, so the three cannot disagree.

Conventions:
  * boxes are [..., 4] (x1, y1, x2, y2) in image pixels, continuous coordinates (pixel i covers
    [i, i + 1)), the same convention as `mpn_jax.boxes`;
  * a box is first widened by `ratio` of its width/height on each side (the paper's PRN sees a little
    context around each detection), then split into GRID_H rows x GRID_W columns;
  * grid coordinates are continuous (gx in [0, GRID_W), gy in [0, GRID_H)); cell (row r, col c) covers
    gx in [c, c + 1), its centre is at gx = c + 0.5.

Every function is arithmetic only and takes `xp` (numpy by default, or jax.numpy), so the numpy input
pipeline and jitted inference run the same code.
"""

import numpy as np

GRID_H = 56
GRID_W = 36
DEFAULT_WIDEN = 0.21


def widen_boxes(boxes, ratio=DEFAULT_WIDEN, xp=np):
  """Widens [..., 4] xyxy boxes by `ratio` x their width (height) on the left and right (top, bottom)."""
  boxes = xp.asarray(boxes, dtype=xp.float32)
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return xp.stack([boxes[..., 0] - ratio * w, boxes[..., 1] - ratio * h,
                   boxes[..., 2] + ratio * w, boxes[..., 3] + ratio * h], axis=-1)


def _extent(boxes, xp):
  # Degenerate (zero-size) boxes map everything to the grid's first cell instead of dividing by 0.
  w = xp.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
  h = xp.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
  return w, h


def points_to_grid(points, boxes, xp=np):
  """Image points [..., 2] (x, y) to continuous grid coordinates [..., 2] (gx, gy) of already widened
  boxes [..., 4] (broadcast against points' leading dims)."""
  points = xp.asarray(points, dtype=xp.float32)
  boxes = xp.asarray(boxes, dtype=xp.float32)
  w, h = _extent(boxes, xp)
  gx = (points[..., 0] - boxes[..., 0]) / w * GRID_W
  gy = (points[..., 1] - boxes[..., 1]) / h * GRID_H
  return xp.stack([gx, gy], axis=-1)


def grid_to_points(grid_xy, boxes, xp=np):
  """Inverse of `points_to_grid`: grid coordinates [..., 2] to image points [..., 2]."""
  grid_xy = xp.asarray(grid_xy, dtype=xp.float32)
  boxes = xp.asarray(boxes, dtype=xp.float32)
  w, h = _extent(boxes, xp)
  x = boxes[..., 0] + grid_xy[..., 0] / GRID_W * w
  y = boxes[..., 1] + grid_xy[..., 1] / GRID_H * h
  return xp.stack([x, y], axis=-1)


def inside_grid(grid_xy, xp=np):
  """[..., 2] grid coordinates -> [...] bool, True where the point falls inside the grid."""
  return ((grid_xy[..., 0] >= 0) & (grid_xy[..., 0] < GRID_W) &
          (grid_xy[..., 1] >= 0) & (grid_xy[..., 1] < GRID_H))


def cell_centers(boxes, xp=np):
  """Image coordinates of every grid cell centre: boxes [N, 4] -> [N, GRID_H, GRID_W, 2] (x, y).

  Sampling a heatmap at these points (bilinear) is the crop-and-resize the PRN sees at inference.
  """
  boxes = xp.asarray(boxes, dtype=xp.float32)
  gx = xp.arange(GRID_W, dtype=xp.float32) + 0.5
  gy = xp.arange(GRID_H, dtype=xp.float32) + 0.5
  grid = xp.stack(xp.meshgrid(gx, gy), axis=-1)  # [GRID_H, GRID_W, 2] (gx, gy)
  return grid_to_points(grid[None], boxes[:, None, None, :], xp=xp)


def axis_profiles(grid_xy, sigma=1.0, xp=np):
  """The separable factors of a point's Gaussian on the grid.

  Args:
    grid_xy: [..., 2] float32 continuous grid coordinates.
    sigma: Gaussian standard deviation in grid cells; 0 gives a single 1 in the point's cell.
  Returns:
    (gx [..., GRID_W], gy [..., GRID_H]) float32 with gy[..., r] * gx[..., c] the value at cell (r, c).
    Evaluating exp on GRID_W + GRID_H cells instead of GRID_W * GRID_H is what keeps rasterising
    cheap in the inference pipeline.
  """
  grid_xy = xp.asarray(grid_xy, dtype=xp.float32)
  dx = (xp.arange(GRID_W, dtype=xp.float32) + 0.5) - grid_xy[..., 0:1]
  dy = (xp.arange(GRID_H, dtype=xp.float32) + 0.5) - grid_xy[..., 1:2]
  if sigma > 0:
    return xp.exp(-dx * dx / (2.0 * sigma * sigma)), xp.exp(-dy * dy / (2.0 * sigma * sigma))
  return (xp.abs(dx) <= 0.5).astype(xp.float32), (xp.abs(dy) <= 0.5).astype(xp.float32)


def rasterize(grid_xy, valid, sigma=1.0, xp=np):
  """Draws points as Gaussians on the grid, one channel per keypoint type.

  Args:
    grid_xy: [P, K, 2] float32 continuous grid coordinates of P people's K keypoints.
    valid: [P, K] bool, which points to draw (points outside the grid draw nothing).
    sigma: Gaussian standard deviation in grid cells; 0 draws a single 1 in the point's cell.
  Returns:
    [GRID_H, GRID_W, K] float32 in [0, 1], the maximum over people.
  """
  grid_xy = xp.asarray(grid_xy, dtype=xp.float32)
  valid = xp.asarray(valid) & inside_grid(grid_xy, xp)
  if grid_xy.shape[0] == 0:
    return xp.zeros((GRID_H, GRID_W, grid_xy.shape[1]), xp.float32)
  gx, gy = axis_profiles(grid_xy, sigma, xp)  # [P, K, W], [P, K, H]
  gy = gy * valid[..., None].astype(xp.float32)
  g = xp.max(gy[..., :, None] * gx[..., None, :], axis=0)  # [K, H, W]
  return xp.transpose(g, (1, 2, 0))
