"""Undecodable samples: find which sample of a failed DALI batch the decoder rejects.

A JPEG can pass every header check (SOI, SOF, EOI) and still fail in DALI's decoder
(corrupt Huffman tables or entropy-coded data: bit rot inside a shard). DALI then fails
the whole batch ("Failed to decode sample #j", or ``nvImageCodec failure``) and the
pipeline is no longer valid. :func:`undecodable` recomputes that batch on the host with
the stateless source (the same samples and crop windows DALI got) and decodes each sample
alone with :class:`fastcas.loading.pipeline.DecodeProbe`; the loader then raises naming the key
and shard (``strict=True``) or quarantines the samples and rebuilds its pipeline at the
same step (``strict=False``). Quarantined indices are part of the source config and the
loader state, so the same quarantine gives the same stream.
"""
from __future__ import annotations

from types import SimpleNamespace

from fastcas.loading.source import SampleSource


def undecodable(source: SampleSource, iteration: int, epoch_idx: int, probe) -> list[tuple[int, str]]:
    """``[(sample index, decoder message)]`` for the samples of batch ``iteration`` of
    pipeline epoch ``epoch_idx`` (DALI's ``BatchInfo`` numbering for ``source``) that the
    decoder rejects alone; [] when all decode or the batch is past the end of the epoch.
    ``probe(jpeg, window)`` returns None or the error. Runs on the host, one decode each."""
    trace: list[int] = []  # the sample index of each slot, in fetch order
    fresh = SampleSource(source.config, on_fetch=trace.append)  # the pipeline's own copy may be mid-use
    try:
        out = fresh.layout.named(fresh(SimpleNamespace(iteration=iteration, epoch_idx=epoch_idx)))
    except StopIteration:
        return []
    bad, k = [], 0
    for s in range(len(source.config.streams)):
        jpegs, windows = out[f"jpegs{s}"], out[f"windows{s}"]
        for j, jpeg in enumerate(jpegs):
            reason = probe(jpeg, windows[j])
            if reason is not None:
                bad.append((trace[k], short_reason(reason)))
            k += 1
    return bad


def short_reason(message: str) -> str:
    """The informative line(s) of a DALI error: what follows 'encountered:'."""
    lines = [ln.strip() for ln in str(message).splitlines()]
    if "encountered:" in lines:
        lines = lines[lines.index("encountered:") + 1 :]
    lines = [ln for ln in lines if ln and not ln.startswith("Current pipeline object")]
    return " ".join(lines[:2]).rstrip(" :") or "decoder error"
