"""Errors the user can fix: a bad flag, config value, input file or path.

The commands (`mpn_jax.cli.run`) print these as one line, `<command>: error: <message>`, and exit
with status 2; every other exception is a programming error and keeps its traceback. Each class
also derives from the builtin that callers caught before it existed (ValueError, FileNotFoundError,
RuntimeError), so `except ValueError` around a config check still works.

The message names the flag, config field or file and says what to do.
"""


class UserError(Exception):
  """A problem with what the user gave (flag, config, file, folder); the message says what to do."""


class ConfigError(UserError, ValueError):
  """A config field or command-line flag has an unusable value."""


class DataError(UserError, ValueError):
  """An input file (annotations, images, prepared records) is malformed, empty or mismatched."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the command needs does not exist."""


class WorkdirError(UserError, RuntimeError):
  """A workdir cannot be used: another run holds it, or it cannot be written."""


class CheckpointError(UserError, ValueError):
  """A checkpoint cannot be written (disk full, unwritable folder) or read, or is not one."""


class UnreadableCheckpointError(CheckpointError):
  """A saved step's files are damaged (truncated or corrupt array, metadata or metrics file)."""


def first_line(text, limit=600):
  """The first non-empty line of `text`, at most `limit` characters (error messages of libraries
  such as TensorStore run to many lines)."""
  for line in str(text).splitlines():
    line = line.strip()
    if line:
      return line if len(line) <= limit else line[:limit - 3] + "..."
  return ""


def one_line(text, limit=1200):
  """`text` as one line: its lines joined by "; "; past `limit` characters the middle is cut, so
  that the end (where messages say what to do) is kept."""
  joined = "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
  if len(joined) <= limit:
    return joined
  head = limit * 2 // 3
  return joined[:head] + " [...] " + joined[-(limit - head - 7):]


# strerror texts of the OS faults a user can act on, looked up in library messages (TensorStore
# reports "No space left on device" inside its own error text, not as an OSError).
_OS_CAUSES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
              "Permission denied", "Not a directory", "Is a directory", "File too large",
              "Input/output error", "No such file or directory", "File exists")


def os_cause(exc, default=True):
  """The operating-system cause of `exc` or of an exception in its chain ("No space left on
  device", ...); else the first line of its message (default=True) or None."""
  seen, e = set(), exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.strerror:
      return e.strerror
    text = str(e)
    for cause in _OS_CAUSES:
      if cause in text:
        return cause
    e = e.__cause__ or e.__context__
  return first_line(exc) if default else None
