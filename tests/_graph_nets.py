"""Networks for tests/test_graph_arch.py: the source of a user package the test writes to a
temporary folder (and deletes before the file is read back), and small nets built here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

USER_PACKAGE = "usernet_pkg"

USER_SOURCE = '''
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Depthwise and dilated convs, BatchNorm, gating, a residual add scaled by a parameter."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1)
        self.dil = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.scale = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x):
        y = F.relu6(self.bn(self.dw(x)))
        y = self.pw(y) * torch.sigmoid(y)
        return x + self.scale * self.dil(y)


class UserNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.Hardswish())
        self.left = Block(8)
        self.right = nn.Conv2d(8, 8, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.mix = nn.Conv2d(16, 16, 1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.left(x), F.gelu(self.right(x))], dim=1)
        y = self.pool(y)
        y = F.avg_pool2d(self.mix(y), 2) + y[:, :, ::2, ::2]
        a = F.adaptive_avg_pool2d(y, 1).flatten(1)
        b = y.mean(dim=(2, 3))
        z = torch.cat((a, b.view(b.size(0), -1)), 1)
        return self.head(self.drop(z))
'''


class SlimNet(nn.Module):
    """conv-BN-ReLU twice, global pooling, a linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class Exp(SlimNet):
    def forward(self, x):
        return super().forward(x).exp()


class Constant(SlimNet):
    def forward(self, x):
        return super().forward(x) + torch.tensor([1.0])


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.rnn = nn.GRU(6, 5, batch_first=True)

    def forward(self, x):
        return self.rnn(self.conv(x).flatten(1, 2))[0].flatten(1)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = self.a

    def forward(self, x):
        return self.b(self.a(x)).mean((2, 3))


def randomize_batchnorm(net: nn.Module, seed: int = 0) -> None:
    """Random running statistics and affine parameters in every BatchNorm of ``net``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)


def relu_chain(n: int) -> dict:
    """A graph architecture of ``n`` ReLU calls on a 3x4x4 input (no weights)."""
    nodes = [{"op": "placeholder"}]
    nodes += [{"op": "call_function", "target": "torch.nn.functional.relu",
               "args": [{"node": i}]} for i in range(n)]
    nodes.append({"op": "output", "args": [{"node": n}]})
    return {"kind": "graph", "version": 1, "in_channels": 3, "image_size": 4, "num_classes": 3,
            "input_shape": [3, 4, 4], "output_shape": [3, 4, 4], "modules": [], "nodes": nodes}


__all__ = ["USER_PACKAGE", "USER_SOURCE", "Constant", "Exp", "Recurrent", "Shared",
           "SlimNet", "randomize_batchnorm", "relu_chain"]
