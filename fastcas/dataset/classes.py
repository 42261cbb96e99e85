"""One class vocabulary per dataset family: the training set's ``class_names`` number its
validation set too.

``fastcas shard --classes-from TRAIN`` numbers a validation folder from the training set's
names (a folder missing a class keeps the training ids; a folder absent from the training set
is refused), ``fastcas index --class-names FILE|a,b,c`` takes the names given, and
``Loader(..., class_names=TRAIN)`` / ``fastcas train --val`` refuse a validation set whose
names differ, naming the first difference: ids that mean other classes give a silent top-1 of
0, never an error, downstream.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def parse_class_names(spec: str) -> tuple[str, ...]:
    """Class names from ``spec``: a file with one name per line (line k = class k; blank lines
    skipped) or a comma-separated list ``a,b,c``. Refused: a path that is not a file and has no
    comma, an empty list, repeated names."""
    path = Path(spec)
    if path.is_file():
        names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        where = str(path)
    elif "," in spec:
        names, where = tuple(n.strip() for n in spec.split(",")), "--class-names"
        if any(not n for n in names):
            raise ValueError(f"--class-names {spec!r}: an empty name (two commas in a row or a trailing comma)")
    else:
        raise FileNotFoundError(f"--class-names {spec!r}: no such file; give a file with one class name per "
                                "line, or the names separated by commas (a,b,c)")
    if not names:
        raise ValueError(f"{where}: no class names")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise ValueError(f"{where}: class name {dup!r} appears twice (names must be unique)")
    return names


def class_names_of(source) -> tuple[str, ...]:
    """The class names of ``source``: a sequence of names, an object with ``class_names``
    (``ShardReader``) or ``reader.class_names`` (``Loader``), or a dataset directory / manifest
    path (only its ``class_names`` are read; for a columnar manifest they are in the JSON too)."""
    if isinstance(source, (str, Path)):
        from fastcas.dataset.reader import resolve_manifest

        manifest = resolve_manifest(source)
        try:
            names = json.loads(manifest.read_text(encoding="utf-8"))["class_names"]
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{manifest}: cannot read its class_names ({type(exc).__name__}: {exc})") from None
        return tuple(names)
    if hasattr(source, "reader"):
        source = source.reader
    if hasattr(source, "class_names"):
        return tuple(source.class_names)
    if isinstance(source, Sequence) and all(isinstance(n, str) for n in source):
        return tuple(source)
    raise ValueError(f"class names: expected a dataset path, a ShardReader, a Loader or a list of names, "
                     f"got {type(source).__name__}")


def first_difference(expected: Sequence[str], got: Sequence[str]) -> str | None:
    """A sentence naming the first class id where ``got`` differs from ``expected``, or None."""
    for k, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return f"class {k} is {b!r} here but {a!r} in the training set"
    if len(got) != len(expected):
        k = min(len(got), len(expected))
        extra = f"{got[k]!r} here" if len(got) > k else f"{expected[k]!r} in the training set only"
        return f"{len(got)} classes here, {len(expected)} in the training set (first unmatched: class {k}, {extra})"
    return None


def check_same_classes(expected, got: Sequence[str], *, what: str, train: str = "the training set") -> None:
    """ValueError unless ``got`` (the class names of ``what``) equal ``expected`` (any source
    :func:`class_names_of` takes) id for id, naming the first difference and the fix."""
    diff = first_difference(class_names_of(expected), tuple(got))
    if diff is not None:
        raise ValueError(f"{what}: its class_names differ from {train}'s: {diff}; labels would mean other "
                         f"classes. Re-shard it numbered from the training set: fastcas shard SRC OUT "
                         f"--classes-from TRAIN (or fastcas index ... --class-names FILE)")


def numbering(train_names: Sequence[str], folder_names: Sequence[str], *, where: str) -> dict[str, int]:
    """``{folder: training id}`` for a folder tree numbered from the training set: a training
    class without a folder keeps its id (no images); a folder that is no training class is
    refused, naming it."""
    ids = {n: k for k, n in enumerate(train_names)}
    unknown = [n for n in folder_names if n not in ids]
    if unknown:
        raise ValueError(f"{where}: class folder {unknown[0]!r} is not a class of the training set "
                         f"({len(train_names)} classes{', e.g. ' + repr(train_names[0]) if train_names else ''})"
                         + (f"; {len(unknown) - 1} more unknown" if len(unknown) > 1 else ""))
    return {n: ids[n] for n in folder_names}
