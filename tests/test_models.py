"""Networks: shapes at the paper's sizes (eval_shape, free), parameter counts, and behaviour of tiny
variants (PRN softmax, single trace under jit, bfloat16, frozen BN, stride placement, freezing)."""

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpn_jax import boxes
from mpn_jax import errors
from mpn_jax import models
from mpn_jax.models import fpn
from mpn_jax.models import resnet


def _num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_init(model, shape, **kw):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), **kw))


def _random_variables(model, shape, seed=0, **kw):
  """Variables with the model's shapes filled from numpy (compiling a jitted `init` on CPU costs
  tens of seconds of PRNG code; the forward tests only need well-scaled random values)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(size=leaf.shape).astype(np.float32) * np.sqrt(1.0 / fan_in)
    if name == "scale":
      return 1.0 + 0.1 * rng.normal(size=leaf.shape).astype(np.float32)
    if name == "var":
      return rng.uniform(0.5, 1.5, size=leaf.shape).astype(np.float32)
    return 0.1 * rng.normal(size=leaf.shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(fill, _abstract_init(model, shape, **kw))


@pytest.fixture(scope="module")
def tiny():
  model = models.build_multiposenet(models.multiposenet_config("tiny"))
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = _random_variables(model, images.shape, train=False)
  return model, variables, images


@pytest.mark.parametrize("height,width", [(480, 480), (100, 132)])
def test_full_model_output_shapes(height, width):
  model = models.build_multiposenet(models.multiposenet_config())
  variables = _abstract_init(model, (2, height, width, 3), train=False)
  assert set(variables["params"]) == {"backbone", "keypoint_fpn", "keypoint_head", "detection_fpn",
                                      "retina_head"}
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32))
  size = lambda l: (math.ceil(height / 2**l), math.ceil(width / 2**l))
  assert out["keypoints"].shape == (2, *size(2), 18)
  assert [o.shape for o in out["keypoints_intermediate"]] == [
      (2, *size(l), 18) for l in (2, 3, 4, 5)]
  num_anchors = 9 * sum(size(l)[0] * size(l)[1] for l in (3, 4, 5, 6, 7))
  if (height, width) == (480, 480):
    assert num_anchors == 9 * (60**2 + 30**2 + 15**2 + 8**2 + 4**2)
  anchors = jax.eval_shape(lambda: boxes.generate_anchors((height, width)))
  assert anchors.shape == (num_anchors, 4)  # the head's outputs pair one-to-one with the anchors
  assert out["cls_logits"].shape == (2, num_anchors, 1)
  assert out["box_deltas"].shape == (2, num_anchors, 4)
  assert all(o.dtype == jnp.float32 for o in jax.tree.leaves(out))


@pytest.mark.parametrize("depth,expected", [(50, 23_508_032), (101, 42_500_160)])
def test_resnet_parameter_counts_match_torchvision(depth, expected):
  # torchvision resnet50/101 parameters minus the 2048x1000 (+1000) classifier.
  backbone = models.ResNet(stage_sizes=models.stage_sizes_for_depth(depth))
  variables = _abstract_init(backbone, (1, 64, 64, 3))
  assert _num_params(variables["params"]) == expected
  # Running statistics are state, not parameters: one mean and one var per BN scale.
  bn_scales = [x for p, x in jax.tree_util.tree_leaves_with_path(variables["params"])
               if p[-1].key == "scale"]
  assert _num_params(variables["batch_stats"]) == 2 * _num_params(bn_scales)


def test_retina_head_prior_and_anchor_order(tiny):
  head = models.RetinaHead(channels=4, num_convs=1, levels=(3,))
  head_vars = head.init(jax.random.key(0, impl="rbg"), {"P3": jnp.ones((1, 2, 2, 4))})
  np.testing.assert_allclose(head_vars["params"]["cls_out"]["bias"], -math.log(99.0), rtol=1e-6)
  np.testing.assert_array_equal(head_vars["params"]["box_out"]["bias"], 0.0)
  assert float(jnp.std(head_vars["params"]["cls_conv0"]["kernel"])) < 0.02  # normal(0.01)

  model, variables, images = tiny
  capture = lambda mdl, _: mdl.name in ("cls_out", "box_out")
  out, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=capture))(
      variables, images)
  per_level = state["intermediates"]["retina_head"]
  cls_maps, box_maps = per_level["cls_out"]["__call__"], per_level["box_out"]["__call__"]
  assert [m.shape[1] for m in cls_maps] == [8, 4, 2, 1, 1]  # 64 px at strides 8..128
  rng = np.random.default_rng(0)
  offset = 0
  for cls_map, box_map in zip(cls_maps, box_maps):
    _, h, w, _ = cls_map.shape
    for _ in range(5):  # anchor index = offset + (y * w + x) * 9 + a
      b, y, x, a = rng.integers(2), rng.integers(h), rng.integers(w), rng.integers(9)
      idx = offset + (y * w + x) * 9 + a
      np.testing.assert_allclose(out["cls_logits"][b, idx, 0], cls_map[b, y, x, a], rtol=1e-6)
      np.testing.assert_allclose(out["box_deltas"][b, idx], box_map[b, y, x, 4 * a:4 * a + 4],
                                 rtol=1e-6)
    offset += h * w * 9
  assert offset == out["cls_logits"].shape[1]


@pytest.mark.parametrize("norm", ["none", "group"])
def test_retina_head_norm_levels(norm):
  """GroupNorm after each shared conv: one set of norm parameters for all levels, and a level's
  outputs no longer depend on that level's input scale (at initialisation the conv biases are 0,
  so conv(k x) = k conv(x) and GroupNorm removes k); without it a 100x level saturates."""
  head = models.RetinaHead(channels=8, num_convs=2, num_anchors=3, levels=(3, 4), norm=norm)
  rng = np.random.default_rng(0)
  x = {"P3": jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32),
       "P4": jnp.asarray(rng.normal(size=(2, 2, 2, 8)), jnp.float32)}
  variables = head.init(jax.random.key(0), x)
  names = set(variables["params"])
  assert {"cls_norm0", "cls_norm1", "box_norm0", "box_norm1"} <= names if norm == "group" else \
      not any("norm" in n for n in names)
  # Random (not the 0.01-std init) head weights, so that the outputs differ between inputs.
  variables = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape) * 0.3, v.dtype),
                           variables)
  variables["params"] = {k: dict(v, bias=jnp.zeros_like(v["bias"])) if "conv" in k else v
                         for k, v in variables["params"].items()}
  cls, box = head.apply(variables, x)
  scaled = dict(x, P4=x["P4"] * 100.0)
  cls_s, box_s = head.apply(variables, scaled)
  n3 = 4 * 4 * 3  # P3's anchors come first and are untouched
  np.testing.assert_allclose(cls_s[:, :n3], cls[:, :n3], rtol=1e-6)
  if norm == "group":
    np.testing.assert_allclose(cls_s, cls, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(box_s, box, rtol=1e-3, atol=1e-3)
  else:
    assert float(jnp.max(jnp.abs(box_s[:, n3:] - box[:, n3:]))) > 1.0
  with pytest.raises(errors.ConfigError, match="retina_head.norm"):
    models.RetinaHead(channels=8, num_convs=1, levels=(3,), norm="batch").init(
        jax.random.key(0), {"P3": x["P3"]})


def test_upsample_nearest_and_crop():
  x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 2, 3, 4)
  y = fpn.upsample(x, 4, (7, 10))
  assert y.shape == (1, 7, 10, 4)
  for i in range(7):
    for j in range(10):
      np.testing.assert_array_equal(y[0, i, j], x[0, i // 4, j // 4])
  # Bilinear keeps a constant map constant and is exact on the coarse cell centres' average.
  z = fpn.upsample(jnp.ones((1, 3, 3, 2)), 2, (5, 5), "bilinear")
  np.testing.assert_allclose(z, 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="upsample"):
    fpn.upsample(x, 2, (5, 6))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2), (1, 1, 1, 1), (1, 2, 5, 4)])
def test_stem_max_pool_matches_flax_max_pool(shape):
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape).astype(np.float32))
  ref = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(resnet.max_pool_3x3_s2(x), ref(x))
  loss = lambda f: lambda x: jnp.sum(f(x) ** 2)
  np.testing.assert_allclose(jax.grad(loss(resnet.max_pool_3x3_s2))(x), jax.grad(loss(ref))(x),
                             atol=1e-6)


def test_keypoint_head_bilinear_odd_sizes():
  cfg = models.multiposenet_config("tiny")
  cfg.keypoint_head.upsample = "bilinear"
  model = models.build_multiposenet(cfg)
  x = jnp.ones((1, 52, 36, 3))
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      _random_variables(model, x.shape, train=False), x)
  assert out["keypoints"].shape == (1, 13, 9, 18)
  assert [o.shape[1:3] for o in out["keypoints_intermediate"]] == [(13, 9), (7, 5), (4, 3), (2, 2)]


def test_prn_softmax_and_residual():
  model = models.build_prn(models.prn_config("tiny"))
  x = jax.random.uniform(jax.random.key(0), (3, 56, 36, 17))
  variables = _random_variables(model, x.shape, train=False)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (3, 56, 36, 17) and logits.dtype == jnp.float32
  probs = models.prn_probabilities(logits)
  np.testing.assert_allclose(probs.sum(axis=(1, 2)), 1.0, rtol=1e-5)
  assert float(probs.min()) >= 0.0
  # Softmax is per channel over positions: matches scipy on one channel.
  from scipy.special import softmax
  np.testing.assert_allclose(probs[1, :, :, 4], softmax(np.asarray(logits[1, :, :, 4])), rtol=1e-5)
  # With zero weights the residual block is the identity (ReLU(0) + x).
  zeros = jax.tree.map(jnp.zeros_like, variables)
  np.testing.assert_array_equal(model.apply(zeros, x, train=False), x)
  # input_scale scales the input, hence the residual: zero weights give scale * x.
  cfg = models.prn_config("tiny")
  cfg.input_scale = 8.0
  np.testing.assert_allclose(models.build_prn(cfg).apply(zeros, x, train=False), 8.0 * x, rtol=1e-6)
  # Dropout is active only in training and needs the 'dropout' rng.
  a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(a, b)


@pytest.mark.parametrize("input_scale,output_relu,relu", [(1.0, None, True), (8.0, None, False),
                                                        (8.0, True, True), (1.0, False, False)])
def test_prn_output_relu_follows_the_input_scale(input_scale, output_relu, relu):
  # Zero weights and an output bias of -1: the MLP outputs -1 everywhere, which the paper's ReLU
  # turns into 0 (logits = scale * x) and a linear output keeps (logits = scale * x - 1).
  cfg = models.prn_config("tiny")
  cfg.input_scale = input_scale
  model = models.build_prn(cfg).clone(output_relu=output_relu)
  x = jax.random.uniform(jax.random.key(1), (2, 56, 36, 17))
  variables = jax.tree.map(jnp.zeros_like, _random_variables(model, x.shape, train=False))
  variables["params"]["output"]["bias"] = -jnp.ones_like(variables["params"]["output"]["bias"])
  expected = input_scale * np.asarray(x) - (0.0 if relu else 1.0)
  np.testing.assert_allclose(model.apply(variables, x, train=False), expected, rtol=1e-6,
                             atol=1e-6)


def test_prn_paper_size_and_conv_variant():
  model = models.build_prn(models.prn_config())
  variables = _abstract_init(model, (1, 56, 36, 17), train=False)
  n = 56 * 36 * 17
  assert _num_params(variables["params"]) == (n * 1024 + 1024) + (1024 * n + n)
  cfg = models.prn_config("tiny")
  cfg.hidden_sizes = ()
  cfg.conv_dilations = (1, 2)
  cfg.conv_channels = 4
  conv = models.build_prn(cfg)
  x = jnp.ones((2, 56, 36, 17))
  params = _random_variables(conv, x.shape, train=False)
  out = conv.apply(params, x, train=False)
  assert out.shape == x.shape
  assert params["params"]["conv1"]["kernel"].shape == (3, 3, 4, 4)
  with pytest.raises(ValueError, match="PRN input"):
    conv.apply(params, jnp.ones((2, 56, 36, 3)), train=False)


def test_jits_once(tiny):
  model, variables, images = tiny
  traces = []

  @jax.jit
  def forward(v, x):
    traces.append(1)  # Python side effect: runs only while tracing
    return model.apply(v, x, train=False)

  first = forward(variables, images)
  second = forward(variables, images + 1.0)
  jax.block_until_ready(second)
  assert len(traces) == 1
  assert not np.allclose(first["keypoints"], second["keypoints"])


def test_bfloat16_compute(tiny):
  _, variables, images = tiny
  cfg = models.multiposenet_config("tiny")
  cfg.dtype = "bfloat16"
  model16 = models.build_multiposenet(cfg)
  model32 = models.build_multiposenet(models.multiposenet_config("tiny"))
  capture = lambda mdl, _: mdl.name == "conv2"
  out16, state = jax.jit(lambda v, x: model16.apply(v, x, train=False,
                                                    capture_intermediates=capture))(
      variables, images)
  out32 = jax.jit(lambda v, x: model32.apply(v, x, train=False))(variables, images)
  for a, b in zip(jax.tree.leaves(out16), jax.tree.leaves(out32)):
    assert a.dtype == jnp.float32 and bool(jnp.isfinite(a).all())
    scale = float(jnp.abs(b).max())
    assert float(jnp.abs(a - b).max()) < 0.1 * scale
  conv = state["intermediates"]["backbone"]["layer2_0"]["conv2"]["__call__"][0]
  assert conv.dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_network_cut_at_its_output_layers_composes_to_the_whole(tiny, dtype):
  """part='features' then part='outputs' (the same parameters) is the whole network's inference;
  the features are in the compute dtype, the outputs float32."""
  _, variables, images = tiny
  cfg = models.multiposenet_config("tiny")
  cfg.dtype = dtype
  whole, body, head = (models.build_multiposenet(cfg, part=p)
                       for p in ("all", "features", "outputs"))
  want = jax.jit(lambda v, x: whole.apply(v, x, train=False))(variables, images)
  features = jax.jit(lambda v, x: body.apply(v, x, train=False))(variables, images)
  assert set(features) == {"keypoint_features", "cls_features", "box_features"}
  assert features["keypoint_features"].shape == images.shape[:1] + want["keypoints"].shape[1:3] + (
      cfg.keypoint_head.fused_channels,)
  assert len(features["cls_features"]) == len(features["box_features"]) == 5
  assert all(f.dtype == jnp.dtype(dtype) for f in jax.tree.leaves(features))
  got = jax.jit(head.apply)(variables, features)
  assert set(got) == {"keypoints", "cls_logits", "box_deltas"}
  for k, g in got.items():
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, want[k], rtol=1e-5, atol=1e-5 * float(jnp.abs(want[k]).max()))
  with pytest.raises(errors.ConfigError, match="part"):
    models.build_multiposenet(cfg, part="backbone").apply(variables, images)


@pytest.mark.parametrize("frozen_bn", [True, False])
def test_frozen_batchnorm(frozen_bn):
  backbone = models.ResNet(stage_sizes=(1, 1), width=4, frozen_bn=frozen_bn)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3)) * 3.0 + 1.0
  variables = _random_variables(backbone, x.shape)
  out, updates = jax.jit(lambda v, x: backbone.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  eval_out = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(variables, x)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  if frozen_bn:
    assert not any(jax.tree.leaves(changed))
    np.testing.assert_array_equal(out["C3"], eval_out["C3"])
  else:
    assert all(jax.tree.leaves(changed))
    assert not np.allclose(out["C3"], eval_out["C3"])


@pytest.mark.parametrize("variant", ["v1", "v1.5"])
def test_stride_placement(variant):
  backbone = models.ResNet(stage_sizes=(1, 1), width=4, variant=variant)
  x = jnp.ones((1, 32, 32, 3))
  _, state = backbone.apply(_random_variables(backbone, x.shape), x, capture_intermediates=True)
  block = state["intermediates"]["layer2_0"]
  sizes = {n: block[n]["__call__"][0].shape[1] for n in ("conv1", "conv2", "conv3", "downsample_0")}
  # layer2 input is 8x8 (stride 4); the block halves it on conv1 (v1) or on conv2 (v1.5).
  expected_conv1 = 4 if variant == "v1" else 8
  assert sizes == {"conv1": expected_conv1, "conv2": 4, "conv3": 4, "downsample_0": 4}


@pytest.mark.parametrize("freeze_at,frozen,trained", [
    (0, [], ["conv1", "layer1_0", "layer2_0"]),
    (1, ["conv1"], ["layer1_0", "layer2_0"]),
    (2, ["conv1", "layer1_0"], ["layer2_0"]),
])
def test_freeze_at_stops_gradients(freeze_at, frozen, trained):
  backbone = models.ResNet(stage_sizes=(1, 1), width=4, freeze_at=freeze_at)
  x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
  variables = _random_variables(backbone, x.shape)

  def loss(params):
    out = backbone.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
    return sum(jnp.sum(f**2) for f in out.values())

  grads = flax.traverse_util.flatten_dict(jax.jit(jax.grad(loss))(variables["params"]), sep="/")
  norm = lambda prefix: sum(float(jnp.abs(g).sum()) for k, g in grads.items()
                            if k.startswith(prefix + "/"))
  for name in frozen:
    assert norm(name) == 0.0, name
  for name in trained:
    assert norm(name) > 0.0, name


def test_bad_config_values():
  cfg = models.multiposenet_config("tiny")
  cfg.backbone.variant = "v2"
  model = models.build_multiposenet(cfg)
  with pytest.raises(ValueError, match="variant"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="size"):
    models.multiposenet_config("huge")
  cfg = models.multiposenet_config()
  cfg.backbone.depth = 34
  with pytest.raises(ValueError, match="depth 34"):
    models.build_multiposenet(cfg)


def _np_conv_nhwc(x, kernel, bias, stride=1):
  """Symmetric-padding ('k // 2') cross-correlation in numpy: [B, H, W, C] x [k, k, C, O]."""
  k = kernel.shape[0]
  x = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  h, w = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], h, w, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      out += x[:, i:i + stride * h:stride, j:j + stride * w:stride] @ kernel[i, j]
  return out + bias


def test_fpns_match_numpy():
  rng = np.random.default_rng(0)
  sizes = {2: (13, 9), 3: (7, 5), 4: (4, 3), 5: (2, 2)}  # ceil(52 / 2^l), ceil(36 / 2^l)
  feats = {f"C{l}": rng.normal(size=(1, *hw, 3 + l)).astype(np.float32) for l, hw in sizes.items()}
  nearest_up = lambda x, shape: x.repeat(2, 1).repeat(2, 2)[:, :shape[0], :shape[1]]

  kfpn = models.KeypointFPN(channels=4)
  abstract = jax.eval_shape(lambda: kfpn.init(jax.random.key(0), feats))
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract)
  out = kfpn.apply(params, feats)
  p = params["params"]
  lat = {l: _np_conv_nhwc(feats[f"C{l}"], p[f"lateral{l}"]["kernel"], p[f"lateral{l}"]["bias"])
         for l in sizes}
  merged = {5: lat[5]}
  for l in (4, 3, 2):
    merged[l] = lat[l] + nearest_up(merged[l + 1], sizes[l])
  for l in sizes:
    want = _np_conv_nhwc(merged[l], p[f"smooth{l}"]["kernel"], p[f"smooth{l}"]["bias"])
    np.testing.assert_allclose(out[f"P{l}"], want, rtol=1e-4, atol=1e-4)

  dfpn = models.DetectionFPN(channels=4)
  abstract = jax.eval_shape(lambda: dfpn.init(jax.random.key(0), feats))
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract)
  out = dfpn.apply(params, feats)
  p = params["params"]
  assert "lateral2" not in p
  p6 = _np_conv_nhwc(feats["C5"], p["p6"]["kernel"], p["p6"]["bias"], stride=2)
  p7 = _np_conv_nhwc(np.maximum(p6, 0), p["p7"]["kernel"], p["p7"]["bias"], stride=2)
  np.testing.assert_allclose(out["P6"], p6, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["P7"], p7, rtol=1e-4, atol=1e-4)
  assert out["P3"].shape == (1, 7, 5, 4)


@pytest.mark.parametrize("intermediate_on", ["fpn", "subnet"])
def test_keypoint_head_matches_numpy(intermediate_on):
  rng = np.random.default_rng(1)
  sizes = {2: (13, 9), 3: (7, 5), 4: (4, 3), 5: (2, 2)}
  pyramid = {f"P{l}": rng.normal(size=(1, *hw, 3)).astype(np.float32) for l, hw in sizes.items()}
  head = models.KeypointHead(channels=2, fused_channels=3, num_outputs=5,
                             intermediate_on=intermediate_on)
  abstract = jax.eval_shape(lambda: head.init(jax.random.key(0), pyramid))
  variables = jax.tree.map(lambda a: (0.5 * rng.normal(size=a.shape)).astype(np.float32), abstract)
  final, intermediate = head.apply(variables, pyramid)
  p = variables["params"]
  conv = lambda x, name: _np_conv_nhwc(x, p[name]["kernel"], p[name]["bias"])
  ups = []
  for i, l in enumerate(sizes):
    d = np.maximum(conv(np.maximum(conv(pyramid[f"P{l}"], f"level{l}_conv0"), 0),
                        f"level{l}_conv1"), 0)
    src = pyramid[f"P{l}"] if intermediate_on == "fpn" else d
    np.testing.assert_allclose(intermediate[i], conv(src, f"level{l}_out"), rtol=1e-4, atol=1e-4)
    f = 2**(l - 2)
    ups.append(d.repeat(f, 1).repeat(f, 2)[:, :13, :9])
  want = conv(np.maximum(conv(np.concatenate(ups, -1), "fuse"), 0), "out")
  assert final.shape == (1, 13, 9, 5)
  np.testing.assert_allclose(final, want, rtol=1e-4, atol=1e-4)


def test_zero_init_residual():
  backbone = models.ResNet(stage_sizes=(1, 1), width=4, zero_init_residual=True)
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
  variables = backbone.init(jax.random.key(1, impl="rbg"), x)
  block = variables["params"]["layer1_0"]
  np.testing.assert_array_equal(block["bn3"]["scale"], 0.0)
  np.testing.assert_array_equal(block["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(block["downsample_1"]["scale"], 1.0)


@pytest.mark.parametrize("output_init,zero", [("zeros", True), ("fan_in", False)])
def test_keypoint_head_output_init(output_init, zero):
  rng = np.random.default_rng(2)
  sizes = {2: (8, 8), 3: (4, 4), 4: (2, 2), 5: (1, 1)}
  pyramid = {f"P{l}": rng.normal(size=(2, *hw, 4)).astype(np.float32) for l, hw in sizes.items()}
  head = models.KeypointHead(channels=3, fused_channels=4, num_outputs=5, output_init=output_init)
  variables = head.init(jax.random.key(0), pyramid)
  final, intermediate = head.apply(variables, pyramid)
  for out in (final, *intermediate):
    assert (np.abs(np.asarray(out)).max() == 0.0) == zero
  # Zero outputs still get gradients: the kernels' gradient is the features times the error.
  grads = jax.grad(lambda v: jnp.sum((head.apply(v, pyramid)[0] - 1.0)**2))(variables)
  assert np.abs(np.asarray(grads["params"]["out"]["kernel"])).max() > 0
  with pytest.raises(ValueError, match="output_init"):
    models.KeypointHead(output_init="ones").init(jax.random.key(0), pyramid)


def test_bfloat16_prn_accumulates_in_float32():
  cfg = models.prn_config("tiny")
  x = jax.random.uniform(jax.random.key(0), (3, 56, 36, 17))
  f32 = models.build_prn(cfg)
  variables = f32.init(jax.random.key(1), x)
  cfg.dtype = "bfloat16"
  bf16 = models.build_prn(cfg)
  jaxpr = str(jax.make_jaxpr(lambda v: bf16.apply(v, x))(variables))
  dots = [l for l in jaxpr.splitlines() if "dot_general" in l]
  assert len(dots) == 2 and all(":f32[" in l for l in dots), dots  # results in float32
  assert jaxpr.count("preferred_element_type=float32") == 2
  assert "bf16[3,34272]" in jaxpr and "bf16[3,16]" in jaxpr  # of bfloat16 operands
  want, got = f32.apply(variables, x), bf16.apply(variables, x)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02)
