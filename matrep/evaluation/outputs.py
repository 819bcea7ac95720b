"""Writing a report's JSON, CSV and markdown forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)

def _write_outputs(result, out_dir, json_name: str, csv_name: str, md_name: str) -> dict:
    """Write a result's JSON, CSV and markdown forms into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / json_name, "csv": out_dir / csv_name, "markdown": out_dir / md_name}
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2, default=_jsonable))
    atomic_write_text(paths["csv"], result.to_csv())
    atomic_write_text(paths["markdown"], result.to_markdown())
    return paths
