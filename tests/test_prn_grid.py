"""The PRN grid geometry: box <-> grid mapping, widening, rasterising (numpy and jnp alike)."""

import jax.numpy as jnp
import numpy as np
import pytest

from mpn_jax import prn_grid


def test_widen_boxes_by_ratio_on_each_side():
  wide = prn_grid.widen_boxes(np.array([[10.0, 20.0, 110.0, 220.0]]), ratio=0.21)
  np.testing.assert_allclose(wide, [[10 - 21, 20 - 42, 110 + 21, 220 + 42]], rtol=1e-6)


@pytest.mark.parametrize("xp", [np, jnp])
def test_points_grid_round_trip_and_corners(xp):
  box = np.array([-5.0, 3.0, 31.0, 115.0], np.float32)  # 36 x 112 pixels
  pts = np.random.RandomState(0).uniform(-20, 140, size=(50, 2)).astype(np.float32)
  grid = prn_grid.points_to_grid(pts, box, xp=xp)
  np.testing.assert_allclose(np.asarray(prn_grid.grid_to_points(grid, box, xp=xp)), pts, atol=1e-4)
  # Box corners land on the grid's corners: one pixel per column, two per row here.
  corners = prn_grid.points_to_grid(np.array([[-5.0, 3.0], [31.0, 115.0], [-4.0, 5.0]]), box, xp=xp)
  np.testing.assert_allclose(np.asarray(corners), [[0, 0], [36, 56], [1, 1]], atol=1e-5)


def test_cell_centers_are_the_grid_cell_centres():
  box = np.array([[0.0, 0.0, 36.0, 56.0], [10.0, 20.0, 82.0, 132.0]], np.float32)
  c = prn_grid.cell_centers(box)
  assert c.shape == (2, prn_grid.GRID_H, prn_grid.GRID_W, 2)
  np.testing.assert_allclose(c[0, 3, 5], [5.5, 3.5])  # one pixel per cell
  np.testing.assert_allclose(c[1, 3, 5], [10 + 2 * 5.5, 20 + 2 * 3.5])  # two pixels per cell


@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.5])
def test_rasterize_matches_a_direct_gaussian_and_jnp(sigma):
  rng = np.random.RandomState(1)
  grid = rng.uniform(-3, 40, size=(3, 4, 2)).astype(np.float32)
  grid[0, 0] = [10.2, 20.7]
  valid = rng.rand(3, 4) > 0.3
  valid[0, 0] = True
  got = prn_grid.rasterize(grid, valid, sigma=sigma)
  want = np.zeros((prn_grid.GRID_H, prn_grid.GRID_W, 4), np.float32)
  for p in range(3):
    for k in range(4):
      gx, gy = grid[p, k]
      if not valid[p, k] or not (0 <= gx < prn_grid.GRID_W and 0 <= gy < prn_grid.GRID_H):
        continue
      for r in range(prn_grid.GRID_H):
        for c in range(prn_grid.GRID_W):
          d2 = (c + 0.5 - gx) ** 2 + (r + 0.5 - gy) ** 2
          if sigma > 0:
            v = np.exp(-d2 / (2 * sigma * sigma))
          else:
            v = float(abs(c + 0.5 - gx) <= 0.5 and abs(r + 0.5 - gy) <= 0.5)
          want[r, c, k] = max(want[r, c, k], v)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(prn_grid.rasterize(jnp.asarray(grid), jnp.asarray(valid),
                                                           sigma=sigma, xp=jnp)), want, atol=1e-6)
  assert np.unravel_index(np.argmax(got[..., 0]), got.shape[:2]) == (20, 10)


def test_rasterize_no_people_is_empty():
  out = prn_grid.rasterize(np.zeros((0, 17, 2), np.float32), np.zeros((0, 17), bool))
  assert out.shape == (56, 36, 17) and not out.any()
