"""CLIP attributes: the CAS paper's visual attribute dictionary.

For each secondary value, embed the prompt "The photo is {value}." with CLIP's text tower;
its *key* is the image embedding from an anchor pool most similar to that text (top-1 as in
the paper; mean of the top-k as an option). The paper's pool is ImageNet-21K; fastcas's
default pool is the scored dataset itself (``fastcas score --anchors`` picks another). An image's secondary for a
primary is the key
with the highest cosine similarity to its embedding. Text-only matching (compare images with
the text embeddings directly) is the ablation. The dictionary is saved (``.npz`` + hash) and
reused, so training and validation sets are described by the same keys.

Weights: an open_clip pretrained tag (needs the network) or a local checkpoint file; with
neither the model has random weights (useful only for tests and benchmarks).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcas.core import npy
from fastcas.scoring.vocabulary import load_vocabulary

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class VisualDictionary:
    """keys: list over primaries of float32 [V_p, D] unit vectors; ``mode`` visual | text."""

    keys: list
    primaries: list
    mode: str
    meta: dict

    def assign(self, image_embeddings: np.ndarray) -> np.ndarray:
        """int64 [N, P]: per primary, the id of the key most similar to each image."""
        e = _normalise(np.asarray(image_embeddings, np.float32))
        return np.stack([(e @ k.T).argmax(1) for k in self.keys], 1).astype(np.int64)

    def digest(self) -> str:
        h = hashlib.sha256(self.mode.encode())
        for k in self.keys:
            h.update(np.ascontiguousarray(k, np.float32).tobytes())
        return h.hexdigest()[:16]

    def save(self, path) -> None:
        """``path`` (.npz: keys + embedded meta) and ``path`` with suffix .json (meta, hash)."""
        import json

        from fastcas.core.io import atomic_open, atomic_write_json

        arrays = {f"key_{p:02d}": k for p, k in enumerate(self.keys)}
        info = {**self.meta, "mode": self.mode, "primaries": self.primaries, "hash": self.digest(),
                "sizes": [int(len(k)) for k in self.keys]}
        with atomic_open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(info)), **arrays)
        atomic_write_json(Path(path).with_suffix(".json"), info)

    @classmethod
    def load(cls, path) -> "VisualDictionary":
        import json

        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such visual dictionary file")
        try:
            z = npy.load_npz(path)
            meta = json.loads(str(z["meta"]))
            keys = [z[f"key_{p:02d}"] for p in range(len(meta["primaries"]))]
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a fastcas visual dictionary ({exc})") from None
        drop = ("mode", "primaries", "sizes")
        d = cls(keys, meta["primaries"], meta["mode"], {k: v for k, v in meta.items() if k not in drop})
        if meta.get("hash") and d.digest() != meta["hash"]:
            raise ValueError(f"{path}: dictionary content does not match its hash (corrupt file)")
        return d


def build_dictionary(text_embeddings: list, anchor_embeddings: np.ndarray, primaries: list, *, top_k: int = 1,
                     mode: str = "visual", meta: dict | None = None) -> VisualDictionary:
    """``text_embeddings``: per primary float [V_p, D]; ``anchor_embeddings`` float [M, D]."""
    if mode not in ("visual", "text"):
        raise ValueError(f"mode must be 'visual' or 'text', got {mode!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    keys = []
    anchors = _normalise(np.asarray(anchor_embeddings, np.float32))
    for t in text_embeddings:
        t = _normalise(np.asarray(t, np.float32))
        if mode == "text":
            keys.append(t)
            continue
        sim = t @ anchors.T  # [V, M]
        k = min(top_k, anchors.shape[0])
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        keys.append(_normalise(anchors[top].mean(1)))
    return VisualDictionary(keys, list(primaries), mode, dict(meta or {}, top_k=top_k))


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _open_clip():
    try:
        import open_clip
    except ImportError:
        from fastcas.core.errors import missing

        raise missing("the CLIP attribute encoder", "open_clip_torch", "pip install 'fastcas[clip]'") from None
    return open_clip


def resolve_model(model: str) -> str:
    """An open_clip model name, or a model-config JSON file (registered under its stem)."""
    open_clip = _open_clip()

    if model.endswith(".json"):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such open_clip model config")
        open_clip.add_model_config(path)
        model = path.stem
    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model!r} (see open_clip.list_models(), or pass a config .json)")
    return model


def _host_reachable(host: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host``:443 opens within ``timeout`` s (DNS included)."""
    import socket
    import threading

    ok = []

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def check_pretrained_available(model: str, tag: str) -> None:
    """Fail fast (``ValueError`` naming the tag) when the weights of open_clip tag ``tag`` are
    neither in the local cache nor downloadable (offline): without this, open_clip retries
    for ~50 s and ends in a traceback."""
    import os
    from urllib.parse import urlparse

    from open_clip import pretrained as P

    cfg = P.get_pretrained_cfg(model, tag) or {}
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if cfg.get("file") and Path(cfg["file"]).exists():
        return
    host = "huggingface.co"
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, filename = os.path.split(hub)  # open_clip's convention: "org/name/" or "org/name/file"
            names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            if any(isinstance(try_to_load_from_cache(repo, n), str) for n in names):
                return
        except ImportError:
            host = urlparse(url).hostname or host
    elif url:
        if (Path.home() / ".cache" / "clip" / os.path.basename(urlparse(url).path)).exists():
            return
        host = urlparse(url).hostname or host
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") and hub
    if offline or not _host_reachable(host):
        raise ValueError(f"CLIP weights {model} pretrained={tag!r} are not in the local cache and {host} "
                         f"cannot be reached ({'HF_HUB_OFFLINE is set' if offline else 'offline?'}); "
                         "download them on a machine with network access, or pass --weights FILE "
                         "(an open_clip checkpoint)")


