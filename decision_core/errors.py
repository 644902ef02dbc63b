"""One error hierarchy for the whole project.

Every error a user can cause derives from :class:`DecisionCoreError`; the CLI prints its message and exits
non-zero, and the HTTP service maps each subclass to a status code in one table (``serving/errors.py``).
"""

from __future__ import annotations


class DecisionCoreError(Exception):
    """Base class of all errors a user can cause and fix."""


class SpecError(DecisionCoreError, ValueError):
    """A domain spec, config or mapping is invalid."""


class RegistryError(DecisionCoreError, LookupError):
    """A registry lookup or registration failed (unknown name, clash, bad plugin)."""


class StoreError(DecisionCoreError):
    """The decision store cannot be opened or read as asked (missing domain, schema version mismatch)."""


class IngestError(DecisionCoreError):
    """Raw logs break a rule of the common schema; names the file, row, column and rule, and what to do.

    ``row`` is the 0-based data row in the source file (the header is not counted), or ``None`` when the rule
    concerns the whole file (for example a missing column).
    """

    def __init__(
        self,
        *,
        file: str,
        rule: str,
        row: int | None = None,
        column: str | None = None,
        hint: str = "",
        value: object = None,
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.rule = rule
        self.hint = hint
        self.value = value
        where = [file]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        message = f"{', '.join(where)}: {rule}"
        if value is not None:
            shown = repr(value)
            message += f" (got {shown[:80]}{'…' if len(shown) > 80 else ''})"
        if hint:
            message += f". {hint[:1].upper()}{hint[1:]}"
        super().__init__(message)

    def in_file(self, file: str) -> IngestError:
        """This error located in ``file`` (adapters raise with an empty ``file``; ingest knows which it is)."""
        if self.file and not self.file.startswith("("):
            return self
        return IngestError(
            file=file, rule=self.rule, row=self.row, column=self.column, hint=self.hint, value=self.value
        )
