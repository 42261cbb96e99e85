"""``fastcas index``: a fastcas manifest for existing WebDataset tars, without rewriting them.

    sources (dir of .tar | brace pattern | glob | URLs) -> scan each tar's headers
      -> group members into samples by WebDataset's key rule -> image member, label, header
      -> DALI v1.2 index per tar + manifest.json in OUT (written last, atomically)

Key rule (webdataset ``base_plus_ext``): a member ``dir/name.ext1.ext2`` has key
``dir/name`` and extension ``ext1.ext2`` (lower-cased); consecutive members with one key are
one sample; names without a dot are ignored. The image is the first present of
``image_keys``; the label comes from ``label_key``: an extension whose member holds a decimal
integer (``cls``), or ``json:FIELD`` (a field of the ``json`` member: an integer, or a class
name when ``class_names`` are given). Image sizes are read from the headers (displayed size,
EXIF orientation applied), so the loader needs no per-sample header parse for geometry.

Samples without an image or a label, with an unreadable image header or over ``max_pixels``
are listed in the manifest's ``skipped`` and left out (``strict`` makes each an error naming
tar and key). Always errors: not a tar / truncated tar, a label that is not a non-negative
integer, a key seen twice (in one tar or across tars), unsafe member names (absolute, ``..``,
links), member names with whitespace (the DALI index cannot hold them).

Local tars are read through ``mmap``: only member headers and image headers are touched,
unless ``hash_local``. Remote tars (URLs) are downloaded whole into the shard cache, hashed,
and recorded with their size and SHA-256, so the loader's cache can verify them later.
"""
from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastcas.core.errors import ShardError
from fastcas.core.io import atomic_write_json
from fastcas.dataset import imagehdr
from fastcas.dataset.fetch import RemoteOptions
from fastcas.dataset.manifest import PER_SAMPLE
from fastcas.dataset.remote import ShardCache, is_url, refuse_credentials
from fastcas.dataset.shards import MANIFEST, MAX_CLASSES, check_class_bound
from fastcas.dataset.wdsindex import Member, format_index

FORMAT_JSON = "fastcas-index/1"  # per-sample lists in manifest.json: older indexes (`fastcas convert` reads them)
FORMAT_COLUMNS = "fastcas-index/2"  # manifest.json + manifest.cols/ (fastcas.dataset.manifest)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's base_plus_ext


@dataclass(frozen=True)
class IndexConfig:
    image_keys: tuple[str, ...] = IMAGE_KEYS
    label_key: str = "cls"
    class_names: tuple[str, ...] | None = None
    strict: bool = False
    max_pixels: int | None = imagehdr.DEFAULT_MAX_PIXELS
    cache_dir: str | None = None
    remote: RemoteOptions | None = None  # timeouts and retries for URLs (None: RemoteOptions())
    overwrite: bool = False
    hash_local: bool = False
    max_classes: int = MAX_CLASSES  # integer labels must be < this (fastcas.dataset.shards.MAX_CLASSES)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.image_keys or any(not k or "/" in k or k.startswith(".") for k in self.image_keys):
            raise ValueError(f"image_keys must be non-empty extensions like 'jpg', got {self.image_keys!r}")
        if isinstance(self.max_classes, bool) or not isinstance(self.max_classes, int) or self.max_classes < 1:
            raise ValueError(f"max_classes must be a positive integer, got {self.max_classes!r}")
        if not self.label_key or (self.label_key.startswith("json:") and len(self.label_key) == 5):
            raise ValueError(f"label_key must be an extension ('cls') or 'json:FIELD', got {self.label_key!r}")

    @property
    def label_ext(self) -> str:
        return "json" if self.label_key.startswith("json:") else self.label_key


