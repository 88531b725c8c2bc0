"""Every command and flag in README.md and the how-to pages of docs/ works as written (issues #8, #20).

README.md and the how-to pages (DOC_PAGES: docs/training.md, docs/learning_check.md,
docs/benchmark.md, docs/predict.md, docs/export.md) are parsed at test time: every ```bash block (`\\` continuations joined, comments dropped,
`&&` chains split) and every inline `python ...` / `tensorboard ...` command of the prose. Each
command is one test case and must match a rule of RULES (a command added to the README without a
rule fails `test_every_readme_command_has_a_rule`). A rule runs the command as written (same
program, same flags, so the real entry point parses and validates every flag) with tiny
substitutions: presets -> `:smoke`, `runs/...` and output files -> a temporary folder, `/data/coco`
and `../shared/data/coco` -> the real COCO samples (`coco_dir` fixture), ImageNet weights -> small
synthetic files of the same format, `photo.jpg` / `photos/` -> COCO val2017 samples, `clip.mp4` ->
a 12-frame clip written with PyAV (tests/test_video.py's), each `predict.py` `--output` -> a folder
of its own. Commands that feed others (a training workdir that an
evaluation reads, converted weights that `init_from` reads) run once and are shared
(`_Runner`, safe under pytest-xdist). `test_every_readme_flag_is_exercised` checks that every flag
named anywhere in the README is passed to some command that runs.

What does not run here, and what is checked instead: `python3 -m venv` / `pip install` / `pytest`
(the README's test command must be exactly the one `.ci/run` runs, `pip install -e .` must find an
installable project); the quickstart (tests/test_quickstart.py runs it twice with `--preset=smoke`:
checked to do so, flags checked with `--helpfull`); the full benchmark (runs with `--quick`);
`.pth` weights (need torch: the same tensors go in as `.npz`; a `.pth` without torch must be a
clear error); the webcam (`predict.py --input=0`, no camera here: its flags are parsed and
validated by predict.py's own definitions and the input is checked to be taken as webcam 0; the
capture itself, faked, runs in tests/test_video.py); `export.py --format=onnx` without the
`export` extra (skipped, with the reason); docs/export.md's loader script on an `.npz`
(tests/test_export.py runs that very block on one, in a process without mpn_jax; checked to do so:
here it runs on `photo.jpg`). Flags named only in the prose run in PROSE_RUNS (README commands plus them), or, for
multi-host and a few config values, are parsed by the same config_flags machinery (PROSE_PARSED).

The pages' relative links must resolve, and paths they name in backticks must exist.

About 10 minutes on 2 loaded CPU cores (pinned to one): ~25 short subprocesses (each imports JAX and
TensorFlow) share one persistent XLA compilation cache.
"""

import contextlib
import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import COCO_DIR, REPO, TEST_XLA_FLAGS, require_shared
from mpn_jax.files import MANIFEST

README = REPO / "README.md"
# Pages whose commands run (how-to pages). docs/experiments.md and docs/design.md are records and
# reference, not instructions; their paths and links are still checked.
DOC_PAGES = ("README.md", "docs/training.md", "docs/learning_check.md", "docs/benchmark.md",
             "docs/predict.md", "docs/export.md")
ALL_PAGES = DOC_PAGES + ("docs/design.md", "docs/experiments.md", "docs/reliability.md")
TIMEOUT = 900
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
# The COCO sample files standing in for the official ones the README names.
SAMPLE_ANN = {"person_keypoints_train2017.json": "person_keypoints_train2017_sample.json",
              "person_keypoints_val2017.json": "person_keypoints_val2017_sample.json"}
TINY_BACKBONE = ("1,1,1,1", "4")  # models.multiposenet_config('tiny'): stage sizes, width
# Input files the pages name (their stand-ins: Scenario.make_input; the .npz ones: see
# check_run_exported).
INPUT_FILES = ("photo.jpg", "clip.mp4", "inputs.npz", "outputs.npz")
# The files of each export format (docs/export.md's table).
EXPORT_FILES = {"stablehlo": ("pipeline.stablehlo", "params.npz", "manifest.json"),
                "onnx": ("multiposenet.onnx", "prn.onnx", "anchors.npy", "manifest.json"),
                "saved_model": ("saved_model.pb", "variables", "anchors.npy", "manifest.json")}
# The `export` extra (pyproject.toml) that --format=onnx needs.
ONNX_MODULES = ("onnx", "jax2onnx")


# ------------------------------------------------------------------------------ README parsing


@dataclasses.dataclass(frozen=True)
class Command:
  """One README command: its argv as written, and where it is."""
  argv: tuple
  line: int
  where: str  # 'bash' (fenced block) or 'prose' (inline code)
  doc: str = "README.md"

  @property
  def text(self):
    return shlex.join(self.argv)

  @property
  def program(self):
    """'python train.py', 'python -m mpn_jax.weights', 'pip install', 'tensorboard', ..."""
    a = self.argv
    if a[0] in ("python", "python3") and len(a) > 2 and a[1] == "-m":
      return f"{a[0]} -m {a[2]}"
    if a[0] in ("python", "python3", "pip") and len(a) > 1:
      return f"{a[0]} {a[1]}"
    return a[0]

  @property
  def flags(self):
    """{'--name': value or None} of the argv, in order."""
    out = {}
    for tok in self.argv:
      if tok.startswith("--"):
        name, eq, value = tok.partition("=")
        out[name] = value if eq else None
    return out


def _split_chain(tokens):
  chain, cur = [], []
  for tok in tokens:
    if tok == "&&":
      chain.append(tuple(cur))
      cur = []
    else:
      cur.append(tok)
  chain.append(tuple(cur))
  return [c for c in chain if c]


def readme_commands(text, doc="README.md"):
  """Commands of README text: ```bash blocks (one per logical line, `&&` split) and inline
  `python ...` / `tensorboard ...` code spans of the prose."""
  commands = []
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    if lines[i].strip() == "```bash":
      i += 1
      logical, start = "", None
      while lines[i].strip() != "```":
        line = lines[i]
        start = i + 1 if start is None else start
        if line.rstrip().endswith("\\"):
          logical += line.rstrip()[:-1] + " "
        else:
          logical += line
          for argv in _split_chain(shlex.split(logical, comments=True)):
            commands.append(Command(argv, start, "bash", doc))
          logical, start = "", None
        i += 1
    i += 1
  prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
  for m in re.finditer(r"`([^`]+)`", prose):
    span = " ".join(m.group(1).split())
    if re.match(r"(python3? |tensorboard )", span):
      line = prose.count("\n", 0, m.start()) + 1
      for argv in _split_chain(shlex.split(span)):
        commands.append(Command(argv, line, "prose", doc))
  return commands


def readme_prose_flags(text):
  """{'--name': [values]} of the flags named in the README's prose (inline code outside the
  commands), e.g. `--config.train.learning_rate=3e-4`, `--parts`."""
  text = re.sub(r"```.*?```", "", text, flags=re.S)
  out = {}
  for m in re.finditer(r"`([^`]+)`", text):
    span = " ".join(m.group(1).split()).replace("= ", "=")
    if re.match(r"(python3? |tensorboard )", span):
      continue
    for tok in re.findall(r"--[A-Za-z_][\w.]*(?:=\S+)?", span):
      name, _, value = tok.partition("=")
      out.setdefault(name, []).append(value or None)
  # `trainable=keypoints`, `trainable=detection`: values of a flag named elsewhere.
  for m in re.finditer(r"`trainable=(\w+)`", text):
    out.setdefault("--config.train.trainable", []).append(m.group(1))
  return out


def page_text(doc):
  return (REPO / doc).read_text()


COMMANDS = [c for doc in DOC_PAGES for c in readme_commands(page_text(doc), doc)]


