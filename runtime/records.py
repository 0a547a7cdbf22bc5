"""Reading the project's JSON record files (manifest.json, engine.json, generation.json)
field by field: present, of the right type, in range, with an error that names the field
and the file. Standard library only."""

from __future__ import annotations

from pathlib import PurePath

from runtime.errors import ArtifactError


class Fields:
    """Typed access to one JSON object of a record file; every error names the field and
    the file, and says what to re-run."""

    def __init__(self, data, where: str, fix: str, prefix: str = "", error: type = ArtifactError):
        self.where, self.fix, self.prefix, self.error = where, fix, prefix, error
        if not isinstance(data, dict):
            self.fail("", "must be a JSON object")
        self.data = data

    def fail(self, key: str, problem: str):
        name = f"field {self.prefix}{key!s} " if key or self.prefix else ""
        raise self.error(f"{self.where}: {name}{problem}; {self.fix}")

    def get(self, key: str, types, optional: bool = False):
        if key not in self.data:
            if optional:
                return None
            self.fail(key, "is missing")
        value = self.data[key]
        if value is None and optional:
            return None
        types = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            self.fail(key, f"must be {' or '.join(t.__name__ for t in types)}, not {type(value).__name__}")
        return value

    def int(self, key: str, minimum: int = 0, optional: bool = False) -> int | None:
        value = self.get(key, int, optional)
        if value is not None and value < minimum:
            self.fail(key, f"must be at least {minimum}, got {value}")
        return value

    def choice(self, key: str, choices: tuple) -> str:
        value = self.get(key, str)
        if value not in choices:
            self.fail(key, f"is {value!r}, expected one of {', '.join(map(str, choices))}")
        return value

    def sub(self, key: str, optional: bool = False) -> "Fields | None":
        value = self.get(key, dict, optional)
        return None if value is None else Fields(value, self.where, self.fix, f"{self.prefix}{key}.", self.error)

    def file_name(self, key: str) -> str:
        """A file directly inside the record's folder: no path separators, no '..'."""
        value = self.get(key, str)
        if not is_file_name(value):
            self.fail(key, f"must name a file inside the folder, not {value!r}")
        return value

    def hashes(self, key: str, optional: bool = False) -> dict[str, str] | None:
        """A {file name: sha256 hex} map."""
        sub = self.sub(key, optional)
        if sub is None:
            return None
        for name in sub.data:
            if not is_file_name(name):
                sub.fail(name, "must name a file inside the folder")
            digest = sub.get(name, str)
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                sub.fail(name, "must be a sha256 hex digest")
        return dict(sub.data)

    def ints(self, key: str, optional: bool = False) -> tuple[int, ...] | None:
        value = self.get(key, list, optional)
        if value is None:
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            self.fail(key, "must be a list of non-negative integers")
        return tuple(value)


def is_file_name(value: str) -> bool:
    """A plain file name: not empty, no path separators, not '.' or '..'."""
    return bool(value) and PurePath(value).name == value and value not in (".", "..") and "\\" not in value
