"""Per-image attribute ids for CAS: a weight-free pixel encoder (the default) and a CLIP
visual dictionary (the CAS paper's method). Encoders take decoded batches from fastcas's own
loader (DALI, GPU when present) and return int64 [B, P] secondary ids."""
from __future__ import annotations

import json
from importlib import resources

ENCODERS = ("pixel", "clip")


def load_vocabulary() -> dict:
    """The packaged vocabulary (20 primaries, 300+ secondaries), validated."""
    vocab = json.loads(resources.files("fastcas.data").joinpath("vocabulary.json").read_text())
    prims = vocab.get("primaries", [])
    if len(prims) != 20:
        raise ValueError(f"vocabulary must have 20 primaries, has {len(prims)}")
    for p in prims:
        if not p.get("values") or len(set(p["values"])) != len(p["values"]) or not p.get("source"):
            raise ValueError(f"vocabulary primary {p.get('name')!r}: values must be non-empty and unique, with a source")
    return vocab