def python_blocks(text):
  """The ```python blocks of a page, as (first line number, source)."""
  return [(text.count("\n", 0, m.start()) + 2, m.group(1))
          for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


# ------------------------------------------------------------------------------------ running


class _Runner:
  """Runs adapted commands once per test session (also across pytest-xdist workers: a lock file
  and the saved output in a folder the workers share) and remembers their output."""

  def __init__(self, root, env):
    self.root = pathlib.Path(root)
    self.env = env

  def run(self, argv, check=True):
    # Benchmark runs that differ only in where the JSON goes run once; each gets its copy.
    output = next((a.split("=", 1)[1] for a in argv if a.startswith("--output=")), None)
    shared_output = "mpn_jax.benchmark" in argv and output is not None
    same = [a for a in argv if not (shared_output and a.startswith("--output="))]
    key = hashlib.sha1("\0".join(same).encode()).hexdigest()[:16]
    done = self.root / "runs_done" / key
    done.parent.mkdir(parents=True, exist_ok=True)
    with _locked(self.root / "runs_done" / f"{key}.lock"):
      if not (done / "rc").exists():
        start = time.time()
        try:
          proc = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True,
                                timeout=TIMEOUT)
          rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
          rc, out, err = -9, _text(e.stdout), _text(e.stderr) + f"\nTIMEOUT after {TIMEOUT} s"
        done.mkdir(parents=True, exist_ok=True)
        (done / "stdout").write_text(out)
        (done / "stderr").write_text(err)
        (done / "seconds").write_text(f"{time.time() - start:.1f}")
        if shared_output and os.path.isfile(output):
          shutil.copy(output, done / "output.json")
        (done / "rc").write_text(str(rc))
      if shared_output and (done / "output.json").exists() and not os.path.isfile(output):
        pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(done / "output.json", output)
    result = subprocess.CompletedProcess(argv, int((done / "rc").read_text()),
                                         (done / "stdout").read_text(),
                                         (done / "stderr").read_text())
    if check:
      assert result.returncode == 0, _failure(argv, result)
    return result


def _text(b):
  return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _failure(argv, result):
  return (f"command failed (exit {result.returncode}):\n  {shlex.join(argv)}\n"
          f"--- stdout (tail) ---\n{result.stdout[-3000:]}\n"
          f"--- stderr (tail) ---\n{result.stderr[-5000:]}")


