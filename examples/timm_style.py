"""A timm-style train script on fastcas through ``fastcas.integrations.timm``: the same
``create_dataset`` / ``create_loader`` calls with timm's argument names, timm's
``FastCollateMixup`` for the mixing settings, ``loader.sampler.set_epoch`` as timm's train.py
calls it. (timm's own train.py needs one added line: docs/integrations.md.)

    python examples/timm_style.py TRAIN [--model resnet18] [--steps N]
"""
import argparse
from pathlib import Path

import timm
import timm.loss
import torch
from timm.data import FastCollateMixup

from fastcas.integrations.timm import create_dataset, create_loader   # fastcas: instead of timm.data's

p = argparse.ArgumentParser()
p.add_argument("train")
p.add_argument("--model", default="resnet18")
p.add_argument("--image-size", type=int, default=64)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--steps", type=int, default=None)
p.add_argument("--device", default="auto", help="cuda, cpu or auto (a GPU when torch sees one)")
args = p.parse_args()

train = Path(args.train)
dataset = create_dataset("", root=train.parent, split=train.name, is_training=True, seed=0)
num_classes = len(dataset.class_names())
mixup = FastCollateMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=num_classes)
loader = create_loader(dataset, input_size=(3, args.image_size, args.image_size), batch_size=args.batch_size,
                       is_training=True, collate_fn=mixup, num_workers=1,       # fastcas: mixing happens inside
                       device=None if args.device == "auto" else torch.device(args.device))
device = loader.loader.device
model = timm.create_model(args.model, pretrained=False, num_classes=num_classes).to(device)
criterion = timm.loss.SoftTargetCrossEntropy()                             # as with timm's mixup
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
step = 0
for epoch in range(10**6):
    loader.sampler.set_epoch(epoch)                                        # what timm's _set_loader_epoch calls
    for images, targets in loader:                                         # on the device, normalised, mixed
        loss = criterion(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if args.steps and step >= args.steps:
            break
    if args.steps and step >= args.steps:
        break
print(f"trained {step} steps, last loss {loss.item():.3f}")
