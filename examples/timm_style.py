"""A timm-style train script: timm builds the model and the loss; fastcas replaces
``timm.data.create_loader`` + ``timm.data.Mixup``. Differences are marked.

    python examples/timm_style.py TRAIN [--model resnet18] [--steps N]
"""
import argparse

import timm
import timm.loss
import torch

import fastcas

p = argparse.ArgumentParser()
p.add_argument("train")
p.add_argument("--model", default="resnet18")
p.add_argument("--image-size", type=int, default=64)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--steps", type=int, default=None)
p.add_argument("--device", default="auto", help="cuda, cpu or auto (a GPU when torch sees one)")
args = p.parse_args()

# was: loader = create_loader(dataset, input_size=..., is_training=True, ...); mixup_fn = Mixup(cutmix_alpha=1.0, ...)
loader = fastcas.Loader(args.train, args.batch_size, mix="cutmix", alpha=1.0, label_smoothing=0.1,
                        image_size=args.image_size, device=args.device)    # fastcas: mixing happens inside
model = timm.create_model(args.model, pretrained=False, num_classes=loader.num_classes).to(loader.device)
criterion = timm.loss.SoftTargetCrossEntropy()                             # as with timm's Mixup
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
step = 0
for images, targets in loader:                                             # was: images, targets = mixup_fn(images, targets)
    loss = criterion(model(images), targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if args.steps and step >= args.steps:
        break
print(f"trained {step} steps, last loss {loss.item():.3f}")