@contextlib.contextmanager
def _locked(path):
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # not POSIX: no xdist sharing needed beyond one process
    yield
    return
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def work(tmp_path_factory):
  """The folder every adapted command writes to, shared by the xdist workers of one session."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  root = base / "readme_commands"
  root.mkdir(parents=True, exist_ok=True)
  return root


@pytest.fixture(scope="session")
def runner(work, coco_dir):
  env = dict(os.environ)
  env["XLA_FLAGS"] = TEST_XLA_FLAGS  # one CPU device, as on a user's machine (conftest)
  env.update(TF_CPP_MIN_LOG_LEVEL="3", MPN_COCO_DIR=str(coco_dir),
             # the commands compile the same tiny networks: compile each once per session
             JAX_COMPILATION_CACHE_DIR=str(work / "jax_cache"))
  return _Runner(work, env)


# ------------------------------------------------------------------------- adapting a command


class Adapter:
  """Turns a README command into the one that runs here (module docstring)."""

  def __init__(self, work, coco_dir):
    self.work = pathlib.Path(work)
    self.coco = pathlib.Path(coco_dir)

  def path(self, value):
    """A path of the README -> its stand-in here."""
    v = value
    if v.startswith("/data/coco") or v.startswith("../shared/data/coco"):
      rest = v.split("coco", 1)[1].lstrip("/")
      name = os.path.basename(rest)
      if name in SAMPLE_ANN:
        rest = os.path.join(os.path.dirname(rest), SAMPLE_ANN[name])
      return str(self.coco / rest) if rest else str(self.coco)
    if v == "/data/resnet50_imagenet":  # "converted ImageNet weights": the torchvision ones
      v = "/data/resnet50_tv"
    if v in ("COCO",):
      return str(self.coco)
    if v in ("DIR",):
      return str(self.work / "tfds")
    if v.endswith(".pth"):  # needs torch: the same tensors as .npz (README: .pth, .npz, ...)
      return str(self.work / "inputs" / (os.path.basename(v)[:-4] + ".npz"))
    if v.endswith(".h5"):
      return str(self.work / "inputs" / os.path.basename(v))
    if v.startswith("/tmp/") or v.startswith("/data/"):
      return str(self.work / v.lstrip("/"))
    if v in INPUT_FILES:
      return str(self.work / "inputs" / v)
    if v.startswith(("runs", "my_", "photos", "out/", "exported/")) or v.endswith(".json"):
      return str(self.work / v)
    return value

  def argv(self, cmd):
    """(argv to run, extra flags added) for a README command."""
    program = cmd.program
    out, extra = [], []
    preset_of = {}
    for tok in cmd.argv:
      name, eq, value = tok.partition("=")
      if tok.startswith("--") and eq:
        if name == "--config":
          path, _, preset = value.partition(":")
          preset_of[name] = (path, preset or "coco")
          value = f"{path}:smoke"
        elif name not in ("--name", "--source", "--depth", "--config.eval.mode"):
          value = self.path(value)
        tok = f"{name}={value}"
      out.append(tok)
    flags = cmd.flags
    if "--config" in preset_of:
      path, preset = preset_of["--config"]
      if program == "python evaluate.py" and "--config.eval.mode" not in flags:
        # the preset's evaluation mode, where smoke's differs
        mode = _config_value(path, preset, "eval.mode")
        if mode != _config_value(path, "smoke", "eval.mode"):
          extra.append(f"--config.eval.mode={mode}")
      if path == "configs/branches.py":
        extra.append(f"--config.dataset.data_dir={self.work / 'tfds'}")
        if preset.startswith("coco"):  # the real COCO samples, at smoke size
          extra += ["--config.dataset.name=coco_keypoints",
                    f"--config.dataset.train_ann={SAMPLE_ANN['person_keypoints_train2017.json']}",
                    f"--config.dataset.val_ann={SAMPLE_ANN['person_keypoints_val2017.json']}"]
          if "--config.dataset.coco_dir" not in flags:
            extra.append(f"--config.dataset.coco_dir={self.coco}")
    if program == "python evaluate.py" and flags.get("--config.eval.image_dir"):
      extra.append("--config.eval.max_images=8")
    if program == "python -m mpn_jax.weights" and flags.get("--source") == "torchvision":
      extra += [f"--stage_sizes={TINY_BACKBONE[0]}", f"--width={TINY_BACKBONE[1]}"]
    if program == "python -m mpn_jax.benchmark" and not {"--quick", "--model_size"} & set(flags):
      extra.append("--quick")
    if program == "python -m mpn_jax.quickstart" and "--preset" not in flags:
      extra.append("--preset=smoke")
    if program == "python -m mpn_jax.data.datasets" and flags.get("--name") == "coco_keypoints":
      extra += [f"--train_ann={SAMPLE_ANN['person_keypoints_train2017.json']}",
                f"--val_ann={SAMPLE_ANN['person_keypoints_val2017.json']}"]
    if program == "python predict.py" and "--output" in flags:
      # every input its own output folder (the pages send them all to out/)
      slug = re.sub(r"\W+", "_", f"{flags['--input']} {flags['--output']}").strip("_")
      out = [f"--output={self.work / 'predict' / slug}" if a.startswith("--output=") else a
             for a in out]
    if program == "python run_exported.py":  # the docs' loader, saved as the page says
      out = out[:1] + [str(self.work / "run_exported.py")] + [self.path(a) for a in out[2:]]
    if out[0] in ("python", "python3"):
      out[0] = sys.executable
    elif out[0] == "tensorboard":
      out[0] = str(pathlib.Path(sys.executable).parent / "tensorboard")
    return out + extra, extra


_CONFIG_CACHE = {}


def _config_value(path, preset, field):
  key = (path, preset, field)
  if key not in _CONFIG_CACHE:
    import importlib.util  # pylint: disable=g-import-not-at-top
    spec = importlib.util.spec_from_file_location(f"_readme_config_{len(_CONFIG_CACHE)}",
                                                  REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    value = module.get_config(preset)
    for part in field.split("."):
      value = value[part]
    _CONFIG_CACHE[key] = value
  return _CONFIG_CACHE[key]


# ------------------------------------------------------------------------------- the scenario


class Scenario:
  """Runs README commands (adapted), first the ones whose outputs they read."""

  def __init__(self, runner, adapter, work):
    self.runner, self.adapter, self.work = runner, adapter, pathlib.Path(work)

  def producers(self, cmd):
    """README commands that must run before cmd: the training runs of the workdirs it reads (and
    an earlier run in its own workdir: running again resumes), the conversion of the weights it
    starts from."""
    f = cmd.flags
    needs = []
    if cmd.program == "python train.py":
      needs.append(("train", f.get("--workdir"), True))
    for name in ("--workdir",):
      if cmd.program != "python train.py" and f.get(name):
        needs.append(("train", f[name], False))
    if f.get("--model"):  # a model folder: its two stages' workdirs, or a quickstart's workdir
      needs += [("train", f"{f['--model']}/branches", False), ("train", f"{f['--model']}/prn", False),
                ("quickstart", f["--model"], False)]
    if f.get("--config.init_from"):  # converted weights, or another run's workdir
      needs.append(("weights", f["--config.init_from"], False))
      needs.append(("train", f["--config.init_from"], False))
    if cmd.program == "tensorboard":
      needs.append(("train_under", f.get("--logdir"), False))
    if cmd.program == "python run_exported.py":  # the export folder it loads
      needs.append(("export", cmd.argv[2], False))
    # Commands that build the same TFDS dataset: the first one in the README builds it.
    kind = self.dataset_kind(cmd)
    if kind:
      first = next(c for c in COMMANDS if self.dataset_kind(c) == kind)
      if first is not cmd and first.text != cmd.text:
        needs.append(("command", first, False))
    here = next((i for i, c in enumerate(COMMANDS) if c is cmd), len(COMMANDS))
    out = []
    for kind, value, earlier_only in needs:
      if kind == "command":
        out.append(value)
        continue
      for other in COMMANDS:
        if other is cmd or (earlier_only and COMMANDS.index(other) > here):
          continue
        of = other.flags
        if kind == "train" and other.program == "python train.py" and \
            of.get("--workdir") == value:
          out.append(other)
          break
        if kind == "weights" and other.program == "python -m mpn_jax.weights" and \
            self.adapter.path(of.get("--output", "")) == self.adapter.path(value):
          out.append(other)
          break
        if kind == "quickstart" and other.program == "python -m mpn_jax.quickstart" and \
            of.get("--workdir") == value:
          out.append(other)
          break
        if kind == "export" and other.program == "python export.py" and \
            of.get("--output") == value:
          out.append(other)
          break
        if kind == "train_under" and other.program == "python train.py" and \
            (of.get("--workdir") or "").startswith(value + "/"):
          out.append(other)
          break
    return out

  def dataset_kind(self, cmd):
    """The TFDS dataset name the adapted command builds or reads (coco_keypoints, mpn_synthetic), or
    None."""
    argv, _ = self.adapter.argv(cmd)
    if cmd.program == "python -m mpn_jax.data.datasets":
      return cmd.flags.get("--name")
    if not any(a.startswith("--config.dataset.data_dir=") for a in argv):
      return None
    return "coco_keypoints" if "--config.dataset.name=coco_keypoints" in argv else "mpn_synthetic"

  def run(self, cmd, check=True):
    for dep in self.producers(cmd):
      self.run(dep)
    if cmd.program == "python -m mpn_jax.weights":
      self.make_weights_input(cmd)
    for name in ("--images", "--input"):
      if name in cmd.flags and cmd.program != "python -m mpn_jax.weights":
        self.make_input(self.adapter.path(cmd.flags[name]))
    if cmd.program == "python run_exported.py":
      self.make_loader()
      for arg in cmd.argv[3:4]:
        self.make_input(self.adapter.path(arg))
    argv, _ = self.adapter.argv(cmd)
    return self.runner.run(argv, check=check)

  def make_weights_input(self, cmd):
    """The input file of a weights conversion: torchvision-named tensors of the tiny backbone
    (.npz), or a Keras ResNet50's weights saved as the README's comment says (no download)."""
    path = pathlib.Path(self.adapter.path(cmd.flags["--input"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(str(path) + ".lock"):
      if path.exists():
        return
      if cmd.flags["--source"] == "torchvision":
        import numpy as np  # pylint: disable=g-import-not-at-top
        from test_weights import torchvision_state_dict  # pylint: disable=g-import-not-at-top
        sd = torchvision_state_dict(tuple(int(s) for s in TINY_BACKBONE[0].split(",")),
                                    width=int(TINY_BACKBONE[1]))
        np.savez(path, **sd)
      else:
        code = ("import keras; keras.applications.ResNet50(weights=None, include_top=False)"
                f".save_weights({str(path)!r})")
        proc = subprocess.run([sys.executable, "-c", code], env=self.runner.env,
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]

  def make_input(self, path):
    """What a page's `--input` (or the loader's image) names: a webcam index (nothing to make), a
    video (a short clip written with PyAV), a photo, a glob of photos, or a folder of photos."""
    kind = _source_kind(path)
    if kind == "camera":
      return
    target = pathlib.Path(path)
    key = hashlib.sha1(path.encode()).hexdigest()[:16]
    (self.work / "runs_done").mkdir(parents=True, exist_ok=True)
    with _locked(self.work / "runs_done" / f"input_{key}.lock"):
      if not glob.has_magic(path):
        target.parent.mkdir(parents=True, exist_ok=True)
      if kind == "video":
        if not target.exists():
          from test_video import _make_video  # pylint: disable=g-import-not-at-top
          _make_video(target.with_name("tmp_" + target.name))
          os.replace(target.with_name("tmp_" + target.name), target)
      elif target.suffix.lower() in (".jpg", ".jpeg", ".png") and not glob.has_magic(path):
        if not target.exists():
          name = sorted(os.listdir(COCO_DIR / "val2017"))[-1]
          shutil.copy(COCO_DIR / "val2017" / name, target)
      elif glob.has_magic(path):  # the folder before the first wildcard
        parts = pathlib.Path(path).parts
        self.make_photos(pathlib.Path(*parts[:next(i for i, p in enumerate(parts)
                                                   if glob.has_magic(p))]))
      else:
        self.make_photos(path)

  def make_loader(self):
    """docs/export.md's loader script, saved as run_exported.py (as the page says)."""
    script = self.work / "run_exported.py"
    if not script.exists():
      tmp = self.work / f"run_exported.{os.getpid()}.tmp"
      tmp.write_text(_docs_loader())
      os.replace(tmp, script)

  @staticmethod
  def make_photos(folder):
    """A folder of two real photos (COCO val2017 samples), for `--images=my_photos/`."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(COCO_DIR / "val2017"))[:2]:
      if not (folder / name).exists():
        shutil.copy(COCO_DIR / "val2017" / name, folder / name)


@pytest.fixture(scope="session")
def scenario(runner, work, coco_dir):
  return Scenario(runner, Adapter(work, coco_dir), work)


# -------------------------------------------------------------------------------- the checks


def _stage_workdir(scenario, cmd):
  return pathlib.Path(scenario.adapter.path(cmd.flags["--workdir"]))


def _steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if d.is_dir() else []


def check_train(scenario, cmd):
  earlier = [c for c in scenario.producers(cmd) if c.program == "python train.py"
             and c.flags.get("--workdir") == cmd.flags.get("--workdir")]
  result = scenario.run(cmd)
  workdir = _stage_workdir(scenario, cmd)
  path, _ = cmd.flags["--config"].partition(":")[::2]
  num_steps = _config_value(path, "smoke", "train.num_steps")
  assert _steps(workdir) and _steps(workdir)[-1] == num_steps, (workdir, _steps(workdir))
  assert glob.glob(str(workdir / "**" / "events.out.tfevents.*"), recursive=True), \
      f"no TensorBoard events in {workdir}"
  if earlier:  # the same --workdir again: resumes from the latest checkpoint
    assert f"resumed from {workdir / 'checkpoints'}/{num_steps}" in result.stderr, \
        _failure(cmd.argv, result)
  elif cmd.flags.get("--config.init_from"):
    assert "initialised from" in result.stderr, _failure(cmd.argv, result)


def _stats_file(scenario, cmd):
  f = cmd.flags
  if f.get("--config.eval.output"):
    return pathlib.Path(scenario.adapter.path(f["--config.eval.output"]))
  argv, _ = scenario.adapter.argv(cmd)
  mode = [a.split("=", 1)[1] for a in argv if a.startswith("--config.eval.mode=")]
  mode = mode[-1] if mode else _config_value(f["--config"].split(":")[0], "smoke", "eval.mode")
  return _stage_workdir(scenario, cmd) / "eval" / f"{mode}_stats.json"


# An absl log line, Python ("I1203 04:29:25.749479 1398501 checkpointer.py:368] ...") or native
# ("I0000 00:00:1796271970.928219   17288 tf_record_dataset_op.cc:396] ...").
_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")


def check_evaluate(scenario, cmd):
  result = scenario.run(cmd)
  if "--config" in cmd.flags:
    stats_file = _stats_file(scenario, cmd)
    assert f"statistics written to {stats_file}" in result.stdout, _failure(cmd.argv, result)
  else:  # --model: the statistics go where the model's config says
    found = re.findall(r"statistics written to (\S+)", result.stdout)
    assert found, _failure(cmd.argv, result)
    stats_file = pathlib.Path(found[-1])
  stats = json.loads(stats_file.read_text())
  names = [k.split("/")[-1] for k in stats]
  assert set(STAT_NAMES) <= set(names), stats
  # The breakdown's worst image is an image id and a count of pairs, not a fraction.
  counts = {k: stats.pop(k) for k in ("worst_image_id", "worst_image_errors") if k in stats}
  assert all(isinstance(v, int) for v in counts.values()), counts
  # COCOeval gives -1 where a statistic has no ground truth (e.g. no large people at 64 px)
  assert all(v == -1 or 0.0 <= v <= 1.0 for v in stats.values()), stats
  assert "AP50" in result.stdout  # the printed table
  # Only the tool's own lines: no absl-formatted log lines of the libraries (Orbax restores,
  # TFDS builders, JAX backends, TensorFlow's native readers), Python's or native.
  library_lines = [line for line in result.stderr.splitlines() if _LOG_LINE.match(line)]
  assert not library_lines, "\n".join(library_lines[:10])


def check_predict(scenario, cmd):
  result = scenario.run(cmd)
  images = sorted(os.listdir(scenario.adapter.path(cmd.flags["--images"])))
  output = pathlib.Path(scenario.adapter.path(cmd.flags["--output"]))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for name in images:
    png = output / (os.path.splitext(name)[0] + ".png")
    with Image.open(COCO_DIR / "val2017" / name) as src, Image.open(png) as drawn:
      assert drawn.size == src.size, (png, drawn.size, src.size)  # drawn on the original pixels
  predictions = json.loads((output / "predictions.json").read_text())  # COCO keypoint results
  assert {r["file_name"] for r in predictions} <= set(images)
  assert f"{len(images)} pictures written to {output}" in result.stdout


VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")


def _source_kind(path):
  """'camera', 'video' or 'images' (as mpn_jax.inference.video.source_kind decides, for the
  inputs the pages name; the real decision is checked by the runs themselves)."""
  if path.strip().isdigit() and not os.path.exists(path):
    return "camera"
  return "video" if path.lower().endswith(VIDEO_EXTENSIONS) else "images"


def _run_flag(scenario, cmd, name):
  """The value of a flag in the command as it runs here (adapted)."""
  argv, _ = scenario.adapter.argv(cmd)
  return Command(tuple(argv), 0, "").flags[name]


def check_predict_model(scenario, cmd):
  # `python predict.py --model=DIR --input=SOURCE --output=FOLDER` (the model layout).
  if "--help" in cmd.flags:  # `python predict.py --help`: the flags are listed
    argv, _ = scenario.adapter.argv(cmd)
    result = scenario.runner.run(argv, check=False)
    for flag in ("--model", "--input", "--output", "--runtime", "--min_score"):
      assert f"  {flag}:" in result.stdout, (flag, result.stdout[-2000:])
    return
  source = scenario.adapter.path(cmd.flags["--input"])
  kind = _source_kind(source)
  if kind == "camera":
    _check_predict_webcam(scenario, cmd)
    return
  runtime = cmd.flags.get("--runtime") or "jax"
  if runtime != "jax" and _runtime_missing(runtime):
    pytest.skip(f"--runtime={runtime} needs the export extra (pip install -e \".[export]\"): "
                f"{', '.join(_runtime_missing(runtime))} not installed")
  _openvino_bf16_refused(scenario, cmd)
  result = scenario.run(cmd)
  output = pathlib.Path(_run_flag(scenario, cmd, "--output"))
  if kind == "video":
    _check_predict_video(cmd, source, output, result)
    return
  if os.path.isdir(source):
    inputs = [os.path.join(source, n) for n in os.listdir(source)]
  else:  # one file, or a glob ('**' reaches sub-folders)
    inputs = glob.glob(source, recursive=True)
  images = sorted(os.path.basename(p) for p in inputs)
  written = sorted(n for n in os.listdir(output) if n.endswith(".png"))
  assert len(written) == len(images), (written, images, result.stdout[-2000:])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for path in inputs:  # drawn at the image's own size
    png = output / (os.path.splitext(os.path.basename(path))[0] + ".png")
    with Image.open(path) as src, Image.open(png) as drawn:
      assert drawn.size == src.size, (png, drawn.size, src.size)
  predictions = json.loads((output / "predictions.json").read_text())  # COCO keypoint results
  assert {r["file_name"] for r in predictions} <= set(images), predictions[:3]
  for r in predictions:
    assert r["category_id"] == 1 and len(r["keypoints"]) == 51 and len(r["bbox"]) == 4, r
    assert r["score"] >= float(cmd.flags.get("--min_score") or 0.1), r


def _check_predict_video(cmd, source, output, result):
  """OUT/<stem>.mp4: H.264, the source's size and rate, one frame per source frame (or
  --max_frames); OUT/<stem>.json: one entry per frame, at the source's times."""
  import av  # pylint: disable=g-import-not-at-top
  stem = os.path.splitext(os.path.basename(source))[0]
  assert sorted(os.listdir(output)) == [MANIFEST, f"{stem}.json", f"{stem}.mp4"], \
      (os.listdir(output), result.stdout[-2000:])

  def read(path):
    with av.open(str(path)) as c:
      s = c.streams.video[0]
      times = [float(f.time) for f in c.decode(s)]
      return s.codec_context.name, s.average_rate, s.width, s.height, times

  _, src_rate, width, height, src_times = read(source)
  codec, rate, out_w, out_h, times = read(output / f"{stem}.mp4")
  n = len(src_times)
  if int(cmd.flags.get("--max_frames") or 0):
    n = min(n, int(cmd.flags["--max_frames"]))
  assert codec == "h264" and rate == src_rate and (out_w, out_h) == (width, height), \
      (codec, rate, src_rate, out_w, out_h, width, height)
  assert len(times) == n, (len(times), n)
  doc = json.loads((output / f"{stem}.json").read_text())
  assert (doc["width"], doc["height"]) == (width, height) and doc["fps"] == float(src_rate), doc
  assert [f["frame"] for f in doc["frames"]] == list(range(n))
  assert [round(f["time_s"], 6) for f in doc["frames"]] == [round(t, 6) for t in src_times[:n]]
  min_score = float(cmd.flags.get("--min_score") or 0.1)
  for frame in doc["frames"]:
    for person in frame["people"]:
      assert len(person["keypoints"]) == 17 and len(person["box"]) == 4, person
      assert person["score"] >= min_score, person


