"""Reading the user's YAML and writing our outputs, with errors a person can act on.

A study or space file is a few kB of UTF-8, a handful of levels deep, with no or few aliases;
:func:`read_yaml` refuses, in one line and before anything else runs, what is far outside that
(binary or UTF-16 files, megabytes, thousands of levels, alias bombs) instead of meeting it as a
``UnicodeDecodeError``, ``RecursionError`` or ``MemoryError`` later.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from autocompress.errors import ConfigError

MAX_BYTES = 1_000_000   # shipped files are 1-3 kB; parsing 1 MB of YAML takes about 2 s
MAX_DEPTH = 32          # shipped files nest at most 5 levels; Python's recursion limit is ~1000
MAX_ALIASES = 64        # aliases (*name) in one file: sharing a few settings, not a bomb
MAX_NODES = 10_000      # values after expanding every alias; shipped files hold under 200
MAX_INT = 2**63         # an integer beyond 64 bits is a typo or an attack, in any field
PSEUDO = ("/proc", "/sys")  # kernel file systems: no output folder belongs there


class _Refused(yaml.YAMLError):
    """A document past one of the caps: what it was, what is allowed, and where."""

    def __init__(self, got: str, expected: str, mark: yaml.Mark | None) -> None:
        super().__init__(got)
        self.got, self.expected, self.problem_mark = got, expected, mark


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts, while composing, the nesting depth, the aliases and the
    size of the document with every alias expanded (an anchor's size and height are recorded
    once it is composed), so an alias bomb is refused before anything expands it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = self._deepest = self._nodes = self._aliases = 0
        self._open: set[str] = set()
        self._sizes: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, height)

    def _count(self, nodes: int, height: int, mark: yaml.Mark) -> None:
        self._nodes += nodes
        self._deepest = max(self._deepest, self._depth + height)
        if self._deepest > MAX_DEPTH:
            raise _Refused(f"YAML nested deeper than {MAX_DEPTH} levels",
                           f"at most {MAX_DEPTH} levels (study and space files use about 5)", mark)
        if self._nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} values (aliases expanded)",
                           f"at most {MAX_NODES} values, aliases counted as expanded", mark)

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases",
                               f"at most {MAX_ALIASES} aliases (*name)", event.start_mark)
            if event.anchor in self._open:
                raise _Refused(f"alias *{event.anchor} inside its own anchor",
                               "no self-containing value", event.start_mark)
            nodes, height = self._sizes.get(event.anchor, (1, 0))
            self._count(nodes, height, event.start_mark)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        start_nodes, outer_deepest = self._nodes, self._deepest
        self._deepest = self._depth
        self._depth += 1
        self._count(1, 0, event.start_mark)
        if anchor is not None:
            self._open.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)
        if anchor is not None:
            self._sizes[anchor] = (self._nodes - start_nodes, self._deepest - self._depth)
        self._deepest = max(outer_deepest, self._deepest)
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > 100:  # before int(): 5000 digits cost time, and str() refuses them
            raise _Refused(f"an integer written with {len(node.value)} characters",
                           "integers within 64 bits", node.start_mark)
        value = super().construct_yaml_int(node)
        if abs(value) >= MAX_INT:
            raise _Refused(f"the integer {value}", "integers within 64 bits", node.start_mark)
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _read_bytes(path: Path, what: str) -> bytes:
    """The file's bytes, at most :data:`MAX_BYTES`; a folder, device or FIFO is refused unread."""
    try:
        info = path.stat()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise _unreadable(path, exc, what) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(str(path), None, kind, f"a regular {what}")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _unreadable(path, exc, what) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(str(path), None, f"a file of {info.st_size} bytes",
                          f"a {what} of at most {MAX_BYTES} bytes (they hold a few kB)")
    return raw


def _unreadable(path: Path, exc: Exception, what: str) -> ConfigError:
    if getattr(exc, "errno", None) in (errno.ENOENT, errno.ENOTDIR):
        return ConfigError(str(path), None, "missing file", f"an existing {what}")
    return ConfigError(str(path), None, getattr(exc, "strerror", None) or str(exc),
                       f"a readable {what}")


