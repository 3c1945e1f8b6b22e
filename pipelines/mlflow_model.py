"""MLflow pyfunc wrapper around a ctr serving bundle (logged as "models from code": no pickling).

``mlflow.pyfunc.load_model(uri).predict(df)`` takes a DataFrame of raw feature values (one
column per schema field) and returns CTR probabilities; ``mlflow models predict`` works too.
"""

import mlflow
import numpy as np
import pandas as pd
import polars as pl


class CtrBundleModel(mlflow.pyfunc.PythonModel):
    """Loads the bundle once (``load_context``) and scores raw rows per call (``predict``)."""

    def load_context(self, context) -> None:
        from ctr.export.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        if isinstance(model_input, pd.DataFrame):
            frame = pl.from_pandas(model_input)
        elif isinstance(model_input, pl.DataFrame):
            frame = model_input
        else:
            frame = pl.DataFrame(model_input)
        return self.bundle.score(frame)


mlflow.models.set_model(CtrBundleModel())
