"""What the three loaders share: finding a dataset's folder, parsing the CelebA-family annotation text
files, choosing attributes by name, opening images and packing targets. Every failure is a DatasetError
that names the file (and, for text files, the line), so the user knows what to fix.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faceedu.data.layout import DatasetError, dataset_error


def dataset_folder(root: Path | str, kind: str, folder: str, looks_like: Callable[[Path], bool]) -> Path:
    """The dataset's own folder: ROOT/`folder`, or `root` itself when `looks_like` says it already is one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise dataset_error(kind, f"Dataset root {root} {problem}.", root)
    if (root / folder).is_dir():
        return root / folder
    if looks_like(root):
        return root
    if looks_like(root.parent):
        above = root.parent.parent if root.parent.name == folder else root.parent
        raise dataset_error(kind, f"{root} is a folder inside the dataset, not its root: pass {above} "
                                  f"(the folder that holds {folder}/) instead.", root)
    raise dataset_error(kind, f"No {folder}/ folder in {root}, and {root} itself does not hold the files of "
                              f"{folder}/.", root)


@dataclass(frozen=True)
class Table:
    """One parsed annotation file: its header names, the file name of each row, and the value columns."""

    path: Path
    header: tuple[str, ...]
    keys: list[str]
    values: np.ndarray  # (rows, columns)

    def aligned(self, keys: list[str], kind: str) -> np.ndarray:
        """The value rows for `keys` in that order (the files need not list images in the same order)."""
        if keys == self.keys:
            return self.values
        row = {key: i for i, key in enumerate(self.keys)}
        missing = [key for key in keys if key not in row]
        if missing:
            raise dataset_error(kind, f"{self.path.name} has no row for {missing[0]} "
                                      f"({len(missing)} file(s) missing from it).", self.path)
        return self.values[[row[key] for key in keys]]