def _check_predict_webcam(scenario, cmd):
  """`--input=0`: no camera here. predict.py's own flag definitions (mpn_jax.tools.predict) parse and validate the
  command's flags (required ones, --draw, --max_frames, --batch_size), and the input is taken as
  webcam 0 (/dev/video0 on Linux). Recording from a (faked) webcam: tests/test_video.py."""
  argv, _ = scenario.adapter.argv(cmd)
  code = ("import sys; sys.argv = " + repr(["predict.py", *argv[2:]]) + "\n"
          "from mpn_jax.tools import predict  # the flags predict.py runs with\n"
          "from absl import flags\n"
          "flags.FLAGS(sys.argv)\n"
          "from mpn_jax.inference import video\n"
          "print('kind', video.source_kind(flags.FLAGS.input))\n"
          "print('device', video.camera_device(int(flags.FLAGS.input), 'linux')[0])\n")
  result = scenario.runner.run([sys.executable, "-c", code])
  assert "kind camera" in result.stdout and "device /dev/video0" in result.stdout, \
      _failure(argv, result)
  source = (REPO / "tests" / "test_video.py").read_text()
  assert "def test_a_webcam_runs_until_max_frames_or_ctrl_c" in source
  assert 'monkeypatch.setattr(video, "Camera", _FakeCamera)' in source