# -- sources -----------------------------------------------------------------------------------
def expand_sources(sources) -> list[str]:
    """Tar paths / URLs, in order: a directory gives its ``*.tar`` sorted; a brace pattern
    (``train-{000..009}.tar``) or glob is expanded. ``ValueError`` naming the source for a
    pattern that matches nothing, a missing file or a directory without tars, or a URL with
    credentials (``user:password@``: they would be written into the manifest)."""
    from braceexpand import braceexpand

    out: list[str] = []
    for src in sources:
        src = str(src)
        if is_url(src):
            refuse_credentials(src)
            out += _expand(braceexpand, src)
            continue
        p = Path(src)
        if p.is_dir():
            tars = sorted(str(t) for t in p.glob("*.tar"))
            if not tars:
                raise ValueError(f"{src}: directory holds no .tar files")
            out += tars
            continue
        names = _expand(braceexpand, src) if "{" in src else [src]
        if any(c in src for c in "*?["):
            names = sorted(n for pat in names for n in glob.glob(pat))
        found = [n for n in names if Path(n).is_file()]
        if not found:
            raise ValueError(f"{src}: matches no file" if len(names) != 1 or names[0] != src
                             else f"{src}: no such tar file or directory")
        missing = [n for n in names if not Path(n).is_file()]
        if missing:
            raise ValueError(f"{src}: {len(missing)} of {len(names)} files do not exist (first: {missing[0]})")
        out += found
    if len(set(out)) != len(out):
        dup = next(x for x in out if out.count(x) > 1)
        raise ValueError(f"{dup}: named twice in the sources")
    return out


#: most names one brace pattern may expand to (``{0..999999999}`` would exhaust memory)
MAX_EXPANDED = 1_000_000


def _brace_count(src: str) -> int:
    """How many names ``src`` expands to, counted from its (non-nested) brace groups without
    expanding them (braceexpand builds a whole range at once)."""
    n = 1
    for group in re.findall(r"\{([^{}]*)\}", src):
        m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?", group)
        if m:
            step = abs(int(m.group(3) or 1)) or 1
            n *= abs(int(m.group(2)) - int(m.group(1))) // step + 1
        elif "," in group:
            n *= group.count(",") + 1
    return n


def _expand(braceexpand, src: str) -> list[str]:
    import itertools

    if _brace_count(src) > MAX_EXPANDED:
        raise ValueError(f"{src}: the brace pattern expands to more than {MAX_EXPANDED:,} names; "
                         "split it or index a directory")
    names = list(itertools.islice(braceexpand(src), MAX_EXPANDED + 1))
    if len(names) > MAX_EXPANDED:
        raise ValueError(f"{src}: the brace pattern expands to more than {MAX_EXPANDED:,} names; "
                         "split it or index a directory")
    return names


# -- one tar -----------------------------------------------------------------------------------
@dataclass(slots=True)  # one per sample of the tar being scanned: no __dict__ each
class _Sample:
    key: str
    members: list = field(default_factory=list)  # Member(ext, offset, size, name)


def _members(path: Path, where: str, data: memoryview):
    """Yield Member per regular file of the tar at ``path``; ShardError naming ``where``."""
    size = len(data)
    try:
        f = open(path, "rb")
        tar = tarfile.open(fileobj=f, mode="r:")
    except tarfile.TarError as exc:
        f.close()
        raise ShardError(f"{where}: not a tar file ({exc})") from None
    with f, tar:
        while True:
            try:
                info = tar.next()
            except tarfile.TarError as exc:
                raise ShardError(f"{where}: corrupt or truncated tar at byte {tar.offset} ({exc})") from None
            tar.members.clear()  # tarfile keeps every TarInfo (~0.5-2 kB each): memory per tar stays bounded
            if info is None:
                if tar.offset + 512 > size:  # cut at a member boundary: no end-of-archive block
                    raise ShardError(f"{where}: truncated tar (no end-of-archive marker after byte {tar.offset:,})")
                return
            name = info.name
            if not name.isascii():
                try:
                    name.encode("utf-8")  # tarfile decodes bad bytes to surrogates; keys are UTF-8 text
                except UnicodeEncodeError:
                    raise ShardError(f"{where}: member name {name.encode('utf-8', 'surrogateescape')!r} is not "
                                     "valid UTF-8 (fastcas keys are UTF-8 text): rename it") from None
            if info.issym() or info.islnk():
                raise ShardError(f"{where}: unsafe member {name!r} (a link)")
            if not info.isfile():
                continue
            if name.startswith("/") or ".." in name.split("/"):
                raise ShardError(f"{where}: unsafe member name {name!r} (absolute or '..')")
            if info.offset_data + info.size > size:
                raise ShardError(f"{where}: truncated tar (member {name!r} ends at byte "
                                 f"{info.offset_data + info.size:,}, file has {size:,})")
            yield name, info.offset_data, info.size


