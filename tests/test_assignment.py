"""Keypoint assignment: window scores, the assignment methods against hand cases and scipy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from mpn_jax import prn_grid
from mpn_jax.inference import assignment


@pytest.mark.parametrize("window", [1, 3, 5, 15])
def test_window_sums_match_brute_force(window):
  rng = np.random.default_rng(0)
  probs = rng.random((2, 9, 7, 3)).astype(np.float32)
  got = np.asarray(assignment.window_sums(jnp.asarray(probs), window))
  r = window // 2
  want = np.zeros_like(probs)
  for i in range(9):
    for j in range(7):
      want[:, i, j] = probs[:, max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].sum((1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_window_must_be_odd():
  with pytest.raises(ValueError, match="odd"):
    assignment.window_sums(jnp.zeros((1, 4, 4, 1)), 2)


def test_candidate_scores_hand_case():
  # One widened box 0..36 x 0..56 px: grid cell (r, c) covers x in [c, c+1), y in [r, r+1).
  box = np.array([[0, 0, 36, 56]], np.float32)
  probs = np.zeros((1, 56, 36, 2), np.float32)
  probs[0, 10, 20, 0] = 0.7
  probs[0, 11, 20, 0] = 0.2
  probs[0, 30, 5, 1] = 1.0
  cand_xy = np.array([[[20.5, 10.5], [20.9, 11.2], [40.0, 10.0]],   # type 0: on, next, outside
                      [[5.5, 30.5], [5.5, 30.5], [0.0, 0.0]]], np.float32)  # type 1
  cand_valid = np.array([[True, True, True], [True, False, False]])
  s1 = np.asarray(assignment.candidate_scores(probs, cand_xy, cand_valid, box, window=1))
  np.testing.assert_allclose(s1[0], [[0.7, 0.2, 0.0], [1.0, 0.0, 0.0]], atol=1e-6)
  s3 = np.asarray(assignment.candidate_scores(probs, cand_xy, cand_valid, box, window=3))
  np.testing.assert_allclose(s3[0], [[0.9, 0.9, 0.0], [1.0, 0.0, 0.0]], atol=1e-6)


def test_candidate_scores_use_each_boxs_grid():
  boxes = prn_grid.widen_boxes(np.array([[0, 0, 36, 56], [100, 0, 136, 56]], np.float32))
  probs = np.full((2, 56, 36, 1), 1.0 / (56 * 36), np.float32)
  cand_xy = np.array([[[10, 10], [110, 10]]], np.float32)
  s = np.asarray(assignment.candidate_scores(probs, cand_xy, np.ones((1, 2), bool), boxes))
  assert s[0, 0, 0] > 0 and s[0, 0, 1] == 0 and s[1, 0, 0] == 0 and s[1, 0, 1] > 0


# Two boxes both prefer candidate 0; box 1 is the better one for it.
CONTESTED = np.array([[[0.5, 0.4, 0.0]],
                      [[0.6, 0.1, 0.0]]], np.float32)  # [N=2, K=1, C=3]
VALID = np.array([[True, True, False]])


@pytest.mark.parametrize("method,want_idx", [
    ("greedy", [[0], [0]]),          # independent: both take candidate 0
    ("mutual", [[1], [0]]),          # box 0 is not candidate 0's best box: takes its next, 1
    ("global_greedy", [[1], [0]]),   # 0.6 first, then box 0 takes 0.4
    ("hungarian", [[1], [0]]),       # 0.4 + 0.6 = 1.0 > 0.5 + 0.1
])
def test_methods_hand_case(method, want_idx):
  idx, score = assignment.assign(CONTESTED, VALID, np.ones(2, bool), method)
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(score, np.take_along_axis(CONTESTED[..., 0:3], np.array(want_idx)[..., None], 2)[..., 0])


def test_hungarian_beats_global_greedy_when_it_should():
  scores = np.array([[[0.9, 0.8]], [[0.7, 0.0]]], np.float32)  # greedy 0.9 alone; optimal 0.8 + 0.7
  valid = np.ones((1, 2), bool)
  g, _ = assignment.assign(scores, valid, np.ones(2, bool), "global_greedy")
  h, _ = assignment.assign(scores, valid, np.ones(2, bool), "hungarian")
  np.testing.assert_array_equal(g, [[0], [-1]])
  np.testing.assert_array_equal(h, [[1], [0]])


def test_invalid_boxes_and_candidates_get_nothing():
  scores = np.array([[[0.5, 0.9]], [[0.8, 0.3]]], np.float32)
  valid = np.array([[True, False]])
  for method in assignment.METHODS:
    idx, score = assignment.assign(scores, valid, np.array([False, True]), method)
    np.testing.assert_array_equal(idx, [[-1], [0]], err_msg=method)
    np.testing.assert_allclose(score, [[0.0], [0.8]], err_msg=method)


@pytest.mark.parametrize("seed", range(4))
def test_hungarian_is_optimal_and_one_to_one_vs_scipy(seed):
  rng = np.random.default_rng(seed)
  n, k, c = 5, 3, 4
  scores = rng.random((n, k, c)).astype(np.float32)
  scores[rng.random((n, k, c)) < 0.3] = 0.0  # outside-the-box pairs
  valid = rng.random((k, c)) < 0.85
  idx, score = assignment.assign(scores, valid, np.ones(n, bool), "hungarian")
  idx = np.asarray(idx)
  for t in range(k):
    taken = idx[:, t][idx[:, t] >= 0]
    assert len(taken) == len(set(taken.tolist()))  # one-to-one
    w = np.where(valid[t][None] & (scores[:, t] > 0), scores[:, t], 0.0)
    rows, cols = linear_sum_assignment(w, maximize=True)
    np.testing.assert_allclose(np.asarray(score)[:, t].sum(), w[rows, cols].sum(), rtol=1e-5)
  g_idx, _ = assignment.assign(scores, valid, np.ones(n, bool), "global_greedy")
  for t in range(k):
    taken = np.asarray(g_idx)[:, t]
    taken = taken[taken >= 0]
    assert len(taken) == len(set(taken.tolist()))


@pytest.mark.parametrize("method", assignment.METHODS)
def test_jit_matches_eager(method):
  rng = np.random.default_rng(3)
  scores = rng.random((4, 2, 5)).astype(np.float32)
  valid = rng.random((2, 5)) < 0.8
  box_valid = np.array([True, True, False, True])
  eager = assignment.assign(scores, valid, box_valid, method)
  jitted = jax.jit(assignment.assign, static_argnames="method")(scores, valid, box_valid,
                                                                 method=method)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b))


def test_hungarian_under_vmap_and_jit():
  rng = np.random.default_rng(4)
  scores = rng.random((3, 4, 2, 5)).astype(np.float32)
  valid = np.ones((2, 5), bool)
  f = jax.jit(jax.vmap(lambda s: assignment.assign(s, valid, np.ones(4, bool), "hungarian")[0]))
  got = np.asarray(f(scores))
  for b in range(3):
    np.testing.assert_array_equal(got[b], assignment.assign(scores[b], valid, np.ones(4, bool),
                                                            "hungarian")[0])


def test_unknown_method_is_an_error():
  with pytest.raises(ValueError, match="greedy"):
    assignment.assign(CONTESTED, VALID, np.ones(2, bool), "nearest")


def test_gather_keypoints_and_instance_scores():
  cand_xy = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], np.float32)  # [K=2, C=2, 2]
  cand_scores = np.array([[0.9, 0.5], [0.8, 0.4]], np.float32)
  idx = np.array([[1, -1], [0, 1]], np.int32)
  kps = np.asarray(assignment.gather_keypoints(cand_xy, cand_scores, idx))
  np.testing.assert_allclose(kps, [[[3, 4, 0.5], [0, 0, 0]], [[1, 2, 0.9], [7, 8, 0.4]]])
  asc = np.array([[0.5, 0.0], [1.0, 0.25]], np.float32)
  np.testing.assert_allclose(assignment.instance_scores(kps[..., 2], asc), [0.25, 0.65])
  np.testing.assert_allclose(assignment.instance_scores(kps[..., 2], asc, mode="assignment"),
                             [0.125, 0.5])
  np.testing.assert_allclose(
      assignment.instance_scores(kps[..., 2], asc, np.array([0.5, 1.0]), mode="box"),
      [0.125, 0.65])
  shares = np.array([[0.5, 0.0], [1.0, 0.75]], np.float32)
  np.testing.assert_allclose(  # (0.5 * 0.5^2) / 2, (0.9 * 1 + 0.4 * 0.75^2) / 2
      assignment.instance_scores(kps[..., 2], asc, mode="decisive", shares=shares),
      [0.0625, 0.5625])
  with pytest.raises(ValueError, match="shares"):
    assignment.instance_scores(kps[..., 2], asc, mode="decisive")


def test_assignment_shares_by_hand():
  # One type, two candidates, three boxes (the third is padding and does not compete).
  scores = np.array([[[0.6, 0.1]], [[0.2, 0.3]], [[0.9, 0.9]]], np.float32)  # [N=3, K=1, C=2]
  idx, _ = assignment.assign(scores, np.ones((1, 2), bool), np.array([1, 1, 0], bool),
                             "hungarian_log")
  np.testing.assert_array_equal(idx, [[0], [1], [-1]])
  shares = assignment.assignment_shares(scores, idx, np.array([1, 1, 0], bool))
  np.testing.assert_allclose(shares, [[0.6 / 0.8], [0.3 / 0.4], [0.0]], rtol=1e-6)


def test_center_scores_pick_the_candidate_nearest_the_box_centre():
  # Box 0 spans x 0..36, y 0..56 (one pixel per grid cell), centre (18, 28); box 1 is to the right.
  wboxes = np.array([[0.0, 0.0, 36.0, 56.0], [40.0, 0.0, 76.0, 56.0]], np.float32)
  cand_xy = np.zeros((17, 3, 2), np.float32)
  cand_xy[:, 0] = (18.0, 30.0)   # near box 0's centre
  cand_xy[:, 1] = (2.0, 50.0)    # inside box 0, far from its centre
  cand_xy[:, 2] = (60.0, 20.0)   # inside box 1 only
  cand_valid = np.ones((17, 3), bool)
  s = np.asarray(assignment.center_scores(cand_xy, cand_valid, wboxes))
  d = np.hypot(0.0, 2.0 / 56)  # box-normalised distance of candidate 0 to box 0's centre
  np.testing.assert_allclose(s[0, :, 0], 1.0 / (1.0 + d), rtol=1e-5)
  assert (s[0, :, 2] == 0).all() and (s[1, :, :2] == 0).all()  # outside the box: 0
  idx, _ = assignment.assign(s, cand_valid, np.ones(2, bool), "greedy")
  np.testing.assert_array_equal(np.asarray(idx), [[0] * 17, [2] * 17])
  cand_valid[:, 0] = False  # an invalid candidate scores 0 and is never picked
  idx, _ = assignment.assign(assignment.center_scores(cand_xy, cand_valid, wboxes), cand_valid,
                             np.ones(2, bool), "greedy")
  np.testing.assert_array_equal(np.asarray(idx)[0], [1] * 17)


def test_hungarian_log_maximises_the_product_not_the_sum():
  # One type, 2 boxes x 2 candidates. Sum: 0.9 + 0.01 = 0.91 > 0.1 + 0.5 = 0.6 (keeps the 0.01
  # pair); product: 0.1 * 0.5 = 0.05 > 0.9 * 0.01 = 0.009 (avoids it).
  scores = np.array([[[0.9, 0.1]], [[0.5, 0.01]]], np.float32)
  valid = np.ones((1, 2), bool)
  plain, _ = assignment.assign(scores, valid, np.ones(2, bool), "hungarian")
  log, score = assignment.assign(scores, valid, np.ones(2, bool), "hungarian_log")
  np.testing.assert_array_equal(plain, [[0], [1]])
  np.testing.assert_array_equal(log, [[1], [0]])
  np.testing.assert_allclose(score, [[0.1], [0.5]])


@pytest.mark.parametrize("seed", range(3))
def test_hungarian_log_is_the_best_product_by_brute_force(seed):
  rng = np.random.default_rng(seed)
  n, c = 4, 4
  scores = (rng.random((n, 1, c)) ** 3).astype(np.float32) + 1e-4
  idx, _ = assignment.assign(scores, np.ones((1, c), bool), np.ones(n, bool), "hungarian_log")
  got = np.prod(scores[np.arange(n), 0, np.asarray(idx)[:, 0]])
  best = max(np.prod(scores[np.arange(n), 0, list(p)]) for p in itertools.permutations(range(c)))
  np.testing.assert_allclose(got, best, rtol=1e-5)