def _decode(path: Path, raw: bytes, what: str) -> str:
    """UTF-8 text (a byte-order mark allowed); UTF-16/32 and binary files named as such."""
    boms = {"UTF-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
            "UTF-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)}
    for name, marks in boms.items():
        if raw.startswith(marks):
            raise ConfigError(str(path), None, f"{name} text",
                              f"a UTF-8 {what} (save it again as UTF-8)")
    zero = raw.find(b"\0")
    if zero >= 0:
        wide = raw[1::2].count(0) + raw[0::2].count(0) >= len(raw) // 3
        got = "UTF-16 text" if wide else f"binary data (a NUL byte at offset {zero})"
        raise ConfigError(str(path), None, got, f"a UTF-8 text {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}", None,
                          f"byte 0x{raw[exc.start]:02x}, which is not UTF-8",
                          f"a UTF-8 text {what}") from None


def read_yaml(path: str | Path, *, what: str) -> object:
    """Safe-load a YAML file (no tags that run code); a missing, binary, oversized, too deep or
    alias-bombed file, or bad YAML, is one ConfigError line naming the file and line."""
    path = Path(path)
    text = _decode(path, _read_bytes(path, what), what)
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a control character; the reader checks them first
        line = text[:exc.position].count("\n") + 1
        raise ConfigError(f"{path} line {line}", None,
                          f"the control character U+{exc.character:04X}",
                          f"printable text in a {what}") from None
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(f"{path}{_line(exc.problem_mark)}", None, exc.got,
                          f"{exc.expected} in a {what}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        context = str(getattr(exc, "context", None) or "")  # may quote an anchor: cut it
        context = f" ({context if len(context) <= 80 else context[:77] + '...'})" if context else ""
        raise ConfigError(f"{path}{_line(getattr(exc, 'problem_mark', None))}", None, problem,
                          f"a valid {what}{context}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # past the caps: still one line
        raise ConfigError(str(path), None, type(exc).__name__, f"a valid {what}") from None
    finally:
        loader.dispose()


def is_file(path: str | Path) -> bool:
    """``Path.is_file`` that answers False, not OSError, for a name too long to exist."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _line(mark: yaml.Mark | None) -> str:
    return f" line {mark.line + 1}" if mark is not None else ""


def check_output_folder(path: str | Path, *, where: str, field: str | None = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be created and written: a name
    too long for the file system, a file on the way, /proc or /sys, no permission, a read-only
    file system. A probe folder is created and removed in the nearest existing folder."""
    path = Path(path)

    def refuse(expected: str) -> ConfigError:
        return ConfigError(where, field, str(path), expected)

    if "\0" in str(path):
        raise refuse("a path without NUL characters")
    absolute = Path(os.path.abspath(path))
    existing = absolute
    while existing.parent != existing:  # the nearest folder (or file) that exists
        try:
            existing.stat()
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                raise refuse(f"a folder this user can reach ({exc.strerror})") from None
        existing = existing.parent
    if not existing.is_dir():
        raise refuse("a folder (this is a file)" if existing == absolute
                     else f"a folder, not a path below the file {existing}")
    name_max = _pathconf(existing, "PC_NAME_MAX", 255)
    if any(len(os.fsencode(part)) > name_max for part in absolute.parts):
        raise refuse(f"names of at most {name_max} bytes each (the file system's limit)")
    path_max = _pathconf(existing, "PC_PATH_MAX", 4096)
    if len(os.fsencode(str(absolute))) >= path_max:
        raise refuse(f"a path shorter than {path_max} bytes (the file system's limit)")
    real = existing.resolve()
    if any(real == Path(top) or Path(top) in real.parents for top in PSEUDO):
        raise refuse("a folder on a disk, not under /proc or /sys")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".autocompress-probe-"))
    except OSError as exc:
        raise refuse(f"a folder this user can create and write ({exc.strerror} in "
                     f"{existing})") from None
    return path


def _pathconf(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide outputs from other readers
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def study_lock(folder: Path, *, where: str, field: str | None = "--out",
               wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """One search drives a study folder at a time: an exclusive ``flock`` on the folder itself
    (the kernel drops it when the process dies, kill -9 included, so a killed search never
    leaves a stale lock). A second search of the same folder waits for the first, saying so
    through ``wait``, then resumes the study (which then holds its trials); without ``wait``
    it is refused in one line. The first one's worker processes do not take the lock. A
    folder created here and left empty by an error (a refusal before any output) is removed
    again."""
    import fcntl

    created = [p for p in (folder, *folder.parents) if not p.exists()]  # leaf first
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait is None:
                raise ConfigError(where, field, str(folder),
                                  "a study folder no other search is running in (one search "
                                  "per study: wait for it to finish, or give another folder)"
                                  ) from None
            wait(f"waiting: another search is running in {folder} (one search per study); "
                 f"this one resumes the study when it ends")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        except BaseException:
            for path in created:  # what this made, leaf upwards, while left empty
                if any(path.iterdir()):
                    break
                path.rmdir()
            raise
    finally:
        os.close(handle)
