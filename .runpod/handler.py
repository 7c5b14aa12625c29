"""The RunPod Hub looks for a ``handler.py``. The worker is the ``handler``
package, started with ``python -m handler`` (the image's entrypoint); running
this file does the same."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handler.__main__ import cli  # noqa: E402

if __name__ == "__main__":
    cli()
