"""Models by name, adapted to a data set's channels, image size and classes.

``create_model("resnet20", in_channels=3, image_size=32, num_classes=10, width=4)``. Names:
``mlp``, ``lenet5``, ``resnet20``/``resnet32``/``resnet56`` (CIFAR-style), ``vgg16``
(CIFAR-style, with BatchNorm) and ``tv:NAME`` for any torchvision classification model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lilnetx.errors import ConfigError
from lilnetx.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "lilnetx.models")
"""Model builders ``f(in_channels, image_size, num_classes, width) -> nn.Module`` by name;
plugins add theirs through the ``lilnetx.models`` entry-point group."""


def register_model(name: str):
    """Decorator adding a model builder ``f(in_channels, image_size, num_classes, width)``."""
    return MODELS.register(name)


def model_names() -> list[str]:
    """Registered model names (``tv:NAME`` is accepted in addition)."""
    return MODELS.names()


def create_model(
    name: str | dict, *, in_channels: int, image_size: int, num_classes: int, width: float = 1.0
) -> nn.Module:
    """Build model ``name`` for inputs (N, in_channels, image_size, image_size) and
    ``num_classes``: a registered name, ``tv:NAME`` (a torchvision classifier), or a factory
    ``{"factory": "pkg.module:function", "args": {...}}`` naming the user's own code, called
    with ``args`` and whichever of ``in_channels``, ``image_size``, ``num_classes`` and
    ``width`` it accepts."""
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ConfigError(f"width must be positive, but got {width!r}")
    if isinstance(name, dict):
        from lilnetx.factory import call_factory

        net = call_factory(name, "model", in_channels=in_channels, image_size=image_size,
                           num_classes=num_classes, width=width)
        if not isinstance(net, nn.Module):
            raise ConfigError(f"model factory {name.get('factory')!r} returned "
                              f"{type(net).__name__}, not a torch.nn.Module")
        return net
    if isinstance(name, str) and name.startswith("tv:"):
        return _torchvision_model(name[3:], in_channels, num_classes)
    if name not in MODELS:
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:80] + "..."
        raise ConfigError(
            f"unknown model {shown}; choose one of: {', '.join(model_names())}, or tv:NAME "
            "for a torchvision classifier"
        )
    return MODELS.get(name)(in_channels, image_size, num_classes, width)


def _w(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


@register_model("mlp")
def mlp(in_channels: int, image_size: int, num_classes: int, width: float) -> nn.Module:
    """Two hidden layers of 300 and 100 units (LeNet-300-100)."""
    d = in_channels * image_size * image_size
    h1, h2 = _w(300, width), _w(100, width)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                         nn.Linear(h2, num_classes))


@register_model("lenet5")
def lenet5(in_channels: int, image_size: int, num_classes: int, width: float) -> nn.Module:
    """LeNet-5: conv5(6) pool conv5(16) pool fc120 fc84; small inputs keep padding on conv2."""
    c1, c2 = _w(6, width), _w(16, width)
    pad2 = 0 if image_size // 2 >= 10 else 2
    features = nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
    return nn.Sequential(features, nn.Linear(flat, _w(120, width)), nn.ReLU(),
                         nn.Linear(_w(120, width), _w(84, width)), nn.ReLU(),
                         nn.Linear(_w(84, width), num_classes))


class BasicBlock(nn.Module):
    """CIFAR ResNet block; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images (He et al. 2016, sec. 4.2), widths 16/32/64 x ``width``."""

    def __init__(self, depth: int, in_channels: int, num_classes: int, width: float):
        super().__init__()
        n = (depth - 2) // 6
        widths = [_w(16, width), _w(32, width), _w(64, width)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for b in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x)).flatten(1)
        return self.fc(x)


for _depth in (20, 32, 56):
    register_model(f"resnet{_depth}")(
        lambda c, s, k, w, _d=_depth: CifarResNet(_d, c, k, w)
    )

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@register_model("vgg16")
def vgg16(in_channels: int, image_size: int, num_classes: int, width: float) -> nn.Module:
    """VGG-16 with BatchNorm for small images; pooling stops once the map is 1x1."""
    layers: list[nn.Module] = []
    cin, size = in_channels, image_size
    for v in _VGG16:
        if v == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        cout = _w(int(v), width)
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def _torchvision_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    from torchvision import models as tvm

    available = tvm.list_models(module=tvm)
    if name not in available:
        raise ConfigError(
            f"unknown torchvision model {name!r}; choose a classifier such as "
            f"tv:resnet18, tv:mobilenet_v3_small (torchvision has {len(available)})"
        )
    model = tvm.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels)
    return model


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                            m.dilation, 1 if m.groups == 1 else in_channels, m.bias is not None)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            return
    raise ConfigError("torchvision model has no Conv2d to adapt to the input channels")