class ClipEncoder:
    """open_clip image and text towers.

    ``model``: open_clip model name (e.g. "ViT-B-32") or a model-config ``.json`` file.
    ``weights``: None (random weights: tests and benchmarks only), a local checkpoint file
    (never touches the network; a checkpoint that does not fit the model is a ValueError
    naming both), or an open_clip pretrained tag for that model (e.g. "openai"), the only case
    that may download. A path-like string that does not exist is a FileNotFoundError (it is
    never sent to the network as a tag).
    """

    name = "clip"

    def __init__(self, model: str = "ViT-B-32", weights: str | None = None, device: str = "cpu",
                 dictionary: VisualDictionary | None = None):
        import torch

        open_clip = _open_clip()
        model = resolve_model(model)
        self.weights_hash = "random"
        tag = None
        path = Path(weights) if weights else None
        if weights:
            if path.exists():
                self.weights_hash = _file_hash(path)
            elif path.suffix in WEIGHT_SUFFIXES or "/" in weights or "\\" in weights:
                raise FileNotFoundError(f"{weights}: no such CLIP weights file")
            else:
                tags = open_clip.list_pretrained_tags_by_model(model)
                if weights not in tags:
                    raise ValueError(f"{weights!r} is neither a weights file nor a pretrained tag of {model} "
                                     f"(tags: {', '.join(tags) or 'none'})")
                tag, self.weights_hash = weights, f"tag:{weights}"
                check_pretrained_available(model, tag)
        self.model_name, self.device = model, device
        # random initialisation is seeded (0) inside fork_rng, so every process (rank) builds
        # the same "random" model and the global torch RNG is left untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                self.model = open_clip.create_model(model, pretrained=tag, device=device).eval()
            except Exception as exc:  # download or cache failure: name the tag, no traceback
                if tag is None:
                    raise
                raise ValueError(f"CLIP weights {model} pretrained={tag!r} could not be loaded: "
                                 f"{str(exc)[:300]}") from None
        if tag is None and path is not None:
            try:
                open_clip.load_checkpoint(self.model, str(path), device=device)
            except Exception as exc:  # shape / key mismatch, unreadable file
                raise ValueError(f"{path}: CLIP weights do not fit model {model}: {str(exc)[:300]}") from None
        self.tokenizer = open_clip.get_tokenizer(model)
        size = getattr(self.model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.dictionary = dictionary
        self._torch = torch

    def metadata(self) -> dict:
        return {"encoder": "clip", "model": self.model_name, "weights_hash": self.weights_hash,
                "dictionary_hash": self.dictionary.digest() if self.dictionary else None,
                "dictionary_mode": self.dictionary.mode if self.dictionary else None}

    def embed_images(self, images, sizes=None) -> np.ndarray:
        """images [B, 3, S, S] (uint8, or float in [0, 1]) on any device -> float32 NumPy [B, D]
        unit vectors. Resized (bicubic, antialiased) to the model's size, CLIP-normalised."""
        torch = self._torch
        x = images.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.image_size:
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                                                align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
        with torch.no_grad():
            e = self.model.encode_image((x - mean) / std)
        return _normalise(e.float().cpu().numpy())

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            e = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return _normalise(e.float().cpu().numpy())

    def vocabulary_texts(self, vocab: dict | None = None) -> tuple[list, list]:
        vocab = vocab or load_vocabulary()
        prims = [p["name"] for p in vocab["primaries"]]
        texts = [self.embed_texts([vocab["prompt"].format(value=v) for v in p["values"]]) for p in vocab["primaries"]]
        return texts, prims

    def encode(self, images, sizes=None) -> np.ndarray:
        if self.dictionary is None:
            raise ValueError("ClipEncoder needs a visual dictionary (build_dictionary or --dictionary FILE)")
        return self.dictionary.assign(self.embed_images(images))
