"""The commands' shell: absl flags in, one line out for every error the user can fix.

`run(main, prog)` is `absl.app.run(main)` where
  * a bad flag or config override (misspelt field, unknown preset, missing config file, a value of
    the wrong type) prints `prog: error: ...` naming the flag, instead of a traceback;
  * `errors.UserError` raised by the library, and OS errors about a named path (unwritable folder,
    disk full) or about storage (disk full, file too large), print `prog: error: ...`;
and each of those exits with status 2; Ctrl-C prints one line and exits with 130. Every other
exception is a programming error: traceback.
"""

import errno
import importlib
import os
import re
import sys

from absl import app
from absl import flags

from mpn_jax import errors
from mpn_jax import logs

USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C

# A write that failed for want of room says so even where it names no file (a bare write()).
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)

# Errors config_flags raises while it loads a config file or applies a --config.* override.
_FLAG_PARSE_ERRORS = (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError)


def fail(prog, message):
  """Prints `prog: error: message` (one line) to stderr and exits with USER_ERROR_STATUS."""
  sys.stderr.flush()
  print(f"{prog}: error: {errors.one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(USER_ERROR_STATUS)


def describe_os_error(e):
  """'<path>: <cause>' for an OSError about a path, with a hint for the common causes."""
  path = e.filename if e.filename is not None else ""
  cause = e.strerror or str(e)
  if not path:
    return f"cannot write: {cause}" + (" (free some space or choose another disk)"
                                       if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")
  hints = {
      "File too large": "the file exceeds a size limit (ulimit -f or the file system's)",
      "Permission denied": "choose a folder you can write, or fix its permissions",
      "Read-only file system": "choose a folder on a writable file system",
      "No space left on device": "free some space or choose another disk",
      "Not a directory": "a file stands where a folder is needed: choose another path",
      "Is a directory": "a folder stands where a file is needed: choose another path",
      "File exists": "a file stands where a folder is needed: choose another path",
      "No such file or directory": "check the path",
  }
  hint = hints.get(cause)
  return f"{path}: {cause}" + (f" ({hint})" if hint else "")


def _override_flag(argv, key):
  """The --config.* argument whose dotted path contains `key` (to name it in the message)."""
  for arg in argv[1:]:
    name = arg.split("=", 1)[0]
    if name.startswith("--") and key in name.lstrip("-").split("."):
      return name
  return ""


def describe_flag_error(e, argv):
  """One line for an error raised while parsing flags / loading the config file."""
  text = str(e)
  if isinstance(e, (AttributeError, KeyError)):
    keys = re.findall(r"'(\w+)'", text.replace("\\'", "'"))
    suggestion = re.search(r'Did you mean \\?"(\w+)\\?"', text)
    key = keys[0] if keys else text
    flag = _override_flag(argv, key) or "--config"
    hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else (
        "; see the config file for the fields")
    return f"{flag}: the config has no field {key!r}{hint}"
  if "Overriding config is not allowed" in text:  # --config=FILE where the config is fixed
    given = next((a for a in argv[1:] if a.startswith("--config=")), "--config")
    return (f"{given}: this command reads the model's config from --model (saved with its "
            "checkpoints); give only field overrides, e.g. --config.eval.mode=prn_gt or "
            "--config.inference.flip=False")
  if isinstance(e, OSError) or "No such file or directory" in text:
    config_args = [a for a in argv[1:] if a.startswith("--config=") or a.startswith("--config ")]
    path = config_args[0].split("=", 1)[1].split(":")[0] if config_args else ""
    if path:
      return (f"--config={path}: config file not found (paths are relative to the current "
              "folder; e.g. --config=configs/branches.py from the repository root)")
  # absl wraps an error of the config file in its own text (source lines, the exception's class):
  # its last line is the message of the config file itself.
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if lines else type(e).__name__


_TOOL_PROG = None  # the prog a root script (train.py, ...) passed to run_tool


def tool_prog(default):
  """The prog of the command being run: the root script's name when run_tool started it (e.g.
  'evaluate.py'), else `default` (the module's own name, for `python -m mpn_jax.tools.evaluate`).
  For errors raised while a command module is imported, before `run`."""
  return _TOOL_PROG or default


def run_tool(module, prog):
  """Runs the command module `module` (e.g. 'mpn_jax.tools.predict') as `prog` (e.g. 'predict.py'):
  what the checkout's root scripts do. The module's docstring becomes the --help text."""
  global _TOOL_PROG
  _TOOL_PROG = prog
  tool = importlib.import_module(module)
  main_module = sys.modules.get("__main__")
  if main_module is not None and tool.__doc__:
    main_module.__doc__ = tool.__doc__  # absl's --help prints the __main__ module's docstring
  # ... and the flags key to the script (sys.argv[0]), where the tool module defines them.
  for flag in flags.FLAGS.get_key_flags_for_module(tool):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  run(tool.main, prog)


def run(main, prog):
  """absl.app.run(main) with user errors reported as one line (see the module docstring)."""

  def parse(argv):
    try:
      rest = flags.FLAGS(argv)
      for name in flags.FLAGS:  # config_flags defers a config file's load error to first use
        value = flags.FLAGS[name].value
        if type(value).__name__ == "_ErrorConfig":
          value.keys()
    except _FLAG_PARSE_ERRORS as e:
      hint = " (--helpfull lists the flags)" if isinstance(e, flags.Error) else ""
      fail(prog, describe_flag_error(e, argv) + hint)
    return rest

  def wrapped(argv):
    logs.quiet_library_logs()
    try:
      return main(argv)
    except errors.UserError as e:
      fail(prog, str(e))
    except OSError as e:
      if e.filename is None and e.errno not in _STORAGE_ERRNOS:
        raise  # not about a path the user gave nor the disk: a programming error
      fail(prog, describe_os_error(e))
    except KeyboardInterrupt:
      sys.stderr.flush()
      print(f"{prog}: interrupted (Ctrl-C); files already written are complete",
            file=sys.stderr, flush=True)
      sys.exit(INTERRUPTED_STATUS)

  app.run(wrapped, flags_parser=parse)


def import_tensorflow_quietly():
  """Imports TensorFlow (once) with what its native libraries write to the terminal while they
  load (the oneDNN notice and absl's "WARNING: All log messages before absl::InitializeLog() is
  called are written to STDERR", twice) sent to /dev/null, and its native INFO lines off: none of
  it is a warning a user can act on. Python errors raised by the import still surface. The
  packages through which TensorFlow comes in (mpn_jax.data; mpn_jax.training, for clu) call it
  before their imports."""
  if "tensorflow" in sys.modules:
    return
  # TensorFlow's native INFO lines (e.g. each TFRecord reader's buffer size) are not for users;
  # its warnings and errors still show. A value the user set is kept.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # no file descriptor 2 (an embedded interpreter): import as it is
    saved = None
  devnull = os.open(os.devnull, os.O_WRONLY) if saved is not None else None
  try:
    if devnull is not None:
      os.dup2(devnull, 2)
    # Here, not at the top: only while file descriptor 2 points to /dev/null.
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  finally:
    if saved is not None:
      os.dup2(saved, 2)
      os.close(saved)
      os.close(devnull)
