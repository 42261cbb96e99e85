"""The names of a batch's outputs, in order: one owner for the positional protocol between
the external source (:mod:`fastcas.loading.source`), the DALI graph
(:mod:`fastcas.loading.pipeline`), the Loader's finishing step, the quarantine
(:mod:`fastcas.loading.faults`) and the torchvision baseline, the way DALI's
``DALIGenericIterator(pipelines, output_map)`` names an iterator's outputs.

Source outputs (what ``SampleSource.batch`` returns, one tuple per batch):

* per stream ``s`` (0: the sampled / background stream, 1: CMO's foreground stream):
  ``jpegs{s}`` (list of uint8 [n] encoded images), ``labels{s}`` int64 [B, 1], ``windows{s}``
  float32 [B, 4] crop windows ``(x, y, w, h)`` normalised, ``flips{s}`` int32 [B, 1];
* with mixing inside the graph (``mix``), the paste arguments of that kind (:attr:`paste`);
* ``skipped`` int64 [B, streams]: the index of an unreadable sample a slot replaced, or -1;
* with transform options (:mod:`fastcas.loading.transforms`, training), per stream after its four
  fields the policy's extra draws (:data:`EXTRA_FIELDS`, in that order): ``shift{s}``,
  ``auto{s}``, ``jitter{s}``, ``erase{s}``, ``efill{s}``.

Pipeline outputs (what the graph, or the baseline's DataLoader, yields):

* without in-graph mixing: per stream ``images{s}`` (float [B, 3, S, S] or [B, S, S, 3]) and
  ``labels{s}`` int64 [B, 1], then ``skipped``;
* with it: ``images0`` (the mixed images), ``labels{s}`` per stream, ``lam`` float64 [B, 1]
  (the kept background fraction DALI applied), then ``skipped``.

Adding an output is a change here (and where it is produced and consumed), not in five
places' index arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastcas.mix.kinds import KINDS as MIX_KINDS
from fastcas.mix.kinds import PASTE_KINDS  # the kinds the graph can mix itself

STREAM_FIELDS = ("jpegs", "labels", "windows", "flips")
EXTRA_FIELDS = ("shift", "auto", "jitter", "erase", "efill")  # AugmentPolicy.extra_fields, in this order
# host dtypes of the source outputs (numpy names); the paste arguments' are the mix kind's (paste_dtype)
SOURCE_DTYPES = {"jpegs": "uint8", "labels": "int64", "windows": "float32", "flips": "int32",
                 "skipped": "int64", "shift": "float32", "auto": "int32",
                 "jitter": "float32", "erase": "float32", "efill": "float32"}


@dataclass(frozen=True)
class BatchLayout:
    """Output names for ``streams`` (1 or 2) sample streams and the in-graph mixing ``mix``
    (one of :data:`PASTE_KINDS`, or None when the graph does not mix) and the per-stream
    transform draws ``extras`` (a subsequence of :data:`EXTRA_FIELDS`)."""

    streams: int
    mix: str | None = None
    extras: tuple = ()

    def __post_init__(self):
        if self.streams not in (1, 2):
            raise ValueError(f"streams must be 1 or 2, got {self.streams!r}")
        if self.mix is not None and self.mix not in PASTE_KINDS:
            raise ValueError(f"in-graph mix must be one of {PASTE_KINDS} or None, got {self.mix!r}")
        if tuple(f for f in EXTRA_FIELDS if f in self.extras) != tuple(self.extras):
            raise ValueError(f"extras must be a subsequence of {EXTRA_FIELDS}, got {self.extras!r}")

    @property
    def paste(self) -> tuple:
        """The in-graph mixing arguments, in order. One stream mixes with an in-batch partner
        (``in_ids`` / ``partner``); two take the foreground from stream 1."""
        return () if self.mix is None else MIX_KINDS[self.mix].paste_names(self.streams)

    @property
    def source_names(self) -> tuple:
        per_stream = tuple(f"{f}{s}" for s in range(self.streams) for f in STREAM_FIELDS + tuple(self.extras))
        return per_stream + self.paste + ("skipped",)

    @property
    def pipeline_names(self) -> tuple:
        labels = tuple(f"labels{s}" for s in range(self.streams))
        if self.mix is not None:
            return ("images0", *labels, "lam", "skipped")
        return tuple(n for s in range(self.streams) for n in (f"images{s}", f"labels{s}")) + ("skipped",)

    def source_dtypes(self) -> list:
        """Numpy dtype names of the source outputs, in order (for ``fn.external_source``)."""
        def field(name):  # "labels1" -> "labels"; paste arguments keep their name
            return name[:-1] if name[-1].isdigit() and name[:-1] in STREAM_FIELDS + EXTRA_FIELDS else name

        paste = () if self.mix is None else self.paste
        return [MIX_KINDS[self.mix].paste_dtype(n) if n in paste else SOURCE_DTYPES[field(n)]
                for n in self.source_names]

    def pack(self, values: dict, which: str = "source") -> tuple:
        """``values`` (name -> output) as the positional tuple of ``which`` ("source" or
        "pipeline"); a missing or unknown name is a KeyError naming it."""
        names = self._names(which)
        extra = set(values) - set(names)
        if extra:
            raise KeyError(f"not {which} outputs of {self}: {sorted(extra)}")
        missing = [n for n in names if n not in values]
        if missing:
            raise KeyError(f"{which} outputs missing for {self}: {missing}")
        return tuple(values[n] for n in names)

    def named(self, outputs, which: str = "source") -> dict:
        """The positional ``outputs`` of ``which`` as a dict name -> output (DALI data nodes,
        arrays or tensors alike)."""
        names = self._names(which)
        if len(outputs) != len(names):
            raise ValueError(f"{len(outputs)} {which} outputs, {self} has {len(names)}: {names}")
        return dict(zip(names, outputs))

    def _names(self, which: str) -> tuple:
        if which == "source":
            return self.source_names
        if which == "pipeline":
            return self.pipeline_names
        raise ValueError(f"which must be 'source' or 'pipeline', got {which!r}")
