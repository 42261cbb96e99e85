"""A plain PyTorch training loop. Against its DataLoader version, only the marked lines differ.

    python examples/plain_loop.py TRAIN_DATASET [--epochs 1] [--steps N]
"""
import argparse

import torch
import torchvision

import fastcas

p = argparse.ArgumentParser()
p.add_argument("train")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--image-size", type=int, default=64)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--steps", type=int, default=None, help="stop after this many steps (smoke tests)")
p.add_argument("--device", default="auto", help="cuda, cpu or auto (a GPU when torch sees one)")
args = p.parse_args()

# was: loader = DataLoader(ImageFolder(...), batch_size=..., shuffle=True, num_workers=...)
loader = fastcas.Loader(args.train, args.batch_size, weights="cmo", mix="cutmix", alpha=1.0,
                        image_size=args.image_size, device=args.device)  # fastcas
model = torchvision.models.resnet18(num_classes=loader.num_classes)      # fastcas: num_classes from the loader
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
device = loader.device                                                   # fastcas: batches arrive on the device
model.to(device)
step = 0
for epoch in range(args.epochs):
    loader.set_epoch(epoch)                                              # fastcas (like DistributedSampler)
    for images, targets in loader:                                       # already on the device
        loss = torch.nn.functional.cross_entropy(model(images), targets)  # soft targets work as-is
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if args.steps and step >= args.steps:
            break
    if args.steps and step >= args.steps:                                # --steps limits the whole run
        break
print(f"trained {step} steps, last loss {loss.item():.3f}")