def _samples(path: Path, where: str, data: memoryview) -> list[_Sample]:
    out: list[_Sample] = []
    for name, offset, size in _members(path, where, data):
        m = _KEY_EXT.match(name)
        if not m:
            continue  # webdataset ignores names without an extension
        key, ext = m.group(1), m.group(2).lower()
        if any(c.isspace() for c in name):
            raise ShardError(f"{where}: member name {name!r} has whitespace (a DALI index cannot hold it)")
        if not out or out[-1].key != key:
            out.append(_Sample(key))
        if any(x.ext == ext for x in out[-1].members):
            raise ShardError(f"{where}: sample {key!r} has two {ext!r} members")
        out[-1].members.append(Member(ext, offset, size, name))
    return out


def _label(sample: _Sample, config: IndexConfig, data: memoryview, where: str):
    """Class id, or None when the sample has no label member."""
    ext = config.label_ext
    mem = next((x for x in sample.members if x.ext == ext), None)
    if mem is None:
        return None
    raw = bytes(data[mem.offset : mem.offset + mem.size])
    bad = f"{where}: sample {sample.key!r}: label"
    if ext == "json" and config.label_key.startswith("json:"):
        try:
            value = json.loads(raw)
            for part in config.label_key[5:].split("."):
                value = value[part]
        except (ValueError, KeyError, TypeError):
            return None  # no such field: a sample without a label
        if isinstance(value, str) and config.class_names and value in config.class_names:
            return config.class_names.index(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{bad} {config.label_key} = {value!r} is not a non-negative integer"
                             + ("" if config.class_names else " (pass --class-names to map names)"))
        if not config.class_names:
            check_class_bound(value, config.max_classes, f"sample {sample.key!r} in {where}")
        return value
    text = raw.decode("utf-8", "replace").strip()
    if not text.isdigit() or not text.isascii():
        if config.class_names and text in config.class_names:
            return config.class_names.index(text)
        raise ValueError(f"{bad} {text[:40]!r} in .{ext} is not a non-negative integer")
    if not config.class_names:
        check_class_bound(int(text), config.max_classes, f"sample {sample.key!r} in {where}")
    return int(text)


def _label_hint(sample: _Sample, config: IndexConfig, data: memoryview) -> str:
    """For a sample without its ``.cls`` label but with a ``.json`` member: which ``--label-key
    json:FIELD`` would read it (an integer or string field, ``label`` preferred)."""
    mem = next((x for x in sample.members if x.ext == "json"), None)
    if mem is None or config.label_key.startswith("json:"):
        return ""
    try:
        value = json.loads(bytes(data[mem.offset : mem.offset + mem.size]))
    except ValueError:
        return ""
    fields = [k for k, v in value.items() if isinstance(v, (int, str)) and not isinstance(v, bool)] \
        if isinstance(value, dict) else []
    best = next(
        (k for k in ("label", "cls", "class", "target", "class_id") if k in fields), fields[0] if fields else "label"
    )
    return f"; it has a .json member: labels in JSON need --label-key json:{best}"