def _openvino_bf16_refused(scenario, cmd):
  """On a CPU without bfloat16 instructions (no AVX512_BF16 or AMX: AVX2-only machines), an
  OpenVINO bf16 command must stop with the one documented line; checks that and skips the rest
  (the run itself needs such a CPU). False where the command can run."""
  runtime = cmd.flags.get("--runtime") or "jax"
  if runtime != "openvino" or "bf16" not in (cmd.flags.get("--precision") or "").split(","):
    return False
  from mpn_jax.inference import runtimes  # pylint: disable=g-import-not-at-top
  if runtimes.openvino_has_bf16():
    return False
  result = scenario.run(cmd, check=False)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode != 0 and len(lines) == 1, _failure(cmd.argv, result)
  assert "--precision=bf16: this CPU has no bfloat16 instructions" in lines[0], lines
  pytest.skip("this CPU has no bfloat16 instructions (AVX512_BF16 / AMX): checked the one-line "
              "refusal; the bf16 run needs such a CPU")


def _runtime_missing(runtime):
  import importlib.util  # pylint: disable=g-import-not-at-top
  return [m for m in ONNX_MODULES + (runtime,) if importlib.util.find_spec(m) is None]


def _onnx_missing():
  import importlib.util  # pylint: disable=g-import-not-at-top
  return [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]


def check_export(scenario, cmd):
  fmt = cmd.flags["--format"]
  if fmt == "onnx" and _onnx_missing():
    pytest.skip(f"--format=onnx needs the export extra (pip install -e \".[export]\"): "
                f"{', '.join(_onnx_missing())} not installed")
  result = scenario.run(cmd)
  output = pathlib.Path(_run_flag(scenario, cmd, "--output"))
  assert f"exported {fmt} to {output}" in result.stdout, _failure(cmd.argv, result)
  assert set(EXPORT_FILES[fmt]) <= set(os.listdir(output)), sorted(os.listdir(output))
  manifest = json.loads((output / "manifest.json").read_text())
  size = manifest["preprocessing"]["size"]
  if fmt == "stablehlo":
    want = (cmd.flags.get("--platforms") or "cpu,cuda,tpu").split(",")
    assert manifest["platforms"] == want, manifest["platforms"]
    assert set(manifest["outputs"]) == {"keypoints", "scores", "boxes", "box_scores", "valid"}
    if cmd.flags.get("--assign_method"):
      assert manifest["config"]["inference"]["assign_method"] == cmd.flags["--assign_method"]
  else:  # the network: an input [B, S, S, 3], B as --batch_size fixes it (onnx) or dynamic
    batch = int(cmd.flags.get("--batch_size") or 0) or "B"
    assert manifest["inputs"]["images"]["shape"] == [batch, size, size, 3], manifest["inputs"]
  if fmt == "onnx":
    import onnx  # pylint: disable=g-import-not-at-top
    model = onnx.load(str(output / "multiposenet.onnx"))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["keypoints", "cls_logits", "box_deltas"]


def check_run_exported(scenario, cmd):
  # `python run_exported.py EXPORT_DIR ...`: docs/export.md's loader script (saved as the page
  # says), on the export of the page's stablehlo command.
  if cmd.argv[3].endswith(".npz"):
    # tests/test_export.py runs this very block on an .npz, in a fresh process that cannot import
    # mpn_jax, and compares the outputs bit for bit: not run a second time here.
    source = (REPO / "tests" / "test_export.py").read_text()
    assert "<!-- loader: run_exported.py -->" in source and "'in.npz', 'out.npz'" in source
    assert "def test_the_docs_loader_runs_without_mpn_jax" in source
    assert cmd.argv[4:] and cmd.argv[4].endswith(".npz"), cmd.argv
    return
  result = scenario.run(cmd)  # a photo: letterboxed with Pillow, the people printed
  assert "Traceback" not in result.stderr, _failure(cmd.argv, result)
  for line in result.stdout.splitlines():
    assert re.fullmatch(r"image 0 person \d+: score \S+ box \[.*\]", line), line


def _docs_loader():
  """docs/export.md's loader script (the ```python block after `<!-- loader: run_exported.py -->`,
  as tests/test_export.py takes it)."""
  m = re.search(r"<!-- loader: run_exported.py -->\s*```python\n(.*?)```",
                page_text("docs/export.md"), re.S)
  assert m, "docs/export.md lost its loader script"
  return m.group(1)


def check_jax_extra(scenario, cmd):
  # `pip install -U "jax[cuda12]"`: the GPU/TPU build of the JAX this project pins (not run here).
  del scenario
  assert cmd.argv[:3] == ("pip", "install", "-U") and len(cmd.argv) == 4, cmd.argv
  m = re.fullmatch(r"jax\[([\w-]+)\]", cmd.argv[3])
  assert m, cmd.argv
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  assert m.group(1) in importlib.metadata.metadata("jax").get_all("Provides-Extra"), m.group(1)


def check_weights(scenario, cmd):
  result = scenario.run(cmd)
  out = pathlib.Path(scenario.adapter.path(cmd.flags["--output"]))
  meta = json.loads(pathlib.Path(str(out) + ".json").read_text())
  variant, eps = ("v1.5", 1e-5) if cmd.flags["--source"] == "torchvision" else ("v1", 1.001e-5)
  assert meta["variant"] == variant and abs(meta["bn_epsilon"] - eps) < 1e-12, meta
  assert f"--config.init_from={out}" in result.stdout
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  from mpn_jax import weights  # pylint: disable=g-import-not-at-top
  if cmd.flags["--source"] == "keras":
    # README: train Keras weights with these two overrides; init_from refuses the default variant.
    cfg = _parsed_config("configs/branches.py", ["--config.model.backbone.variant=v1",
                                                 "--config.model.backbone.bn_epsilon=1.001e-5"])
    restored = weights.restore_pretrained(out, cfg.model.backbone)
    assert set(restored["params"]) == {"backbone"}
    with pytest.raises(ValueError, match="variant"):
      weights.restore_pretrained(out, models.multiposenet_config().backbone)
  if cmd.flags["--input"].endswith(".pth"):
    # .pth needs torch: without it, a clear error instead of a traceback.
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      pth = scenario.work / "inputs" / "plain.pth"
      pth.write_bytes(b"")
      argv = [a if not a.startswith("--input=") else f"--input={pth}"
              for a in scenario.adapter.argv(cmd)[0]]
      argv = [a if not a.startswith("--output=") else f"--output={out}_pth" for a in argv]
      proc = scenario.runner.run(argv, check=False)
      assert proc.returncode != 0 and "torch" in proc.stderr and "Traceback" not in proc.stderr, \
          _failure(argv, proc)


