"""Results as pandas: ``harness.load_results(path)``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.store import read_run

CASE_COLUMNS = ("id", "family", "dataset", "model", "method", "metric", "status")


def load_results(path: Path | str) -> pd.DataFrame:
    """One row per (case, sample, per-sample scalar output) of a run directory or results.h5.

    Columns: id, family, dataset, model, method, metric, status, sample (index into the test split), label,
    target, output, value, primary (whether ``output`` is the case's primary score), higher_is_better.
    A metric that is not per sample (``MetricSpec.per_sample`` False, e.g. RFE) has ``sample`` = the repeat
    number and no label or target (NaN / -1).
    Outputs with more than one value per sample (curves) are left out; read them with :func:`harness.store.read_run`.
    For example ``df[df.primary].pivot_table(index="method", columns="metric", values="value")``.
    """
    _, records = read_run(path)
    frames = []
    for record in records:
        for name, values in record.outputs.items():
            if values.ndim != 1:
                continue
            per_sample = len(record.sample_index) == len(values)
            frame = pd.DataFrame({
                "sample": record.sample_index if per_sample else np.arange(len(values)),
                "label": record.label if per_sample else np.full(len(values), np.nan),
                "target": record.target if per_sample else np.full(len(values), -1),
                "output": name, "value": values.astype(np.float64),
            })
            for column in CASE_COLUMNS:
                frame[column] = record.attrs[column]
            frame["primary"] = name == record.attrs["primary"]
            frame["higher_is_better"] = bool(record.attrs["higher_is_better"])
            frames.append(frame)
    columns = [*CASE_COLUMNS, "sample", "label", "target", "output", "value", "primary", "higher_is_better"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
