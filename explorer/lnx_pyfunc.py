"""The MLflow pyfunc of a registered ``.lnx`` model (logged as models-from-code).

``predict`` takes a float32 array (N, C, H, W), the network's normalized input, and returns
numpy logits (N, classes), equal to those of ``lilnetx.load(FILE)``. Needs only this package
installed: no training code, no data.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class LnxModel(mlflow.pyfunc.PythonModel):
    """Decodes the ``.lnx`` artifact once and runs it on the CPU."""

    def load_context(self, context) -> None:
        import lilnetx

        self.net = lilnetx.load(context.artifacts["model"]).eval()

    def predict(self, context, model_input, params=None):
        import torch

        x = np.asarray(model_input, dtype=np.float32)
        with torch.inference_mode():
            return self.net(torch.from_numpy(x)).numpy()


mlflow.models.set_model(LnxModel())
