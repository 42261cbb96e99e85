"""Undecodable samples: find which sample of a failed DALI batch the decoder rejects.

A JPEG can pass every header check (SOI, SOF, EOI) and the screen of
:mod:`fastcas.loading.screen` and still fail in DALI's decoder (what one decoder supports
and another not, e.g. 12-bit samples; a rule the screen does not know). DALI then fails
the whole batch ("Failed to decode sample #j", or ``nvImageCodec failure``) and the
pipeline is no longer valid. :func:`undecodable` recomputes that batch on the host with
the stateless source (the same samples and crop windows DALI got) and decodes the named
sample (else each) alone with :class:`fastcas.loading.pipeline.DecodeProbe`; the loader then raises naming the key
and shard (``strict=True``) or quarantines the samples and rebuilds its pipeline at the
same step (``strict=False``). Quarantined indices are part of the source config and the
loader state, so the same quarantine gives the same stream.
"""
from __future__ import annotations

import re
from types import SimpleNamespace

from fastcas.loading.source import SampleSource


def _slots(source: SampleSource, iteration: int, epoch_idx: int) -> list[tuple]:
    """``[(sample index, jpeg, window, position in its batch)]`` of batch ``iteration`` of pipeline
    epoch ``epoch_idx`` (DALI's ``BatchInfo`` numbering for ``source``), recomputed on the host,
    stream after stream; [] past the end of the epoch."""
    trace: list[int] = []  # the sample index of each slot, in fetch order
    fresh = SampleSource(source.config, on_fetch=trace.append)  # the pipeline's own copy may be mid-use
    try:
        out = fresh.layout.named(fresh(SimpleNamespace(iteration=iteration, epoch_idx=epoch_idx)))
    except StopIteration:
        return []
    slots = []
    for s in range(len(source.config.streams)):
        jpegs, windows, base = out[f"jpegs{s}"], out[f"windows{s}"], len(slots)
        slots += [(trace[base + j], jpeg, windows[j], j) for j, jpeg in enumerate(jpegs)]
    return slots


def undecodable(source: SampleSource, first: int, batches: int, epoch_idx: int, probe,
                slot: int | None = None, known=frozenset()) -> list[tuple[int, str]]:
    """``[(sample index, decoder message)]``: the samples the decoder rejects alone, of the failed
    batch, which is one of ``batches`` consecutive batches from ``first`` (DALI runs ahead by its
    prefetch depth) of pipeline epoch ``epoch_idx``; [] when all decode. ``probe(jpeg, window)``
    returns None or the error; ``known``: indices already quarantined (not reported). ``slot``:
    the batch position DALI's error named (:func:`failed_slot`): that position of each candidate
    batch is decoded first, and when it is to blame nothing else is decoded (one decode instead
    of a batch's or more: most of what a quarantine took); another bad sample of the same batch,
    rare at a few percent, costs its own failure later. Runs on the host, one decode each."""
    candidates = [_slots(source, first + k, epoch_idx) for k in range(batches)]
    for named in (True, False):
        for slots in candidates:
            bad = [(i, short_reason(why)) for i, jpeg, window, j in slots
                   if (j == slot) == named and i not in known and (why := probe(jpeg, window)) is not None]
            if bad:
                return bad
    return []


def failed_slot(exc: BaseException) -> int | None:
    """The batch position of the sample DALI's decoder names in ``exc`` ("Failed to decode
    sample #j"), or None."""
    m = re.search(r"Failed to decode sample #(\d+)", str(exc))
    return int(m.group(1)) if m else None


def short_reason(message: str) -> str:
    """The informative line(s) of a DALI error: what follows 'encountered:'."""
    lines = [ln.strip() for ln in str(message).splitlines()]
    if "encountered:" in lines:
        lines = lines[lines.index("encountered:") + 1 :]
    lines = [ln for ln in lines if ln and not ln.startswith("Current pipeline object")]
    return " ".join(lines[:2]).rstrip(" :") or "decoder error"
