"""Text every machine has offline: the Python standard library's own source files, read as bytes.

The files are split by a hash of their path relative to the standard library (stable across
machines and runs): ``held-out`` (1 file in 20) for perplexity and accuracy figures,
``calibration`` (1 in 20) for fitting codecs and group gates, ``train`` (the rest). Test suites
(``test``, ``tests``, ``idle_test`` folders) and ``site-packages`` are left out. The tokenizer is the
identity on bytes: token id = byte value (vocabulary 256, no special tokens).

Different Python patch releases ship slightly different files, so figures measured on another
release differ a little; the accuracy table records the version it was measured on.
"""

from __future__ import annotations

import sys
import sysconfig
import zlib
from pathlib import Path

import numpy as np

SPLITS = ("train", "calibration", "held-out")
VOCAB_SIZE = 256
_SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relative_path: str) -> str:
    """The split a file belongs to, from the CRC-32 of its path relative to the standard library."""
    bucket = zlib.crc32(relative_path.encode("utf-8")) % 20
    return "held-out" if bucket == 0 else "calibration" if bucket == 1 else "train"


def files(split: str, root: Path | None = None) -> list[Path]:
    """The ``*.py`` files of ``split``, sorted by relative path."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = root or stdlib_root()
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIPPED_FOLDERS & set(rel.parts[:-1]):
            continue
        if split_of(rel.as_posix()) == split:
            out.append(path)
    return out


def read_bytes(split: str, root: Path | None = None) -> np.ndarray:
    """All files of ``split`` concatenated, each followed by a NUL byte: token ids, shape [bytes], uint8."""
    chunks = [p.read_bytes() + b"\0" for p in files(split, root)]
    if not chunks:
        raise ValueError(f"no *.py files of split {split!r} under {root or stdlib_root()}")
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def windows(data: np.ndarray, count: int, length: int, *, seed: int | None = None) -> np.ndarray:
    """``count`` windows of ``length`` tokens, shape [count, length], int64.

    ``seed`` None: evenly spaced windows (a fixed evaluation set); else random starts from that seed.
    """
    if len(data) < length + 1:
        raise ValueError(f"the text has {len(data)} bytes, fewer than one window of {length}")
    if seed is None:
        starts = np.linspace(0, len(data) - length - 1, count).astype(np.int64)
    else:
        starts = np.random.default_rng(seed).integers(0, len(data) - length - 1, size=count)
    return np.stack([data[s:s + length] for s in starts]).astype(np.int64)


def describe(root: Path | None = None) -> dict:
    """Where the text came from, for tables and training logs."""
    root = root or stdlib_root()
    return {
        "source": "Python standard library *.py files (test suites and site-packages left out)",
        "python_version": sys.version.split()[0],
        "split_rule": "crc32(path relative to the stdlib) % 20: 0 held-out, 1 calibration, else train",
        "files": {s: len(files(s, root)) for s in SPLITS},
    }
