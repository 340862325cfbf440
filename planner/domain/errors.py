"""Errors a user can act on.

Every error raised by moeplan derives from :class:`MoeplanError`. Input problems are
:class:`InputError`: they carry every problem found (not just the first), each naming the file,
the table and the field, so that one run tells the user everything to fix. The CLI turns an
``InputError`` into exit code 2 and never shows a traceback for it.
"""

from __future__ import annotations

from dataclasses import dataclass


class MoeplanError(Exception):
    """Base class of every moeplan error."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (file, field path) and what."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if not self.field else f"{self.file}: {self.field}"
        return f"{where}: {self.message}"


class InputError(MoeplanError):
    """Bad input: a file or value that cannot be used. Holds every problem found."""

    def __init__(self, problems: list[Problem] | Problem):
        if isinstance(problems, Problem):
            problems = [problems]
        if not problems:
            raise ValueError("InputError needs at least one problem")
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Collector:
    """Gathers problems while a file is checked, so that all of them are reported at once."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def add(self, field: str, message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.file, field, message))

    def extend(self, problems: list[Problem]) -> None:
        self.problems.extend(problems)

    def raise_if_any(self) -> None:
        if self.problems:
            raise InputError(self.problems)