BENCHMARK_KEYS = {  # README: the JSON keys of each part
    "peak": ("matmul_peak_flops_per_s",),
    "forward": ("forward_images_per_s_bs1", "forward_flops_per_image"),
    "pipeline": ("pipeline_images_per_s_bs1",),
    "prn": ("prn_us_per_person",),
    "train_branches": ("train_branches_images_per_s",),
    "train_prn": ("train_prn_people_per_s",),
    "input": ("input_images_per_s", "input_images_per_s_per_core"),
    "peer": ("peer_best_forward_images_per_s_bs1", "peer_prn_best_us_per_person"),
}


def check_benchmark(scenario, cmd):
  runtime = cmd.flags.get("--runtime") or "jax"
  if runtime != "jax" and _runtime_missing(runtime):
    pytest.skip(f"--runtime={runtime} needs the export extra (pip install -e \".[export]\"): "
                f"{', '.join(_runtime_missing(runtime))} not installed")
  default = [p for p in BENCHMARK_KEYS
             if p != "peer" and (p != "input" or cmd.flags.get("--input_coco_dir"))]
  parts = (cmd.flags.get("--parts") or ",".join(default)).split(",")
  if "peer" in parts and importlib.util.find_spec("torch") is None:
    pytest.skip('--parts=peer needs PyTorch (pip install -e ".[peer]"), not installed')
  _openvino_bf16_refused(scenario, cmd)
  result = scenario.run(cmd)
  out = json.loads(pathlib.Path(scenario.adapter.path(cmd.flags["--output"])).read_text())
  for key in sum((BENCHMARK_KEYS[p] for p in parts), ("peak_memory_bytes", "device")):
    assert key in out, (key, sorted(out))
  if "forward" in parts:
    assert out["forward_images_per_s_bs1"] > 0 and out["forward_flops_per_image"] > 0
  if "peer" in parts and "pipeline" in parts:
    assert out["pipeline_over_peer_best_bs1"] > 0
  dtypes = {"fp32": "float32", "bf16": "bfloat16"}
  for precision in (cmd.flags.get("--precision") or "fp32").split(","):
    dtype = dtypes[precision]
    assert (f"[{dtype}] compiling" in result.stdout or f"[{dtype}] converting" in result.stdout
            or "forward" not in parts), dtype
  assert "wrote" in result.stdout


def check_show_targets(scenario, cmd):
  result = scenario.run(cmd)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  png = scenario.adapter.path(cmd.flags["--output"])
  with Image.open(png) as im:
    assert im.size[0] > 0 and im.size[1] > 0
  assert result.stdout.count("example ") == 4  # --num's default


def check_datasets(scenario, cmd):
  result = scenario.run(cmd)
  found = dict(re.findall(r"^(\w+): (\d+) examples", result.stdout, re.M))
  assert set(found) == {"train", "validation"}, result.stdout
  # Every image of the annotation files decodes (../shared's README): one example per image.
  argv, _ = scenario.adapter.argv(cmd)
  anns = dict(a[2:].split("=", 1) for a in argv if a.startswith(("--train_ann=", "--val_ann=")))
  for split, key in (("train", "train_ann"), ("validation", "val_ann")):
    with open(COCO_DIR / "annotations" / anns[key]) as f:
      assert int(found[split]) == len(json.load(f)["images"]), (split, result.stdout)


def check_tensorboard(scenario, cmd):
  # `--inspect` makes TensorBoard summarise the logs it would serve, then exit.
  for dep in scenario.producers(cmd):
    scenario.run(dep)
  argv, _ = scenario.adapter.argv(cmd)
  result = scenario.runner.run(argv + ["--inspect"])
  assert "train/loss" in result.stdout + result.stderr, _failure(argv, result)


def check_quickstart(scenario, cmd):
  # The whole quickstart (smoke preset) runs twice in tests/test_quickstart.py; here the flags.
  argv, _ = scenario.adapter.argv(cmd)
  result = scenario.runner.run(argv + ["--helpfull"], check=False)
  for flag in Command(tuple(argv), 0, "").flags:
    assert f"{flag}:" in result.stdout, (flag, result.stdout[-2000:])
  source = (REPO / "tests" / "test_quickstart.py").read_text()
  assert '"-m", "mpn_jax.quickstart", f"--workdir={workdir}", "--preset=smoke"' in source
  assert "test_first_run_trains_evaluates_and_draws" in source


def check_venv(scenario, cmd):
  del scenario
  assert cmd.argv[:3] == ("python3", "-m", "venv") and len(cmd.argv) == 4, cmd.argv
  import venv  # pylint: disable=g-import-not-at-top,unused-import  (the module the command runs)


def check_activate(scenario, cmd):
  del scenario
  assert cmd.argv == (".", ".venv/bin/activate"), cmd.argv  # the venv made just before


def _test_command_of_ci():
  text = (REPO / ".ci" / "run").read_text()
  marker = "# --- the README's test command (keep identical) ---\n"
  assert marker in text, ".ci/run lost its README test-command marker"
  return shlex.split(text.split(marker, 1)[1].splitlines()[0])


def check_pip_install(scenario, cmd):
  del scenario
  assert cmd.argv[:3] == ("pip", "install", "-e"), cmd.argv
  target = cmd.argv[3]
  import tomllib  # pylint: disable=g-import-not-at-top
  project = tomllib.loads((REPO / "pyproject.toml").read_text())
  base, _, extras = target.partition("[")
  assert base == ".", target
  assert project["build-system"]["build-backend"]
  for extra in filter(None, extras.rstrip("]").split(",")):
    assert extra in project["project"]["optional-dependencies"], extra
  # `pip install -e .` made this environment: the package is installed, editable, from this tree.
  import mpn_jax  # pylint: disable=g-import-not-at-top
  assert pathlib.Path(mpn_jax.__file__).resolve().parent == REPO / "mpn_jax"
  i = next(i for i, c in enumerate(COMMANDS) if c is cmd)
  after = COMMANDS[i + 1] if i + 1 < len(COMMANDS) else None
  if extras and after and after.program == "pytest" and after.line == cmd.line:
    # the README's test command: .ci/run runs exactly this install and pytest
    assert _test_command_of_ci() == [*cmd.argv, "&&", *after.argv]


def check_pytest(scenario, cmd):
  del scenario
  i = next(i for i, c in enumerate(COMMANDS) if c is cmd)
  assert _test_command_of_ci() == [*COMMANDS[i - 1].argv, "&&", *cmd.argv]
  assert cmd.argv[1:] == ("-n", "2")
  import xdist  # pylint: disable=g-import-not-at-top,unused-import  (-n needs pytest-xdist)


def check_installed_command(scenario, cmd):
  # The installed package's commands run end to end in tests/test_installed.py (a non-editable
  # install in a new venv, outside the checkout); here: the checkout's root script runs the same
  # module, the test runs it, and the command's flags are the module's.
  del scenario
  name = cmd.program.rsplit(".", 1)[1]
  assert f'cli.run_tool("mpn_jax.tools.{name}", "{name}.py")' in (REPO / f"{name}.py").read_text()
  assert f'"mpn_jax.tools.{name}"' in (REPO / "tests" / "test_installed.py").read_text()
  module = (REPO / "mpn_jax" / "tools" / f"{name}.py").read_text()
  for flag in cmd.flags:
    assert f'"{flag[2:].split(".")[0]}"' in module, (flag, name)