def scan_tar(path: Path, where: str, config: IndexConfig) -> dict:
    """Scan one local tar: index entries of every sample, and the columns of usable ones."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ShardError(f"{where}: empty file, not a tar")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    data = memoryview(mm)
    try:
        samples = _samples(path, where, data)
        cols = {k: [] for k in PER_SAMPLE}
        skipped = []
        for smp in samples:
            img = next((x for k in config.image_keys for x in smp.members if x.ext == k), None)
            reason = None
            if img is None:
                reason = f"no image member ({'/'.join(config.image_keys)})"
            label = _label(smp, config, data, where)
            if reason is None and label is None:
                reason = f"no label ({config.label_key})" + _label_hint(smp, config, data)
            if reason is None:
                try:
                    header = imagehdr.parse(data[img.offset : img.offset + img.size])
                    imagehdr.check_pixels(header, config.max_pixels, f".{img.ext}")
                except imagehdr.ImageHeaderError as exc:
                    reason = str(exc)
            if reason is not None:
                if config.strict:
                    raise ValueError(f"{where}: sample {smp.key!r}: {reason}")
                skipped.append({"tar": where, "key": smp.key, "reason": reason})
                continue
            meta = next((x for x in smp.members if x.ext == "json"), None)
            cols["keys"].append(smp.key)
            cols["labels"].append(label)
            cols["image_offset"].append(img.offset)
            cols["image_size"].append(img.size)
            cols["image_ext"].append(img.ext)
            cols["meta_offset"].append(meta.offset if meta else -1)
            cols["meta_size"].append(meta.size if meta else 0)
            cols["sizes"].append(list(header.display_size))
        sha = hashlib.sha256(data).hexdigest() if config.hash_local else None
    finally:
        data.release()
        mm.close()
    return {"index": format_index([s.members for s in samples]), "samples": len(samples), "size": size,
            "sha256": sha, "cols": cols, "skipped": skipped}


# -- the whole dataset ---------------------------------------------------------------------------
def index_dataset(sources, out, config: IndexConfig | None = None, *, progress: bool = False,
                  workers: int = 1) -> dict:
    """Index ``sources`` into ``out`` (manifest + one DALI index per tar); returns the manifest.
    Nothing is written to ``out`` unless every tar indexes cleanly. ``workers``: processes
    scanning local tars."""
    config = config or IndexConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to replace its index")
        _check_own_index(out)
    tars = expand_sources(sources)
    cache = ShardCache(config.cache_dir, options=config.remote) if any(is_url(t) for t in tars) else None
    if progress:
        from tqdm import tqdm

        it = tqdm(total=len(tars), unit="tar", desc=f"index {out.name}")
    scans = _scan_all(tars, config, cache, workers)
    try:
        return _stream(tars, scans, out, config, it if progress else None)
    finally:
        scans.close()  # stops the worker processes at once on an error
        if progress:
            it.close()


def _index_name(n: int, src: str) -> str:
    return f"{n:06d}-{re.sub(r'[^A-Za-z0-9_-]', '_', Path(src.rsplit('/', 1)[-1]).stem)}.idx"


def _stream(tars, scans, out: Path, config: IndexConfig, bar) -> dict:
    """The columnar manifest, written in bounded memory: each tar's scan goes to the columns
    and its index to a staging directory beside ``out`` as it arrives (one tar's Python lists
    at a time); duplicate keys are found at the end, vectorised over the key column.
    Nothing lands in ``out`` unless every tar indexed cleanly."""
    import shutil
    import tempfile

    from fastcas.dataset.manifest import COLUMNS_DIR, Columns, ColumnWriter, install, open_view

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        cols = ColumnWriter(stage / COLUMNS_DIR)
        shards, skipped, empty, srcs = [], [], [], []
        for n, (src, r) in enumerate(zip(tars, scans)):
            tar = src if is_url(src) else _relative(Path(src), out)
            if bar is not None:
                bar.update(1)
            skipped += r["skipped"]
            if r["samples"] == 0:  # DALI refuses an index of 0 samples
                empty.append(tar)
                continue
            c = r["cols"]
            if config.class_names and c["labels"] and max(c["labels"]) >= len(config.class_names):
                j = next(j for j, y in enumerate(c["labels"]) if y >= len(config.class_names))
                raise ValueError(f"label {c['labels'][j]} of {c['keys'][j]!r} is >= the number of class names "
                                 f"({len(config.class_names)})")
            cols.add_rows({**c, "sizes": c["sizes"] or np.zeros((0, 2))})
            name = _index_name(n, src)
            (stage / name).write_text(r["index"])
            shards.append({"tar": tar, "index": name, "count": len(c["keys"]), "samples_in_tar": r["samples"],
                           "size": r["size"], "sha256": r["sha256"]})
            srcs.append(src)
            if bar is not None:
                bar.set_postfix(samples=len(cols))
        if not len(cols):
            raise ValueError(
                f"no usable samples in {len(tars)} tar(s) ({len(skipped)} skipped"
                + (
                    f", first: {skipped[0]['key']!r} in {skipped[0]['tar']}: {skipped[0]['reason']})"
                    if skipped
                    else ")"
                )
            )
        counts = cols.class_counts
        info = cols.finish()
        keys = Columns(stage / COLUMNS_DIR, info["num_samples"]).keys
        starts = np.cumsum([0] + [s["count"] for s in shards])
        tar_of = lambda i: srcs[int(np.searchsorted(starts, i, side="right") - 1)]  # noqa: E731
        dup = keys.first_duplicate()
        if dup is not None:
            raise ValueError(f"duplicate key {keys[dup[0]]!r}: in {tar_of(dup[0])} and in {tar_of(dup[1])}")
        if skipped:  # skipped samples' keys count as taken too
            seen: dict[str, str] = {}
            for sk in skipped:
                if sk["key"] in seen:
                    raise ValueError(f"duplicate key {sk['key']!r}: in {seen[sk['key']]} and in {sk['tar']}")
                seen[sk["key"]] = sk["tar"]
            hit = keys.positions(list(seen))
            if (hit >= 0).any():
                k = list(seen)[int(np.flatnonzero(hit >= 0)[0])]
                a, b = sorted([tar_of(int(hit[hit >= 0][0])), seen[k]], key=tars.index)
                raise ValueError(f"duplicate key {k!r}: in {a} and in {b}")
        del keys
        class_names = list(config.class_names) if config.class_names else [str(k) for k in range(len(counts))]
        counts = np.concatenate([counts, np.zeros(len(class_names) - len(counts), np.int64)])
        content = hashlib.sha256("".join(f"{s['tar']}:{s['size']}:{s['sha256']}" for s in shards).encode()).hexdigest()
        header = {
            "format": FORMAT_COLUMNS,
            "num_samples": info["num_samples"],
            "shards": shards,
            "class_names": class_names,
            "class_counts": counts.tolist(),
            "label_ext": config.label_ext,
            "image_exts": sorted(cols.exts, key=cols.exts.get),
            "skipped": skipped,
            "empty_tars": empty,
            "content_hash": content,
            "source": {"sources": tars, "image_keys": list(config.image_keys), "label_key": config.label_key},
            "cache_dir": str(Path(config.cache_dir).resolve())
            if config.cache_dir and any(is_url(t) for t in tars)
            else None,
            "columns": info,
            **config.extra,
        }
        out.mkdir(parents=True, exist_ok=True)
        ours = set()
        if (out / MANIFEST).exists():  # the earlier fastcas index (checked by _check_own_index): its own .idx only
            ours = {s.get("index") for s in json.loads((out / MANIFEST).read_text()).get("shards", [])}
        (out / MANIFEST).unlink(missing_ok=True)  # from here on: no manifest until all indexes are in
        for old in out.glob("*.idx"):
            if old.name in ours:
                old.unlink()
        for sh in shards:
            os.replace(stage / sh["index"], out / sh["index"])
        install(stage / COLUMNS_DIR, out)
        atomic_write_json(out / MANIFEST, header, indent=None)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return open_view(out, header)


def _scan_one(src: str, config: IndexConfig) -> dict:
    return scan_tar(Path(src), src, config)


def _scan_all(tars: list[str], config: IndexConfig, cache, workers: int):
    """Scan results in ``tars`` order: URLs downloaded (and hashed) one at a time in this
    process, local tars scanned by ``workers`` processes (tarfile parsing is CPU-bound)."""
    local = [t for t in tars if not is_url(t)]
    pool = None
    if workers > 1 and len(local) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(min(workers, len(local)), mp_context=multiprocessing.get_context("fork"))
    try:
        # at most a few scans in flight per worker: results wait in memory only that long
        pending = iter(local)
        futures: dict = {}

        def top_up():
            while pool is not None and len(futures) < 4 * workers:
                t = next(pending, None)
                if t is None:
                    return
                futures[t] = pool.submit(_scan_one, t, config)

        for src in tars:
            top_up()
            if is_url(src):
                path, size, sha = cache.fetch_hashed(src)
                r = scan_tar(path, src, config)
                r["size"], r["sha256"] = size, sha
                yield r
            else:
                yield futures.pop(src).result() if pool else _scan_one(src, config)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def _check_own_index(out: Path) -> None:
    """``--overwrite`` replaces an index this command wrote (a ``fastcas-index`` manifest), never
    a directory of someone else's files (their own ``manifest.json`` and ``.idx`` files)."""
    try:
        old = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("format") not in (FORMAT_JSON, FORMAT_COLUMNS):
        raise FileExistsError(f"--overwrite: {out} holds no index written by `fastcas index` ({MANIFEST} missing or "
                              "of another format); refusing to delete its files. Choose an empty or new --out")


def _relative(tar: Path, out: Path) -> str:
    """The tar's path as the manifest stores it: relative to ``out`` when inside it (the
    two move together), else absolute."""
    tar, out = tar.resolve(), out.resolve()
    return str(tar.relative_to(out)) if tar.is_relative_to(out) else str(tar)
