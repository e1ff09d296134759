"""The MLflow pyfunc of a registered ``.lnx`` model (logged as models-from-code).

``predict`` takes a float32 array (N, C, H, W), the network's normalized input, and returns
numpy logits (N, classes), equal to those of ``lilnetx.load(FILE)``. Needs only this package
installed: no training code, no data. An input of another shape raises
:class:`lilnetx.ConfigError` saying which shape the model expects.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class LnxModel(mlflow.pyfunc.PythonModel):
    """Decodes the ``.lnx`` artifact once and runs it on the CPU."""

    def load_context(self, context) -> None:
        from lilnetx import fileformat

        c = fileformat.read(context.artifacts["model"])
        self.net = fileformat.build_network(c).eval()
        shape = c.arch.get("input_shape")  # a graph architecture records (C, H, W)
        self.input_shape = (tuple(int(v) for v in shape) if shape else
                            (c.arch["in_channels"], c.arch["image_size"], c.arch["image_size"]))

    def predict(self, context, model_input, params=None):
        import torch

        from lilnetx.errors import ConfigError
        from lilnetx.fileformat.limits import short

        expected = f"(N, {', '.join(map(str, self.input_shape))}) float32"
        try:
            x = np.asarray(model_input, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"expected input of shape {expected}, but got "
                              f"{type(model_input).__name__} that is not a float array "
                              f"({short(str(e))})") from None
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"expected input of shape {expected}, but got "
                              f"{short(tuple(x.shape))}")
        with torch.inference_mode():
            return self.net(torch.from_numpy(x)).numpy()


mlflow.models.set_model(LnxModel())