# (program regex, check, how it runs) -- first match wins. 'runs': the adapted command runs;
# 'static': checked without running it (see its check).
RULES = (
    (r"python train\.py", check_train, "runs"),
    (r"python evaluate\.py", check_evaluate, "runs"),
    (r"python -m mpn_jax\.predict", check_predict, "runs"),
    (r"python predict\.py", check_predict_model, "runs"),
    (r"python export\.py", check_export, "runs"),
    (r"python run_exported\.py", check_run_exported, "runs"),
    (r"python -m mpn_jax\.weights", check_weights, "runs"),
    (r"python -m mpn_jax\.benchmark", check_benchmark, "runs"),
    (r"python scripts/show_targets\.py", check_show_targets, "runs"),
    (r"python -m mpn_jax\.data\.datasets", check_datasets, "runs"),
    (r"tensorboard", check_tensorboard, "runs"),
    (r"python -m mpn_jax\.quickstart", check_quickstart, "flags"),
    (r"python -m mpn_jax\.tools\.(train|evaluate|predict|export)", check_installed_command,
     "static"),
    (r"python3 -m venv", check_venv, "static"),
    (r"\.", check_activate, "static"),
    (r"pip install", lambda scenario, cmd: (check_jax_extra if "-U" in cmd.argv
                                            else check_pip_install)(scenario, cmd), "static"),
    (r"pytest", check_pytest, "static"),
)


def rule_of(cmd):
  for pattern, check, how in RULES:
    if re.fullmatch(pattern, cmd.program):
      return check, how
  return None, None


def _case_id(cmd):
  lines = "+".join(f"{os.path.basename(c.doc)}:L{c.line}" for c in COMMANDS if c.text == cmd.text)
  flags = " ".join(t for t in cmd.argv if t.startswith("--config=") or t.startswith("--source=")
                   or t.startswith("--config.eval.mode=") or t.startswith("--name=")
                   or t.startswith("--format=") or t == "--quick"
                   or (cmd.program == "python predict.py" and t.startswith("--input=")))
  return f"{lines}-{cmd.program}{(' ' + flags) if flags else ''}".replace(" ", "_")


_UNIQUE = [c for i, c in enumerate(COMMANDS)  # a command shown twice runs once
           if c.text not in {d.text for d in COMMANDS[:i]}]


def _params(cmds):
  return [pytest.param(c, id=_case_id(c)) for c in cmds]


# --------------------------------------------------------------------------------------- tests


def test_readme_parses_into_commands():
  programs = {c.program for c in COMMANDS}
  # The README's own blocks: if parsing broke, these would be missing.
  assert {"python train.py", "python evaluate.py", "python predict.py", "python -m mpn_jax.weights",
          "python -m mpn_jax.quickstart", "pytest", "python -m mpn_jax.benchmark", "pip install",
          "python export.py", "python run_exported.py"} <= programs, programs
  assert {c.doc for c in COMMANDS} == set(DOC_PAGES), {c.doc for c in COMMANDS}
  readme = [c.text for c in COMMANDS if c.doc == "README.md"]
  # The README keeps the quickstart, its figure, and the model-folder commands.
  assert "python -m mpn_jax.quickstart --workdir=runs/quickstart" in readme
  assert "`keypoint AP = 0.518`" in README.read_text()
  assert "python evaluate.py --model=runs/coco" in readme
  assert len(README.read_text().splitlines()) <= 210  # the front door: everything long in docs/
  assert all(c.argv and "\\" not in c.argv for c in COMMANDS)
  assert not any(t.startswith("#") for c in COMMANDS for t in c.argv)


def test_parser_on_a_known_text():
  text = ("x `python a.py --b=1`\n```bash\n# c\npython t.py --x=1 \\\n    --y=2  # z\n"
          "p -m venv v && q --r\n```\n`--config.k=3` and `trainable=detection`\n")
  got = [(c.argv, c.line, c.where) for c in readme_commands(text)]
  assert got == [(("python", "t.py", "--x=1", "--y=2"), 4, "bash"),
                 (("p", "-m", "venv", "v"), 6, "bash"), (("q", "--r"), 6, "bash"),
                 (("python", "a.py", "--b=1"), 1, "prose")]
  assert readme_prose_flags(text) == {"--config.k": ["3"],
                                      "--config.train.trainable": ["detection"]}


@pytest.mark.parametrize("cmd", COMMANDS, ids=[_case_id(c) for c in COMMANDS])
def test_every_readme_command_has_a_rule(cmd):
  check, _ = rule_of(cmd)
  assert check is not None, (
      f"{cmd.doc} line {cmd.line}: `{cmd.text}` matches no rule of tests/test_readme_commands.py "
      "RULES: add one that runs it (tiny substitutions) or checks it")


@pytest.mark.slow
@pytest.mark.parametrize("cmd", _params(_UNIQUE))
def test_readme_command_works(cmd, scenario):
  check, _ = rule_of(cmd)
  if check is None:
    pytest.fail(f"no rule for README line {cmd.line}: {cmd.text}")
  check(scenario, cmd)


# Flags named in the README's prose, and the run that exercises each (a README command plus them).
PROSE_RUNS = (
    # Stage one's second step: detection, the rest frozen, in a new workdir from the first
    # workdir (here docs/training.md's runs/synthetic/branches; the freezing itself:
    # tests/test_training.py).
    ("python train.py --config=configs/branches.py:synthetic --workdir=runs/prose_detection "
     "--config.train.trainable=detection --config.init_from=runs/synthetic/branches "
     "--config.train.learning_rate=3e-4"),
    # Test-time augmentation, on the synthetic pipeline evaluation of the README.
    ("python evaluate.py --model=runs/synthetic "
     "--config.inference.flip=True --config.inference.scales=0.75,1.0,1.25 "
     "--config.eval.output=runs/prose_tta.json"),
    # The training-target pictures in the whole-image mode.
    ("python scripts/show_targets.py --coco_dir=../shared/data/coco --center=letterbox "
     "--output=runs/prose_targets.png"),
    # The benchmark's selection flags (--quick would override the sizes: tiny sizes given here).
    ("python -m mpn_jax.benchmark --quick --runtime=onnxruntime --parts=forward,prn "
     "--output=/tmp/prose_ort.json"),
    ("python -m mpn_jax.benchmark --model_size=tiny --image_size=64 --peak_sizes=256 "
     "--parts=peak,forward --precision=fp32,bf16 --batch_sizes=1 --repeats=1 "
     "--output=/tmp/prose_b.json"),
    # docs/predict.md's options, on the video: 5 of its 12 frames, in batches of 2.
    ("python predict.py --model=runs/quickstart --input=clip.mp4 --output=out/prose "
     "--min_score=0 --min_keypoint_score=0.2 --draw=keypoints,skeleton --batch_size=2 "
     "--max_frames=5"),
    # docs/export.md's StableHLO options, and the ONNX export's fixed batch size (needs the extra).
    ("python export.py --model=runs/quickstart --format=stablehlo --assign_method=greedy "
     "--platforms=cpu --output=exported/prose_stablehlo"),
    ("python export.py --model=runs/quickstart --format=onnx --batch_size=2 "
     "--output=exported/prose_onnx"),
    # docs/predict.md's runtimes: JAX in bfloat16, and ONNX Runtime (needs the extra).
    ("python predict.py --model=runs/quickstart --input=clip.mp4 --output=out/prose_bf16 "
     "--runtime=jax --precision=bf16 --max_frames=2 --draw=none"),
    ("python predict.py --model=runs/quickstart --input=clip.mp4 --output=out/prose_ort "
     "--runtime=onnxruntime --precision=fp32 --max_frames=2 --draw=none"),
)
# Parsed (not run: they need several hosts or are the defaults run above), by the same
# config_flags machinery as train.py / evaluate.py, and checked to land in the config.
PROSE_PARSED = (
    ("configs/branches.py", "--config.distributed.coordinator_address=HOST:1234",
     ("distributed", "coordinator_address"), "HOST:1234"),
    ("configs/branches.py", "--config.distributed.num_processes=2",
     ("distributed", "num_processes"), 2),
    ("configs/branches.py", "--config.distributed.process_id=1", ("distributed", "process_id"), 1),
    ("configs/branches.py", "--config.train.trainable=all", ("train", "trainable"), "all"),
    ("configs/branches.py", "--config.dataset.keep_empty=0.1", ("dataset", "keep_empty"), 0.1),
    ("configs/branches.py", "--config.train.trainable=keypoints", ("train", "trainable"),
     "keypoints"),
    ("configs/branches.py", "--config.model.backbone.variant=v1",
     ("model", "backbone", "variant"), "v1"),
    ("configs/branches.py", "--config.model.backbone.bn_epsilon=1.001e-5",
     ("model", "backbone", "bn_epsilon"), 1.001e-5),
    # evaluate.py through a runtime (run in tests/test_runtimes.py through Predictor.load).
    ("configs/branches.py", "--config.inference.runtime=openvino", ("inference", "runtime"),
     "openvino"),
    ("configs/branches.py", "--config.inference.precision=bf16", ("inference", "precision"),
     "bf16"),
)


