"""Per-image attribute ids for CAS: a weight-free pixel encoder (the default) and a CLIP
visual dictionary (the CAS paper's method). Encoders take decoded batches [B, 3, H, W]
(uint8, or float in [0, 1]) on any torch device and return int64 NumPy [B, P] secondary ids.

torch / open_clip are imported lazily inside the encoders; this module imports neither.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

ENCODERS = ("pixel", "clip")
NUM_PRIMARIES = 20
MIN_SECONDARIES = 300


def validate_vocabulary(vocab: dict, source: str = "vocabulary") -> dict:
    """Check a vocabulary dict; raise ValueError naming ``source`` and the bad field.

    Required: ``version`` (str), ``prompt`` containing ``{value}``, exactly 20 ``primaries``
    each with a unique non-empty ``name``, a non-empty ``source`` (where the list comes from)
    and non-empty, unique string ``values``; at least 300 values in all.
    """
    if not isinstance(vocab, dict):
        raise ValueError(f"{source}: vocabulary must be a JSON object, got {type(vocab).__name__}")
    if not isinstance(vocab.get("version"), str) or not vocab["version"]:
        raise ValueError(f"{source}: vocabulary needs a non-empty string 'version'")
    prompt = vocab.get("prompt")
    if not isinstance(prompt, str) or "{value}" not in prompt:
        raise ValueError(f"{source}: 'prompt' must be a string containing '{{value}}', got {prompt!r}")
    prims = vocab.get("primaries")
    if not isinstance(prims, list) or len(prims) != NUM_PRIMARIES:
        n = len(prims) if isinstance(prims, list) else prims
        raise ValueError(f"{source}: vocabulary must have {NUM_PRIMARIES} primaries, has {n}")
    names = set()
    for i, p in enumerate(prims):
        name = p.get("name") if isinstance(p, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: primary #{i} has no name")
        if name in names:
            raise ValueError(f"{source}: primary {name!r} appears twice")
        names.add(name)
        if not isinstance(p.get("source"), str) or not p["source"].strip():
            raise ValueError(f"{source}: primary {name!r} does not state its 'source'")
        values = p.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: primary {name!r} has no values")
        bad = next((v for v in values if not isinstance(v, str) or not v.strip()), None)
        if bad is not None or any(not isinstance(v, str) for v in values):
            raise ValueError(f"{source}: primary {name!r} has a non-string or empty value {bad!r}")
        dup = next((v for i2, v in enumerate(values) if v in values[:i2]), None)
        if dup is not None:
            raise ValueError(f"{source}: primary {name!r} lists value {dup!r} twice")
    total = sum(len(p["values"]) for p in prims)
    if total < MIN_SECONDARIES:
        raise ValueError(f"{source}: vocabulary has {total} secondary values, needs at least {MIN_SECONDARIES}")
    return vocab


def load_vocabulary(path=None) -> dict:
    """The packaged vocabulary (``fastcas/scoring/vocabulary.json``) or the JSON file ``path``,
    validated with :func:`validate_vocabulary`."""
    if path is None:
        src = "fastcas/scoring/vocabulary.json"
        text = resources.files("fastcas.scoring").joinpath("vocabulary.json").read_text()
    else:
        src = str(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such vocabulary file")
        text = Path(path).read_text()
    try:
        vocab = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{src}: not valid JSON ({exc})") from None
    return validate_vocabulary(vocab, src)


def vocabulary_digest(vocab: dict) -> str:
    """Short sha256 of the vocabulary's primaries, values and prompt (for score metadata)."""
    import hashlib

    body = json.dumps({"prompt": vocab["prompt"], "primaries": [[p["name"], p["values"]] for p in vocab["primaries"]]},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]
