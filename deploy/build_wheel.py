"""Build the installable wheel, with the built demo page inside it.

The wheel carries ``server/static`` (package data) so that an installed server serves the
page from any folder. The source is staged in a temporary folder first, so a build never
leaves ``build/``, ``*.egg-info`` or a copied page in the checkout.

    python deploy/build_wheel.py [OUTDIR]     # default: dist/ (``make wheel``)

``frontend/dist`` must be built (``make wheel`` builds it); the wheel's path is printed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "server", "providers")


def build_wheel(outdir: Path) -> Path:
    page = ROOT / "frontend" / "dist"
    if not (page / "index.html").is_file():
        raise SystemExit(f"{page} is not built: run `make wheel` (or `cd frontend && npm run build`)")
    outdir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "static")
    with tempfile.TemporaryDirectory(prefix="wheel-") as staging_dir:
        staging = Path(staging_dir)
        for name in SOURCES:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, staging / name, ignore=ignore)
            else:
                shutil.copy2(source, staging / name)
        shutil.copytree(page, staging / "server" / "static")
        before = set(outdir.glob("*.whl"))
        subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(staging)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    built = sorted(set(outdir.glob("*.whl")) - before) or sorted(outdir.glob("*.whl"))
    return built[-1]


if __name__ == "__main__":
    print(build_wheel(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"))
