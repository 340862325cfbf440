"""Errors a user can act on.

Every error raised by moeplan derives from :class:`MoeplanError`. Input problems are
:class:`InputError`: they carry every problem found (not just the first), each naming the file,
the table and the field, so that one run tells the user everything to fix. A problem with a
command-line option has no file (``file == ""``) and the option as its field (:func:`option_error`).
The CLI turns an ``InputError`` into exit code 2 and never shows a traceback for it.
"""

from __future__ import annotations

from dataclasses import dataclass


class MoeplanError(Exception):
    """Base class of every moeplan error."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (file, field path) and what. ``file`` is empty for a
    command-line option (the field is then the option, e.g. ``--seed``)."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        return f"{where}: {self.message}" if where else self.message


class InputError(MoeplanError):
    """Bad input: a file or value that cannot be used. Holds every problem found."""

    def __init__(self, problems: list[Problem] | Problem):
        if isinstance(problems, Problem):
            problems = [problems]
        if not problems:
            raise ValueError("InputError needs at least one problem")
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def option_error(option: str, message: str) -> InputError:
    """The error of a command-line option (``--seed``, ``--out``, ...): no file, the option as the field."""
    return InputError(Problem("", option, message))


# The messages of planner.domain.files when a file cannot be opened at all.
_OPEN_FAILURES = ("file not found", "is a directory", "cannot be read", "cannot read the profile")


class Collector:
    """Gathers problems while a file is checked, so that all of them are reported at once."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def add(self, field: str, message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.file, field, message))

    def extend(self, problems: list[Problem]) -> None:
        self.problems.extend(problems)

    def extend_referenced(self, problems: list[Problem], field: str, ref: str) -> None:
        """Problems of a file that ``field`` of this file names as ``ref``. One that could not be
        opened at all (missing, a folder, unreadable) is reported here, at ``field``, with the path
        it was looked for at; problems inside the file keep naming that file and its line or field."""
        for p in problems:
            if not p.field and p.message.startswith(_OPEN_FAILURES):
                looked = f" (looked for at {p.file})" if p.file != ref else ""
                p = Problem(self.file, field, f"names {ref!r}{looked}: {p.message}")
            self.problems.append(p)

    def raise_if_any(self) -> None:
        if self.problems:
            raise InputError(self.problems)
