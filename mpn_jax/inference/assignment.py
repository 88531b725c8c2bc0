"""Keypoint-to-person assignment from Pose Residual Network outputs.

The same functions serve the ground-truth protocol (`mpn_jax.evaluation.prn_protocol`) and the
image pipeline (`mpn_jax.inference.pipeline`), so the two cannot assign differently:

  1. `candidate_scores`: each candidate keypoint (a heatmap peak, or a labelled keypoint in the GT
     protocol) gets, for each box, the PRN probability mass in a window around the candidate's grid
     cell; candidates outside the widened box score 0.
  2. `assign`: per keypoint type, boxes pick candidates from those scores, by one of METHODS.
  3. `gather_keypoints` / `instance_scores`: the assigned keypoints and a score per person.

All of it is jnp and jittable (window, method and mode are static), except the 'hungarian' methods,
which solve on the host with scipy (through jax.pure_callback when traced).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from mpn_jax import prn_grid

# greedy: each box independently takes its best candidate per type (the paper's rule; a candidate
#   may go to several boxes).
# mutual: a box takes its best candidate among those for which it is the best box (the official
#   code's conflict rule, minus its sort quirk); one-to-one up to ties.
# global_greedy: one-to-one, repeatedly the highest-scoring remaining (box, candidate) pair.
# hungarian: one-to-one, maximal total score (scipy.optimize.linear_sum_assignment).
# hungarian_log: one-to-one, maximal product of scores (total log score): the most likely
#   assignment when the scores are the PRN's probabilities; one unlikely pair costs more than under
#   'hungarian' (measured on COCO prn_val: +0.002-0.014 AP on 8 of 8 checkpoints, README).
METHODS = ("greedy", "mutual", "global_greedy", "hungarian", "hungarian_log")
# Where the scores come from: 'prn' (`candidate_scores`) or 'center' (`center_scores`, no PRN).
SCORERS = ("prn", "center")


def window_sums(probs, window):
  """Sum of probs over a window x window neighbourhood of each cell, clipped at the grid's border.

  probs [N, H, W, K] -> [N, H, W, K] (same dtype); window is an odd int >= 1 (1: the cell itself).
  """
  if window < 1 or window % 2 == 0:
    raise ValueError(f"assignment window must be an odd integer >= 1, got {window}")
  _, h, w, _ = probs.shape
  r = window // 2
  sat = jnp.cumsum(jnp.cumsum(probs, axis=1), axis=2)
  sat = jnp.pad(sat, ((0, 0), (1, 0), (1, 0), (0, 0)))  # sat[:, i, j] = sum of rows < i, cols < j
  lo_r, hi_r = np.clip(np.arange(h) - r, 0, h), np.clip(np.arange(h) + r + 1, 0, h)
  lo_c, hi_c = np.clip(np.arange(w) - r, 0, w), np.clip(np.arange(w) + r + 1, 0, w)
  def at(rows, cols):
    return sat[:, rows][:, :, cols]
  return at(hi_r, hi_c) - at(lo_r, hi_c) - at(hi_r, lo_c) + at(lo_r, lo_c)


def candidate_scores(prn_probs, cand_xy, cand_valid, boxes, window=1):
  """Scores every candidate for every box from the PRN output.

  Args:
    prn_probs: [N, 56, 36, K] float32 PRN probabilities (each channel a distribution over cells).
    cand_xy: [K, C, 2] float32 candidate positions (x, y) in image coordinates.
    cand_valid: [K, C] bool.
    boxes: [N, 4] float32 widened boxes (the ones the PRN input was built on), xyxy image coords.
    window: odd int, side of the window (grid cells) around the candidate's cell that is summed.
  Returns:
    [N, K, C] float32 scores; 0 for invalid candidates and candidates outside the widened box.
  """
  prn_probs = jnp.asarray(prn_probs, jnp.float32)
  n, h, w, k = prn_probs.shape
  grid = prn_grid.points_to_grid(jnp.asarray(cand_xy)[None], jnp.asarray(boxes)[:, None, None, :],
                                 xp=jnp)  # [N, K, C, 2]
  inside = prn_grid.inside_grid(grid, xp=jnp) & jnp.asarray(cand_valid, bool)[None]
  col = jnp.clip(jnp.floor(grid[..., 0]).astype(jnp.int32), 0, w - 1)
  row = jnp.clip(jnp.floor(grid[..., 1]).astype(jnp.int32), 0, h - 1)
  sums = window_sums(prn_probs, window) if window > 1 else prn_probs
  flat = jnp.transpose(sums, (0, 3, 1, 2)).reshape(n, k, h * w)
  vals = jnp.take_along_axis(flat, row * w + col, axis=2)  # [N, K, C]
  return jnp.where(inside, vals, 0.0)


def center_scores(cand_xy, cand_valid, boxes):
  """PRN-free scores (the nearest-centre baseline): higher nearer the box centre.

  Args:
    cand_xy: [K, C, 2] float32 candidate positions (x, y) in image coordinates.
    cand_valid: [K, C] bool.
    boxes: [N, 4] float32 widened boxes, xyxy image coords.
  Returns:
    [N, K, C] float32 1 / (1 + d), d the distance to the box centre in box-normalised coordinates
    (the box is the unit square, so tall and wide boxes are treated alike); 0 for invalid
    candidates and candidates outside the box.
  """
  grid = prn_grid.points_to_grid(jnp.asarray(cand_xy)[None], jnp.asarray(boxes)[:, None, None, :],
                                 xp=jnp)  # [N, K, C, 2]
  inside = prn_grid.inside_grid(grid, xp=jnp) & jnp.asarray(cand_valid, bool)[None]
  d = jnp.hypot(grid[..., 0] / prn_grid.GRID_W - 0.5, grid[..., 1] / prn_grid.GRID_H - 0.5)
  return jnp.where(inside, 1.0 / (1.0 + d), 0.0)


def _masked(scores, cand_valid, box_valid, min_score):
  valid = (jnp.asarray(cand_valid, bool)[None] & jnp.asarray(box_valid, bool)[:, None, None]
           & (scores > min_score))
  return valid, jnp.where(valid, scores, -jnp.inf)


def _best(valid, masked):
  has = valid.any(axis=-1)
  idx = jnp.where(has, jnp.argmax(masked, axis=-1), -1).astype(jnp.int32)
  return idx, jnp.where(has, jnp.max(masked, axis=-1), 0.0)


def _global_greedy_one(masked):
  """[N, C] masked scores of one type -> [N] int32 candidate per box (-1 none)."""
  n, c = masked.shape
  def body(_, carry):
    m, idx = carry
    flat = jnp.argmax(m)
    b, j = flat // c, flat % c
    ok = jnp.isfinite(m[b, j])
    idx = jnp.where(ok, idx.at[b].set(j.astype(jnp.int32)), idx)
    m = jnp.where(ok, m.at[b, :].set(-jnp.inf).at[:, j].set(-jnp.inf), m)
    return m, idx
  _, idx = jax.lax.fori_loop(0, min(n, c), body, (masked, jnp.full((n,), -1, jnp.int32)))
  return idx


def _hungarian_host(scores, valid, log=False):
  """numpy [N, K, C] scores, valid -> [N, K] int32; one-to-one per type, maximal total score (of
  log scores when `log`)."""
  scores, valid = np.asarray(scores, np.float64), np.asarray(valid, bool)
  n, k, _ = scores.shape
  idx = np.full((n, k), -1, np.int32)
  for t in range(k):
    if not valid[:, t].any():
      continue
    w = scores[:, t]
    if log:
      # Log scores shifted so that every valid pair weighs >= 1: as with the raw scores, a
      # matching with more pairs always wins, then the one with the largest product.
      w = np.log(np.maximum(w, 1e-300))
      w = w - w[valid[:, t]].min() + 1.0
    # Non-edges weigh 0: with positive edge weights the optimum never needs them, so dropping the
    # zero pairs afterwards leaves a maximum-weight matching over the valid pairs.
    w = np.where(valid[:, t], w, 0.0)
    rows, cols = linear_sum_assignment(w, maximize=True)
    keep = valid[rows, t, cols]
    idx[rows[keep], t] = cols[keep]
  return idx


def assign(scores, cand_valid, box_valid, method="greedy", min_score=0.0):
  """Assigns, per keypoint type, candidates to boxes.

  Args:
    scores: [N, K, C] float32 from `candidate_scores` (> min_score to be assignable).
    cand_valid: [K, C] bool.
    box_valid: [N] bool (padding boxes get nothing and do not compete).
    method: one of METHODS.
    min_score: pairs scoring <= this are never assigned (0: outside the box).
  Returns:
    (idx [N, K] int32 candidate index or -1, score [N, K] float32 its score, 0 where -1).
  """
  scores = jnp.asarray(scores, jnp.float32)
  valid, masked = _masked(scores, cand_valid, box_valid, min_score)
  if method == "greedy":
    return _best(valid, masked)
  if method == "mutual":
    n = scores.shape[0]
    best_box = jnp.argmax(masked, axis=0)  # [K, C]
    valid = valid & (best_box[None] == jnp.arange(n)[:, None, None])
    return _best(valid, jnp.where(valid, masked, -jnp.inf))
  if method == "global_greedy":
    idx = jax.vmap(_global_greedy_one, in_axes=1, out_axes=1)(masked)
  elif method in ("hungarian", "hungarian_log"):
    shape = jax.ShapeDtypeStruct(scores.shape[:2], jnp.int32)
    host = functools.partial(_hungarian_host, log=method == "hungarian_log")
    if isinstance(scores, jax.core.Tracer) or isinstance(valid, jax.core.Tracer):
      idx = jax.pure_callback(host, shape, scores, valid, vmap_method="sequential")
    else:
      idx = jnp.asarray(host(scores, valid))
  else:
    raise ValueError(f"unknown assignment method {method!r}: use one of {METHODS} "
                     "(config field eval.assign_method)")
  got = jnp.take_along_axis(scores, jnp.maximum(idx, 0)[..., None], axis=2)[..., 0]
  return idx, jnp.where(idx >= 0, got, 0.0)


def gather_keypoints(cand_xy, cand_scores, idx):
  """Assigned keypoints: cand_xy [K, C, 2], cand_scores [K, C], idx [N, K] -> [N, K, 3] (x, y,
  candidate score), zeros where idx is -1."""
  cand_xy, cand_scores = jnp.asarray(cand_xy, jnp.float32), jnp.asarray(cand_scores, jnp.float32)
  k = cand_xy.shape[0]
  safe = jnp.maximum(idx, 0)
  types = jnp.arange(k)[None, :]
  xy = cand_xy[types, safe]  # [N, K, 2]
  s = cand_scores[types, safe]
  out = jnp.concatenate([xy, s[..., None]], axis=-1)
  return jnp.where((idx >= 0)[..., None], out, 0.0)


SCORE_MODES = ("keypoints", "assignment", "box", "decisive")


def assignment_shares(scores, idx, box_valid):
  """How decisively each box won its keypoints.

  Args:
    scores: [N, K, C] float32 pair scores (`candidate_scores`).
    idx: [N, K] int32 assigned candidate or -1 (`assign`).
    box_valid: [N] bool (padding boxes do not compete).
  Returns:
    [N, K] float32: the box's score for its candidate over the sum of every valid box's score for
    that candidate (1: no other box wanted it; 0.5: another wanted it as much); 0 where idx is -1.
  """
  scores = jnp.asarray(scores, jnp.float32)
  valid = jnp.asarray(box_valid, bool)[:, None, None]
  total = jnp.where(valid, scores, 0.0).sum(axis=0)  # [K, C]
  safe = jnp.maximum(idx, 0)
  mine = jnp.take_along_axis(scores, safe[..., None], axis=2)[..., 0]
  theirs = jnp.take_along_axis(total, safe.T, axis=1).T  # [N, K]
  return jnp.where(idx >= 0, mine / jnp.maximum(theirs, 1e-30), 0.0)


def instance_scores(keypoint_scores, assign_scores, box_scores=None, mode="keypoints",
                    shares=None):
  """One score per person.

  Args:
    keypoint_scores: [N, K] float32 scores of the assigned candidates (heatmap peak values; 1 in the
      GT protocol), 0 where nothing was assigned.
    assign_scores: [N, K] float32 PRN scores of the assignments (from `assign`).
    box_scores: [N] float32 detection scores, for mode 'box'.
    mode: 'keypoints' (the official rule: sum of keypoint scores / K), 'assignment' (sum of keypoint
      x PRN scores / K), 'box' (box score x the 'keypoints' score), 'decisive' (sum of keypoint
      score x share^2 / K, `assignment_shares`: a person whose keypoints other boxes wanted as
      much, as where two people overlap and the assignment may mix them, ranks lower).
    shares: [N, K] float32 `assignment_shares`, for mode 'decisive'.
  Returns:
    [N] float32.
  """
  kp = jnp.asarray(keypoint_scores, jnp.float32)
  k = kp.shape[-1]
  if mode == "keypoints":
    return kp.sum(-1) / k
  if mode == "assignment":
    return (kp * jnp.asarray(assign_scores, jnp.float32)).sum(-1) / k
  if mode == "box":
    if box_scores is None:
      raise ValueError("instance score mode 'box' needs box_scores")
    return jnp.asarray(box_scores, jnp.float32) * kp.sum(-1) / k
  if mode == "decisive":
    if shares is None:
      raise ValueError("instance score mode 'decisive' needs shares (assignment_shares)")
    return (kp * jnp.square(jnp.asarray(shares, jnp.float32))).sum(-1) / k
  raise ValueError(f"unknown instance score mode {mode!r}: use one of {SCORE_MODES}")
