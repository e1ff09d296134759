"""LilNetX: joint rate and structured-sparsity training of neural networks (ICLR 2023).

Public API::

    net = lilnetx.create_model("lenet5", in_channels=1, image_size=28, num_classes=10)
    model = lilnetx.convert(net)          # latent reparameterized LilNetXModel
    lilnetx.fit(model, splits, lilnetx.TrainConfig(lambda_rate=1e-4))
    plain = lilnetx.decode(model)         # plain torch model, decoded rounded weights

Units: rates are **bits**, file sizes **bytes**, sparsities fractions in [0, 1].
"""

from .data import (
    DataInfo,
    DataSplits,
    create_dataset,
    dataset_names,
    iterate_batches,
    register_dataset,
    splits_from_arrays,
)
from .errors import ConfigError, DataError, FormatError, LilNetXError
from .experiment import RunSpec, run
from .fileformat import load, save
from .latent import GroupDecoder, LatentConv2d, LatentLinear, round_ste
from .methods import Method, Param, create_method, method_names, register_method
from .metrics import Metric, metric, metric_names, register_metric
from .model import LilNetXModel, convert, decode
from .models import create_model, model_names, register_model
from .slimming import count_macs, slim
from .stats import LayerStats, layer_stats, summarize
from .train import TrainConfig, TrainingDiverged, evaluate_accuracy, fit, pick_device

__all__ = [
    "ConfigError", "DataError", "DataInfo", "DataSplits", "FormatError", "GroupDecoder",
    "LatentConv2d", "LatentLinear", "LayerStats", "LilNetXError", "LilNetXModel", "Method",
    "Metric", "Param", "RunSpec", "TrainConfig", "TrainingDiverged", "convert", "count_macs",
    "create_dataset", "create_method", "create_model", "dataset_names", "decode",
    "evaluate_accuracy", "fit", "iterate_batches", "layer_stats", "load", "method_names",
    "metric", "metric_names", "model_names", "pick_device", "register_dataset",
    "register_method", "register_metric", "register_model", "round_ste", "run", "save", "slim",
    "splits_from_arrays", "summarize",
]
