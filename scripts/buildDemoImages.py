"""Rebuild the bundled demo dataset ``resources/demoImages/`` from Debian's tuxpaint stamps.

The demo images are real photographs cut out on transparent backgrounds from
the package ``tuxpaint-stamps-default`` (GPL-2, see
``resources/demoImages/LICENSE.md``). This script downloads the package with
``apt-get download`` (no install, no root needed), unpacks it with
``dpkg -x``, composites each stamp onto white and saves it as JPEG, six
classes, one folder each. It only needs to run when the demo set changes;
the result is committed.

    python scripts/buildDemoImages.py [--deb=path/to/tuxpaint-stamps-default.deb]
"""

from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import tempfile
from pathlib import Path

from imgclass.io.images import load_rgb, save_jpeg

PROJECT_DIR = Path(__file__).resolve().parents[1]
OUTPUT_DIR = PROJECT_DIR / "resources" / "demoImages"
STAMPS = "usr/share/tuxpaint/stamps"

#: class name -> glob patterns under the stamps folder (cartoon/ and toys/ are drawings: skipped)
CLASSES = {
    "mammals": ["animals/mammals/**/*.png"],
    "birds": ["animals/birds/*.png"],
    "fruit": ["food/fruit/*.png"],
    "flowers": ["plants/flowers/**/*.png"],
    "vegetables": ["food/vegetables/**/*.png"],
    "fish": ["animals/fish/*.png"],
}
SKIPPED_FOLDERS = ("cartoon", "toys")


def fetch_deb(workdir: Path) -> Path:
    subprocess.run(["apt-get", "download", "tuxpaint-stamps-default"], cwd=workdir, check=True)
    return next(workdir.glob("tuxpaint-stamps-default_*.deb"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deb", type=Path, help="an already downloaded tuxpaint-stamps-default .deb")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        deb = args.deb or fetch_deb(workdir)
        subprocess.run(["dpkg", "-x", str(deb), str(workdir / "x")], check=True)
        stamps = workdir / "x" / STAMPS
        for label, patterns in CLASSES.items():
            files = sorted({Path(f) for p in patterns for f in glob.glob(str(stamps / p), recursive=True)})
            files = [f for f in files if not set(f.relative_to(stamps).parts) & set(SKIPPED_FOLDERS)]
            for source in files:
                relative = source.relative_to(stamps).with_suffix("")
                name = "_".join(relative.parts[-2:]) + ".jpg"
                save_jpeg(load_rgb(source), OUTPUT_DIR / label / name, quality=90)
            print(f"{label:12s} {len(files):4d} images")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
