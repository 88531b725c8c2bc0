"""ImageNet weight import: torchvision names/layout checked tensor by tensor and against a numpy
re-implementation of torchvision's forward; Keras checked against keras.applications.ResNet50's own
layer outputs; the Orbax checkpoint / CLI round trip."""

import os
import re

import flax
import jax
import numpy as np
import pytest

from mpn_jax import checkpoints
from mpn_jax import coco
from mpn_jax import models
from mpn_jax import weights
from mpn_jax.training import state as state_lib


# ------------------------------------------------------------------------- torchvision reference

def torchvision_state_dict(stage_sizes, width=64, num_classes=1000, seed=0):
  """Random tensors named and shaped as torchvision's ResNet(Bottleneck, ...).state_dict()."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, out_c, in_c, k):
    sd[f"{name}.weight"] = (rng.normal(size=(out_c, in_c, k, k)) *
                            np.sqrt(2.0 / (in_c * k * k))).astype(np.float32)

  def bn(name, c):
    sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{name}.bias"] = (0.1 * rng.normal(size=c)).astype(np.float32)
    sd[f"{name}.running_mean"] = (0.1 * rng.normal(size=c)).astype(np.float32)
    sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", width, 3, 7)
  bn("bn1", width)
  inplanes = width
  for i, blocks in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(blocks):
      p = f"layer{i + 1}.{j}"
      conv(f"{p}.conv1", planes, inplanes, 1)
      bn(f"{p}.bn1", planes)
      conv(f"{p}.conv2", planes, planes, 3)
      bn(f"{p}.bn2", planes)
      conv(f"{p}.conv3", planes * 4, planes, 1)
      bn(f"{p}.bn3", planes * 4)
      if j == 0:
        conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
        bn(f"{p}.downsample.1", planes * 4)
      inplanes = planes * 4
  sd["fc.weight"] = rng.normal(size=(num_classes, inplanes)).astype(np.float32)
  sd["fc.bias"] = np.zeros(num_classes, np.float32)
  return sd


def _np_conv(x, w, stride, pad):
  """torch.nn.functional.conv2d in numpy: x [N, C, H, W], w [O, C, kh, kw] (cross-correlation)."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  _, _, kh, kw = w.shape
  h, wd = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + stride * h:stride, j:j + stride * wd:stride]
      out = out + np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out


def _np_bn(x, sd, name, eps=1e-5):
  g = lambda k: sd[f"{name}.{k}"][None, :, None, None]
  return (x - g("running_mean")) / np.sqrt(g("running_var") + eps) * g("weight") + g("bias")


