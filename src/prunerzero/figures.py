"""Figures as files: matplotlib with the Agg backend, chosen inside each call (never at import) so
importing prunerzero does not pick or change anyone's backend, and every PNG written atomically
(``io.write_bytes``: a killed run leaves the old figure or the new one)."""
from __future__ import annotations

import io as _bytes_io
from pathlib import Path
from typing import Any

from . import io


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only; no display is needed or wanted)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path | str, tight: bool = True) -> Path:
    """Render ``fig`` to PNG in memory (120 dpi; ``tight``: cropped to what is drawn), close it, and
    write the file atomically."""
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, **({"bbox_inches": "tight"} if tight else {}))
    pyplot().close(fig)
    io.write_bytes(path, buf.getvalue())
    return Path(path)