def _prose_command(text, line=0):
  return Command(tuple(shlex.split(text)), line, "prose-run")


def _parsed_config(path, overrides):
  """The config train.py would get for `--config=path` plus overrides (same absl/config_flags
  parsing, locked config)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["train.py", f"--config={REPO / path}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


@pytest.mark.slow
@pytest.mark.parametrize("text", PROSE_RUNS, ids=[f"prose-{i}" for i in range(len(PROSE_RUNS))])
def test_readme_prose_flags_work(text, scenario):
  cmd = _prose_command(text)
  check, _ = rule_of(cmd)
  check(scenario, cmd)
  if cmd.program == "python train.py" and cmd.flags.get("--config.init_from"):
    dep = pathlib.Path(scenario.adapter.path(cmd.flags["--config.init_from"]))
    assert _steps(dep), dep  # the workdir it started from was trained first


@pytest.mark.parametrize("path,flag,field,want", PROSE_PARSED, ids=[p[1] for p in PROSE_PARSED])
def test_readme_prose_flags_parse(path, flag, field, want):
  value = _parsed_config(path, [flag])
  for part in field:
    value = value[part]
  assert value == want


def test_misspelt_override_is_refused():
  # README: "a misspelt field is an error that suggests the right one"
  proc = subprocess.run([sys.executable, "train.py", "--config=configs/branches.py:smoke",
                         "--workdir=/nonexistent", "--config.train.learning_rat=3e-4"],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert "learning_rate" in proc.stderr, proc.stderr[-2000:]


def _exercised_flags(adapter):
  """Flag names (and values) passed by commands that run here."""
  seen = {}
  cmds = list(_UNIQUE) + [_prose_command(t) for t in PROSE_RUNS]
  for cmd in cmds:
    _, how = rule_of(cmd)
    if how in ("runs", "flags"):
      argv, _ = adapter.argv(cmd)
      for name, value in Command(tuple(argv), 0, "").flags.items():
        seen.setdefault(name, set()).add(value)
  for _, flag, _, _ in PROSE_PARSED:
    name, _, value = flag.partition("=")
    seen.setdefault(name, set()).add(value)
  return seen


def unexercised_flags(text, seen):
  """Flags of README text (commands and prose) that no command of `seen` passes, and values of
  the behaviour-selecting flags that none passes."""
  named = {}
  for cmd in readme_commands(text):
    for name, value in cmd.flags.items():
      named.setdefault(name, set()).add(value)
  for name, values in readme_prose_flags(text).items():
    named.setdefault(name, set()).update(values)
  missing = sorted(set(named) - set(seen))
  for name in ("--config.train.trainable", "--config.eval.mode", "--config.eval.assign",
               "--source", "--precision", "--runtime", "--config.inference.scales", "--preset"):
    want = {v for v in named.get(name, ()) if v is not None}
    missing += [f"{name}={v}" for v in sorted(want - seen.get(name, set()))]
  return missing


def test_every_readme_flag_is_exercised(tmp_path):
  seen = _exercised_flags(Adapter(tmp_path, COCO_DIR))
  text = "\n".join(page_text(doc) for doc in DOC_PAGES)
  missing = unexercised_flags(text, seen)
  assert not missing, f"README flags that no test command passes: {missing}"
  # The check itself: a flag or value added to the README without a run is reported.
  added = text + "\n`--config.train.new_field=1`, `--config.eval.mode=nonsense`\n"
  assert unexercised_flags(added, seen) == ["--config.train.new_field",
                                            "--config.eval.mode=nonsense"]


@pytest.mark.parametrize("doc", ALL_PAGES)
def test_readme_paths_exist(doc):
  """Files and folders a page names relative to the checkout (in backticks, also inside a
  longer code span such as `mpn_jax/evaluation/coco_io.py: run_coco_eval(...)`)."""
  text = page_text(doc)
  spans = re.findall(r"`([^`\n]+)`", text)
  found = set()
  for span in spans:
    found.update(re.findall(r"(?<![\w./])((?:configs|scripts|mpn_jax|tests|docs|\.ci)/[\w./]*\w)",
                            span))
  missing = sorted(rel for rel in found if not (REPO / rel).exists())
  assert not missing, f"{doc} names paths that do not exist: {missing}"
  if doc != "README.md":
    return
  require_shared()
  for name in re.findall(r"`(person_keypoints_val2017_prn_\w+\.json)`", text):
    assert (COCO_DIR / "annotations" / name).is_file(), name


@pytest.mark.parametrize("doc", ALL_PAGES)
def test_page_links_resolve(doc):
  """Relative links of README.md and docs/ point at files of the checkout."""
  text = re.sub(r"```.*?```", "", page_text(doc), flags=re.S)
  base = (REPO / doc).parent
  broken = []
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
      continue
    if not (base / target.split("#")[0]).exists():
      broken.append(target)
  assert not broken, f"{doc}: broken links {broken}"


def test_readme_index_lists_every_doc():
  text = README.read_text()
  for path in sorted((REPO / "docs").glob("*.md")):
    assert f"(docs/{path.name})" in text, f"README's documentation index lacks docs/{path.name}"


def test_license_matches_pyproject():
  import tomllib  # pylint: disable=g-import-not-at-top
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  assert project["license"] == {"text": "Apache-2.0"}
  text = (REPO / "LICENSE").read_text()
  assert "Apache License" in text and "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text


def test_readme_python_block_is_the_predictor_api():
  blocks = python_blocks(README.read_text())
  assert len(blocks) == 1, blocks
  source = blocks[0][1]
  assert "from mpn_jax import Predictor" in source
  assert 'Predictor.load("runs/quickstart")' in source
  assert len(source.strip().splitlines()) <= 5


@pytest.mark.slow
def test_readme_python_api_works(scenario):
  """The README's ```python block, run on the quickstart's (smoke) model and a real photo."""
  _, source = python_blocks(README.read_text())[0]
  quickstart = next(c for c in COMMANDS if c.program == "python -m mpn_jax.quickstart"
                    and c.flags.get("--workdir") == "runs/quickstart")
  scenario.run(quickstart)  # --preset=smoke
  model = scenario.adapter.path("runs/quickstart")
  photo = COCO_DIR / "val2017" / sorted(os.listdir(COCO_DIR / "val2017"))[0]
  source = source.replace('"runs/quickstart"', repr(model)).replace('"photo.jpg"', repr(str(photo)))
  check = """
import json
def get(name):
  return people[name] if isinstance(people, dict) else getattr(people, name)
k, b, s = (np.asarray(get(n)) for n in ("keypoints", "boxes", "scores"))
assert k.ndim == 3 and k.shape[1:] == (17, 3), k.shape
assert b.shape == (k.shape[0], 4) and s.shape == (k.shape[0],), (b.shape, s.shape)
print(json.dumps({"people": int(k.shape[0])}))
"""
  proc = subprocess.run([sys.executable, "-c", source + check], cwd=REPO, env=scenario.runner.env,
                        capture_output=True, text=True, timeout=TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
