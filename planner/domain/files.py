"""Checked file access: every read or write that fails becomes an :class:`InputError` naming the file.

Readers parse data only (JSON, TOML, UTF-8 text); nothing read is ever evaluated. Writers write
atomically (a temporary file in the same folder, then a rename), so a failed run leaves nothing
half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path

from planner.domain.errors import InputError, Problem


def _open(path: Path, label: str, kind: str = "a file", **mode):
    """``open(path, **mode)``; :class:`InputError` naming ``label`` when it cannot be opened."""
    try:
        return open(path, **mode)
    except FileNotFoundError:
        raise InputError(Problem(label, "", "file not found")) from None
    except IsADirectoryError:
        raise InputError(Problem(label, "", f"is a directory, expected {kind}")) from None
    except PermissionError:
        raise InputError(Problem(label, "", "cannot be read (permission denied)")) from None


def open_text(path: Path, label: str):
    """``path`` opened for reading as UTF-8 text; :class:`InputError` naming ``label`` if it cannot be."""
    return _open(path, label, mode="r", newline="", encoding="utf-8")


def read_json(path: Path, label: str | None = None):
    """The parsed JSON of ``path``; unreadable or malformed files become an :class:`InputError` naming it."""
    label = label or str(path)
    try:
        with open_text(Path(path), label) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(Problem(label, "", f"is not valid JSON: {exc.msg} (line {exc.lineno})")) from None
    except UnicodeDecodeError:
        raise InputError(Problem(label, "", "is not UTF-8 text")) from None
    except (RecursionError, ValueError) as exc:
        raise InputError(Problem(label, "", f"is not usable JSON: {type(exc).__name__}")) from None


def read_toml(path: Path, *, label: str | None = None) -> dict:
    """Parse a TOML file; unreadable or malformed files become an :class:`InputError` naming the file."""
    name = label or str(path)
    try:
        with _open(path, name, "a TOML file", mode="rb") as fh:
            return tomllib.load(fh)
    except UnicodeDecodeError:
        raise InputError(Problem(name, "", "is not UTF-8 text")) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(Problem(name, "", f"is not valid TOML: {exc}")) from None
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit conversion limit
        raise InputError(Problem(name, "", f"is not usable TOML: {exc}")) from None
    except RecursionError:
        raise InputError(Problem(name, "", "is nested too deeply to be an instance or card")) from None


def check_writable(path: str | os.PathLike, *, what: str = "", option: str = "") -> None:
    """Raise :class:`InputError` naming ``path`` (and ``option``, the command-line option that gave
    it) unless a file can be written there: its folder exists, is a folder and takes new files, and
    ``path`` is not itself a folder. Commands call it before any long work; nothing is left behind.
    ``what`` (e.g. "the profile") words the message."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    subject = f"cannot write {what}" if what else "cannot be written"

    def fail(reason: str) -> InputError:
        return InputError(Problem(str(path), option, f"{subject}: {reason}"))

    if target.is_dir():
        raise fail("it is a folder; give the name of a file")
    missing = folder
    while not missing.exists() and missing.parent != missing:
        missing = missing.parent
    if missing != folder and missing.exists() and not missing.is_dir():
        raise fail(f"{str(missing)!r} is a file, not a folder")
    if not folder.exists():
        raise fail(f"folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise fail(f"{str(folder)!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".probe")
    except OSError as exc:
        raise fail(f"no file can be created in {str(folder)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def write_atomic(path: str | os.PathLike, text: str, *, what: str = "", option: str = "") -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename it.

    The file gets an ordinary file's mode (``0o666`` less the umask). Raises :class:`InputError`
    naming ``path`` (and ``option``) when it cannot be written (:func:`check_writable`); ``what``
    (e.g. "the profile") words the message.
    """
    check_writable(path, what=what, option=option)
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    subject = f"cannot write {what}" if what else "cannot be written"
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it a normal file's mode
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise InputError(Problem(str(path), option, f"{subject}: {exc.strerror or exc}")) from None
