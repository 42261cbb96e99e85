"""The DALI pipeline: the only module in fastcas that imports DALI.

    external_source(SampleSource, parallel, per sample)
      -> decoders.image_slice (ROI decode of the crop window; "mixed" on GPU, "cpu" without)
      -> resize to S x S -> crop_mirror_normalize (flip, ImageNet mean/std, CHW/HWC, fp32/fp16)

Evaluation decodes the whole image, resizes the shorter side to S / 0.875 and centre-crops
S x S. Every random choice (window, flip) comes from the stateless source, not DALI's RNG.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastcas.augment import IMAGENET_MEAN, IMAGENET_STD
from fastcas.source import SampleSource

EVAL_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class PipelineConfig:
    batch_size: int
    image_size: int = 224
    train: bool = True
    device: str = "cpu"           # "cpu" or "cuda"
    device_id: int | None = None  # GPU ordinal when device == "cuda"
    num_threads: int = 2
    py_workers: int = 1           # 0: the source runs in the main thread
    dtype: str = "float32"        # or "float16"
    channels_last: bool = False
    prefetch: int = 2

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


def build_pipeline(source: SampleSource, cfg: PipelineConfig):
    """A built DALI pipeline whose outputs are, per stream, (images, labels), then skipped."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = cfg.device == "cuda"
    decoder_device = "mixed" if gpu else "cpu"
    S = cfg.image_size
    streams = len(source.config.streams)
    parallel = cfg.py_workers > 0

    @pipeline_def(batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                  device_id=cfg.device_id if gpu else None, seed=1, prefetch_queue_depth=cfg.prefetch,
                  py_num_workers=max(cfg.py_workers, 1), py_start_method="spawn" if gpu else "fork",
                  exec_dynamic=True)
    def pipe():
        # batch mode: the source computes a whole batch vectorised (sampler, crop windows)
        raw = fn.external_source(source=source, num_outputs=source.num_outputs(), batch=True, batch_info=True,
                                 parallel=parallel, dtype=[types.UINT8, types.INT64, types.FLOAT, types.INT32] * streams + [types.INT64])
        outs = []
        for s in range(streams):
            jpeg, label, window, flip = raw[4 * s : 4 * s + 4]
            # ROI decode of the crop window (the whole image in evaluation)
            img = fn.decoders.image_slice(jpeg, window[0:2], window[2:4], device=decoder_device,
                                          output_type=types.RGB, axis_names="WH")
            if source.config.train:
                img = fn.resize(img, size=[S, S])
            else:
                img = fn.resize(img, resize_shorter=round(S / EVAL_CROP_FRACTION))
            img = fn.crop_mirror_normalize(
                img, crop=(S, S), mirror=flip[0], mean=[255 * m for m in IMAGENET_MEAN],
                std=[255 * s_ for s_ in IMAGENET_STD],
                dtype=types.FLOAT16 if cfg.dtype == "float16" else types.FLOAT,
                output_layout="HWC" if cfg.channels_last else "CHW")
            outs += [img, label]
        outs.append(raw[-1])
        return tuple(outs)

    p = pipe()
    p.build()
    return p


def build_reader_pipeline(reader, *, batch_size: int, image_size: int, num_threads: int, device: str,
                          decode_only: bool = False):
    """DALI's own sequential ``readers.webdataset`` over a dataset's shards and indexes, with
    DALI's random-resized-crop (ROI decode), resize, flip and normalise, or decode alone:
    the ceilings ``fastcas bench`` compares against (no sampler, no mixing)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device == "cuda"
    S = image_size

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=0 if gpu else None, seed=0)
    def pipe():
        jpeg, cls = fn.readers.webdataset(paths=[str(reader.local_shard(s)) for s in range(len(reader.shard_paths))],
                                          index_paths=[str(p) for p in reader.index_paths],
                                          ext=[";".join(reader.image_exts), reader.label_ext],
                                          missing_component_behavior="skip",
                                          random_shuffle=True, initial_fill=1024, name="reader")
        dev = "mixed" if gpu else "cpu"
        if decode_only:
            return fn.decoders.image(jpeg, device=dev, output_type=types.RGB), cls
        img = fn.decoders.image_random_crop(jpeg, device=dev, output_type=types.RGB,
                                            random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
        img = fn.resize(img, size=[S, S])
        img = fn.crop_mirror_normalize(img, mirror=fn.random.coin_flip(), dtype=types.FLOAT,
                                       mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
                                       output_layout="CHW")
        return img, cls

    p = pipe()
    p.build()
    return p


def to_torch(tensor_list, device: str):
    """A DALI TensorList (uniform shape) -> torch tensor on ``device`` (copy on CPU; on the
    GPU DALI copies into a torch-allocated tensor on torch's current stream)."""
    import torch

    if device == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = tensor_list.as_tensor()
        dtype = {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16,
                 np.dtype("int64"): torch.int64, np.dtype("int32"): torch.int32}[np.dtype(t.dtype)]
        out = torch.empty(t.shape(), dtype=dtype, device="cuda")
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream())
        return out
    return torch.from_numpy(np.array(tensor_list.as_tensor()))


def run(pipe, device: str) -> list:
    """One batch as torch tensors; raises StopIteration at the end of the epoch.
    Objects that are not DALI pipelines (the baseline's DataLoader) give tensors already."""
    if not hasattr(pipe, "schedule_run"):
        return pipe.run()
    return [to_torch(o, device) for o in pipe.run()]


def reset(pipe) -> None:
    pipe.reset()
