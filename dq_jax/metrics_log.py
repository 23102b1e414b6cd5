"""`DIR/metrics.jsonl`: one JSON object per logged training step or evaluation."""

from __future__ import annotations

import json

import numpy as np


class MetricsLog:
    """Appends one JSON object per line; `enabled=False` (processes other than the main one)
    writes nothing, so a multi-process run logs each record once."""

    def __init__(self, path: str, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({k: (float(v) if isinstance(v, (np.floating, np.integer)) else v)
                                    for k, v in record.items()}) + "\n")
