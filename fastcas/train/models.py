"""Classifier architectures: torchvision ResNets and the CIFAR-style ResNet-32 of the
long-tailed literature (He et al. 2016, Sec. 4.2; used by CMO for CIFAR-100-LT)."""
from __future__ import annotations

MODELS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet18", "resnet50", "resnext50")


def _cifar_resnet(depth: int, num_classes: int):
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return F.relu(y + (x if self.short is None else self.short(x)))

    n = (depth - 2) // 6
    layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(n):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def build_model(name: str, num_classes: int):
    """A torch ``nn.Module`` with randomly initialised weights and ``num_classes`` outputs."""
    if name in ("resnet8", "resnet14", "resnet20", "resnet32"):
        # depth 6n+2 (He et al. 2016, Sec. 4.2); resnet8 (n=1) is what a 2-core CPU trains in minutes
        return _cifar_resnet(int(name[len("resnet"):]), num_classes)
    import torchvision

    factories = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50,
                 "resnext50": torchvision.models.resnext50_32x4d}
    if name not in factories:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return factories[name](weights=None, num_classes=num_classes)
