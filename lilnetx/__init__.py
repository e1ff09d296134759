"""LilNetX: joint rate and structured-sparsity training of neural networks (ICLR 2023).

Public API::

    net = lilnetx.create_model("lenet5", in_channels=1, image_size=28, num_classes=10)
    model = lilnetx.convert(net)          # latent reparameterized LilNetXModel
    lilnetx.fit(model, splits, lilnetx.TrainConfig(lambda_rate=1e-4))
    plain = lilnetx.decode(model)         # plain torch model, decoded rounded weights

Units: rates are **bits**, file sizes **bytes**, sparsities fractions in [0, 1].
"""

from .data import DataInfo, DataSplits, create_dataset, dataset_names, iterate_batches
from .errors import ConfigError, DataError, FormatError, LilNetXError
from .experiment import RunSpec, run
from .fileformat import load, save
from .latent import GroupDecoder, LatentConv2d, LatentLinear, round_ste
from .model import LilNetXModel, convert, decode
from .models import create_model, model_names, register_model
from .slimming import count_macs, slim
from .stats import LayerStats, layer_stats, summarize
from .train import TrainConfig, TrainingDiverged, evaluate_accuracy, fit, pick_device

__all__ = [
    "ConfigError", "DataError", "DataInfo", "DataSplits", "FormatError", "GroupDecoder",
    "LatentConv2d", "LatentLinear", "LayerStats", "LilNetXError", "LilNetXModel", "RunSpec",
    "TrainConfig", "TrainingDiverged", "convert", "count_macs", "load", "save", "slim", "create_dataset", "create_model",
    "dataset_names", "decode", "evaluate_accuracy", "fit", "iterate_batches", "layer_stats",
    "model_names", "pick_device", "register_model", "round_ste", "run", "summarize",
]