def read_table(path: Path, kind: str, *, counted: bool, header: bool, columns: int | None = None,
               dtype: type = np.int64) -> Table:
    """Parse a `name v1 v2 ...` annotation file (optionally after a count line and a header line).

    `columns` is the number of values per row (default: one per header name). Fast enough for CelebA's
    202,599 rows (about a second) because the values are converted by numpy in one call. A `.csv` file is
    read as Kaggle's copies are written: a header line `image_id,name1,...`, no count line, commas.
    """
    if not path.is_file():
        raise dataset_error(kind, f"Missing annotation file {path.name}.", path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise dataset_error(kind, f"Malformed annotation file {path.name}: it is not a text file.", path) from err
    csv = path.suffix.lower() == ".csv"
    if csv:
        counted, header = False, True
        lines = [line.replace(",", " ") for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    first, expected_rows, names = 0, None, ()
    if counted:
        expected_rows = _count_line(lines, path, kind)
        first = 1
    if header:
        if len(lines) <= first:
            raise _malformed(kind, path, first + 1, "the header line is missing")
        names = tuple(lines[first].split())
        if csv:
            names = names[1:]  # the key column's own name, image_id
        first += 1
    width = len(names) if columns is None else columns
    if len(names) == width + 1:  # list_bbox_celeba.txt's header also names the key column: image_id
        names = names[1:]
    pairs = [line.split(None, 1) for line in lines[first:]]
    for i, pair in enumerate(pairs):
        found = len(pair[1].split()) if len(pair) == 2 else 0
        if found != width:
            raise _malformed(kind, path, first + i + 1, f"expected a file name and {width} values, "
                                                        f"found {found} value(s)")
    if expected_rows is not None and expected_rows != len(pairs):
        raise _malformed(kind, path, 1, f"the count line says {expected_rows} rows but the file has {len(pairs)}")
    keys = [pair[0] for pair in pairs]
    return Table(path, names, keys, _values(pairs, width, dtype, first, path, kind))


def _count_line(lines: list[str], path: Path, kind: str) -> int:
    """The number on line 1 of a counted annotation file."""
    try:
        return int(lines[0])
    except (IndexError, ValueError):
        found = repr(lines[0]) if lines else "an empty file"
        raise _malformed(kind, path, 1, f"line 1 should be the number of rows, found {found}") from None


def _values(pairs: list[list[str]], width: int, dtype: type, first: int, path: Path, kind: str) -> np.ndarray:
    """Convert the value columns in one numpy call; on failure, find the offending line to report."""
    if dtype is str:
        return np.array([pair[1].split() for pair in pairs], dtype=str).reshape(len(pairs), width)
    try:
        with warnings.catch_warnings():  # numpy < 2.3 warns and stops at a token it cannot parse; later raises
            warnings.simplefilter("ignore", DeprecationWarning)
            flat = np.fromstring(" ".join(pair[1] for pair in pairs), dtype=dtype, sep=" ")
        if flat.size == len(pairs) * width:
            return flat.reshape(len(pairs), width)
    except ValueError:
        pass
    convert = int if np.issubdtype(dtype, np.integer) else float
    for i, pair in enumerate(pairs):
        for token in pair[1].split():
            try:
                convert(token)
            except ValueError:
                what = "a whole number" if convert is int else "a number"
                raise _malformed(kind, path, first + i + 1, f"{token!r} is not {what}") from None
    raise _malformed(kind, path, first + 1, "the values could not be parsed")


def _malformed(kind: str, path: Path, line: int, problem: str) -> DatasetError:
    return dataset_error(kind, f"Malformed annotation file {path.name}, line {line}: {problem}.", path)


def read_binary_attributes(path: Path, kind: str) -> Table:
    """A `list_attr_celeba.txt`-format file (count line, header, -1/1 rows) with the values mapped to 0/1."""
    table = read_table(path, kind, counted=True, header=True, dtype=np.int16)
    bad = np.flatnonzero(~np.isin(table.values, (-1, 1)).all(axis=1))
    if bad.size:
        row = table.values[bad[0]]
        raise _malformed(kind, path, int(bad[0]) + 3, f"attribute values must be -1 or 1, found "
                                                      f"{int(row[~np.isin(row, (-1, 1))][0])}")
    return Table(path, table.header, table.keys, (table.values > 0).astype(np.int8))


def select_attributes(available: Sequence[str], wanted: Sequence[str] | None, kind: str, path: Path,
                      known: Sequence[str] = ()) -> list[int]:
    """Column indices of the `wanted` attribute names (all when None). A misspelt name is a ValueError
    listing the closest valid names; a valid name the file lacks is a DatasetError naming the file."""
    if wanted is None:
        return list(range(len(available)))
    if isinstance(wanted, str):
        wanted = [wanted]
    columns = []
    for name in wanted:
        if name in available:
            columns.append(available.index(name))
        elif name in known:
            raise dataset_error(kind, f"Attribute {name!r} is not a column of {path.name}.", path)
        else:
            close = difflib.get_close_matches(name, list(dict.fromkeys([*available, *known])), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else "valid: " + ", ".join(available)
            raise ValueError(f"Unknown attribute {name!r}: {hint}")
    return columns


def open_image(path: Path, kind: str, mode: str | None, listed_in: Path | None = None) -> Image.Image:
    """Fully decode the image at `path` (converted to `mode` unless None), so that a truncated or corrupt
    file fails here, with its name, rather than deep inside a DataLoader worker."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode else image.copy()
    except FileNotFoundError:
        source = f" is listed in {listed_in.name} but" if listed_in is not None else ""
        raise dataset_error(kind, f"Image {path.name}{source} is missing on disk (incomplete download or "
                                  f"extraction?).", path) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise dataset_error(kind, f"Cannot read image {path.name}: the file is truncated or corrupt ({err}). "
                                  f"Extract or download it again.", path) from err


def require_files(folder: Path, names: Sequence[str], kind: str, listed_in: Path) -> None:
    """Raise a DatasetError naming the files of `names` (listed in `listed_in`) absent from `folder`;
    one directory listing, so it takes well under a second even for CelebA's 202,599 images."""
    present = {entry.name for entry in folder.iterdir()}
    missing = [name for name in names if name not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise dataset_error(kind, f"{len(missing)} file(s) listed in {listed_in.name} are missing from "
                                  f"{folder.name}/: {shown}", folder / missing[0])


def target_types(target_type: str | Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """Normalise `target_type` (one name or several) to a tuple, rejecting unknown names."""
    types = (target_type,) if isinstance(target_type, str) else tuple(target_type)
    unknown = [t for t in types if t not in allowed]
    if unknown:
        raise ValueError(f"Unknown target_type {unknown[0]!r}: choose from {', '.join(allowed)}.")
    return types


def check_split(split: str, allowed: Sequence[str]) -> str:
    """Reject a split name that is not one of `allowed`."""
    if split not in allowed:
        raise ValueError(f"Unknown split {split!r}: choose from {', '.join(allowed)}.")
    return split


def finish(image: Image.Image, targets: list[Any], transform: Callable | None,
           target_transform: Callable | None) -> tuple[Any, Any]:
    """torchvision's convention: one target as itself, several as a tuple, none as None; then transforms."""
    target = tuple(targets) if len(targets) > 1 else targets[0] if targets else None
    if transform is not None:
        image = transform(image)
    if target is not None and target_transform is not None:
        target = target_transform(target)
    return image, target