def torchvision_features(sd, stage_sizes, x):
  """torchvision ResNet (v1.5) forward in eval mode, numpy NCHW -> [C2, C3, C4, C5]."""
  relu = lambda t: np.maximum(t, 0.0)
  x = relu(_np_bn(_np_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1"))
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  h, w = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
  x = np.max([x[:, :, i:i + 2 * h:2, j:j + 2 * w:2] for i in range(3) for j in range(3)], axis=0)
  feats = []
  for i, blocks in enumerate(stage_sizes):
    for j in range(blocks):
      p, stride = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)
      y = relu(_np_bn(_np_conv(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"))
      y = relu(_np_bn(_np_conv(y, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn2"))
      y = _np_bn(_np_conv(y, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
      if j == 0:
        x = _np_bn(_np_conv(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd, f"{p}.downsample.1")
      x = relu(x + y)
    feats.append(x)
  return feats


def _flax_location(key, value):
  """torchvision key -> ((collection, *flax path), the value as Flax stores it)."""
  module, kind = re.fullmatch(r"(.*)\.(weight|bias|running_mean|running_var)", key).groups()
  parts = module.split(".")
  path = []
  for part in parts:  # 'layer1', '0' -> 'layer1_0'; 'downsample', '1' -> 'downsample_1'
    if part.isdigit():
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  if kind == "weight" and value.ndim == 4:
    return ("params", *path, "kernel"), value.transpose(2, 3, 1, 0)
  leaf = {"weight": ("params", "scale"), "bias": ("params", "bias"),
          "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}[kind]
  return (leaf[0], *path, leaf[1]), value


def _flat(imported):
  return flax.traverse_util.flatten_dict(
      {"params": imported.params, "batch_stats": imported.batch_stats})


def test_torchvision_resnet50_every_tensor_lands_in_place():
  sd = torchvision_state_dict((3, 4, 6, 3))
  imported = weights.from_torchvision(sd, depth=50)
  assert (imported.variant, imported.bn_epsilon, imported.preprocessing) == (
      "v1.5", 1e-5, "imagenet_rgb")
  flat = _flat(imported)
  placed = set()
  for key, value in sd.items():
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
      continue
    location, expected = _flax_location(key, value)
    np.testing.assert_array_equal(flat[location], expected, err_msg=key)
    placed.add(location)
  assert placed == set(flat)  # every Flax leaf comes from exactly one torchvision tensor
  # The imported tree is exactly the model's tree (so it can replace an initialised backbone).
  backbone = models.ResNet(stage_sizes=(3, 4, 6, 3))
  abstract = jax.eval_shape(lambda: backbone.init(jax.random.key(0), np.zeros((1, 32, 32, 3))))
  assert jax.tree.map(lambda a: a.shape, imported.variables()["params"]["backbone"]) == \
      jax.tree.map(lambda a: a.shape, abstract["params"])
  assert jax.tree.map(lambda a: a.shape, imported.batch_stats) == \
      jax.tree.map(lambda a: a.shape, abstract["batch_stats"])


def test_torchvision_wrong_depth_lists_tensors():
  sd = torchvision_state_dict((3, 4, 6, 3))
  with pytest.raises(ValueError, match=r"layer3\.6\.conv1\.weight") as err:
    weights.from_torchvision(sd, depth=101)
  assert "missing" in str(err.value)


def test_torchvision_missing_misshaped_unexpected_are_listed():
  sd = torchvision_state_dict((1, 2, 1, 1), width=4)
  del sd["layer1.0.bn2.running_var"]
  sd["layer2.0.conv2.weight"] = sd["layer2.0.conv2.weight"][:, :, :1, :1]
  sd["layer2.1.conv4.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(ValueError) as err:
    weights.from_torchvision(sd, stage_sizes=(1, 2, 1, 1), width=4)
  message = str(err.value)
  for name in ("layer1.0.bn2.running_var", "layer2.0.conv2.weight", "layer2.1.conv4.weight"):
    assert name in message
  assert "missing" in message and "wrong shape" in message and "unexpected" in message


def test_torchvision_forward_matches_numpy_reference():
  stage_sizes = (1, 2, 1, 1)
  sd = torchvision_state_dict(stage_sizes, width=4, seed=3)
  imported = weights.from_torchvision(sd, stage_sizes=stage_sizes, width=4)
  x = np.random.default_rng(1).normal(size=(2, 37, 45, 3)).astype(np.float32)  # odd sizes
  backbone = models.ResNet(stage_sizes=stage_sizes, width=4, variant=imported.variant,
                           bn_epsilon=imported.bn_epsilon)
  ours = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(
      {"params": imported.params, "batch_stats": imported.batch_stats}, x)
  reference = torchvision_features(sd, stage_sizes, x.transpose(0, 3, 1, 2))
  for level, ref in zip(("C2", "C3", "C4", "C5"), reference):
    ref = ref.transpose(0, 2, 3, 1)
    assert ours[level].shape == ref.shape
    np.testing.assert_allclose(ours[level], ref, atol=1e-4 * np.abs(ref).max(), err_msg=level)


def test_cli_roundtrip_and_config_check(tmp_path, monkeypatch):
  stage_sizes = (1, 1, 1, 1)
  sd = torchvision_state_dict(stage_sizes, width=4)
  np.savez(tmp_path / "tiny.npz", **sd)
  out = tmp_path / "pretrained"
  argv = ["--source=torchvision", f"--input={tmp_path / 'tiny.npz'}", "--depth=50",
          f"--output={out}", "--stage_sizes=1,1,1,1", "--width=4"]
  weights.main(argv)
  cfg = models.multiposenet_config("tiny")
  restored = weights.restore_pretrained(out, cfg.backbone)
  expected = weights.from_torchvision(sd, stage_sizes=stage_sizes, width=4).variables()
  assert set(restored) == {"params", "batch_stats"}
  assert set(restored["params"]) == {"backbone"}
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  # The training code's init_from reader takes the same directory.
  params, batch_stats, _ = checkpoints.restore_variables(str(out))
  jax.tree.map(np.testing.assert_array_equal, {"params": params, "batch_stats": batch_stats},
               expected)
  cfg.backbone.variant = "v1"
  with pytest.raises(ValueError, match="variant=v1.5"):
    weights.restore_pretrained(out, cfg.backbone)
  # Training's init_from checks the same metadata before loading: the shapes would match silently.
  with pytest.raises(ValueError, match="variant=v1.5"):
    state_lib.init_from(None, str(out), None, cfg.backbone)
  with pytest.raises(ValueError, match="already exists"):
    weights.main(argv)
  weights.main(argv + ["--overwrite"])
  assert weights.read_metadata(out)["variant"] == "v1.5"
  # No temporary or earlier folder is left behind.
  assert sorted(os.listdir(tmp_path)) == ["pretrained", "pretrained.json", "tiny.npz"]
  # An overwrite that fails while writing (a full disk, a kill) leaves the earlier pair whole.
  def failing_save(self, *args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(weights.ocp.StandardCheckpointer, "save", failing_save)
  with pytest.raises(OSError, match="No space left"):
    weights.main(argv + ["--overwrite"])
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["pretrained", "pretrained.json", "tiny.npz"]
  jax.tree.map(np.testing.assert_array_equal, weights.restore_pretrained(
      out, models.multiposenet_config("tiny").backbone), expected)
  with pytest.raises(ValueError, match="does not exist"):
    weights.load_state_dict(tmp_path / "nothing.npz")
  (tmp_path / "weights.ckpt").write_bytes(b"")
  with pytest.raises(ValueError, match="unknown state-dict format"):
    weights.load_state_dict(tmp_path / "weights.ckpt")


def test_torch_checkpoint_matches_torchvision(tmp_path):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  net = torchvision.models.resnet50(weights=None).eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  torch.save(net.state_dict(), tmp_path / "r50.pth")
  imported = weights.from_torchvision(weights.load_state_dict(tmp_path / "r50.pth"), depth=50)
  x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    t = net.maxpool(net.relu(net.bn1(net.conv1(torch.from_numpy(x.transpose(0, 3, 1, 2))))))
    reference = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
      t = layer(t)
      reference.append(t.numpy().transpose(0, 2, 3, 1))
  backbone = models.ResNet(stage_sizes=(3, 4, 6, 3))
  ours = jax.jit(lambda v, x: backbone.apply(v, x))(
      {"params": imported.params, "batch_stats": imported.batch_stats}, x)
  for level, ref in zip(("C2", "C3", "C4", "C5"), reference):
    np.testing.assert_allclose(ours[level], ref, atol=1e-4 * np.abs(ref).max())


# ----------------------------------------------------------------------------------------- keras

KERAS_OUTPUTS = {"C2": "conv2_block3_out", "C3": "conv3_block4_out", "C4": "conv4_block6_out",
                 "C5": "conv5_block3_out"}


@pytest.fixture(scope="module")
def keras_resnet50():
  keras = pytest.importorskip("keras")
  model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(None, None, 3))
  rng = np.random.default_rng(0)
  # Fresh Keras BNs are the identity (mean 0, var 1, gamma 1, beta 0) and conv biases are 0:
  # randomise them so that the BN mapping and the bias folding are really tested.
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, c), 0.1 * rng.normal(size=c),
                         0.1 * rng.normal(size=c), rng.uniform(0.5, 2.0, c)])
    elif isinstance(layer, keras.layers.Conv2D):
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, 0.1 * rng.normal(size=bias.shape)])
  probe = keras.Model(model.input, [model.get_layer(n).output for n in KERAS_OUTPUTS.values()])
  rgb = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  caffe = keras.applications.resnet50.preprocess_input(rgb.copy())
  reference = dict(zip(KERAS_OUTPUTS, [np.asarray(f) for f in probe(caffe)]))
  return model, rgb, caffe, reference


def _keras_backbone_features(imported, x):
  backbone = models.ResNet(stage_sizes=(3, 4, 6, 3), variant=imported.variant,
                           bn_epsilon=imported.bn_epsilon)
  return jax.jit(lambda v, x: backbone.apply(v, x))(
      {"params": imported.params, "batch_stats": imported.batch_stats}, x)


def test_keras_resnet50_features_match(keras_resnet50):
  model, rgb, caffe, reference = keras_resnet50
  imported = weights.from_keras(model, depth=50, fold_preprocessing=False)
  assert (imported.variant, imported.bn_epsilon, imported.preprocessing) == (
      "v1", 1.001e-5, "caffe_bgr")
  ours = _keras_backbone_features(imported, caffe)
  for level, ref in reference.items():
    assert ours[level].shape == ref.shape, level
    scale = np.abs(ref).max()
    assert scale > 0
    assert np.abs(ours[level] - ref).max() < 1e-4 * scale, level


def test_keras_preprocessing_fold(keras_resnet50):
  model, rgb, caffe, reference = keras_resnet50
  imported = weights.from_keras(model, depth=50)
  assert imported.preprocessing == "imagenet_rgb"
  # Exact where conv1 sees no padding: VALID conv on Caffe input == VALID conv on normalised RGB
  # with the folded kernel, plus the folded constant.
  kernel = model.get_layer("conv1_conv").get_weights()[0]
  folded, constant = weights.fold_caffe_preprocessing(kernel)
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), "VALID",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  want = conv(caffe, kernel)
  got = conv(coco.normalize_image(rgb).astype(np.float32), folded) + constant
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
  # End to end the only difference is the colour conv1's zero padding stands for (ImageNet mean vs
  # Caffe mean, < 0.5 grey levels), which reaches the whole of a 64 px image's deep features.
  ours = _keras_backbone_features(imported, coco.normalize_image(rgb).astype(np.float32))
  for level, ref in reference.items():
    assert np.abs(ours[level] - ref).max() < 1e-2 * np.abs(ref).max(), level


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_keras_weights_file(keras_resnet50, tmp_path):
  model = keras_resnet50[0]
  path = tmp_path / "resnet50.weights.h5"
  model.save_weights(path)
  from_file = weights.from_keras(str(path), depth=50)
  from_model = weights.from_keras(model, depth=50)
  jax.tree.map(np.testing.assert_array_equal, from_file.variables(), from_model.variables())
  with pytest.raises(ValueError, match="not a Keras ResNet101"):
    weights.from_keras(str(path), depth=101)


def test_keras_missing_layers_are_listed(keras_resnet50):
  layer_weights = weights.keras_weights(keras_resnet50[0])
  del layer_weights["conv4_block2_3_bn"]
  conv = layer_weights["conv3_block1_1_conv"]
  conv["kernel"] = conv["kernel"][:, :, :5]
  with pytest.raises(ValueError) as err:
    weights.from_keras(layer_weights, depth=50)
  assert "conv4_block2_3_bn" in str(err.value) and "conv3_block1_1_conv" in str(err.value)
