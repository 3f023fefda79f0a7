"""Step 0: put images into <rootDir>/images/<datasetName>/<class>/.

With download_urlsFile = '' (the default) the bundled demo images
(resources/demoImages, Tux Paint stamps, GPL-2+) are copied there, so the
tutorial runs offline. Otherwise download_urlsFile names a TSV file of
'label<TAB>url' lines (see resources/sampleImageUrls.tsv): each image is
downloaded into images/<datasetName>/<label>/, checked to be a readable image
and shrunk to download_maxImageSide pixels. Each download must finish within
download_timeoutSeconds; URLs on private, loopback or link-local addresses are
refused unless scrape_allowPrivateHosts = True (the image search's guard).
Files already present are skipped and nothing is ever deleted or overwritten,
so re-running is safe and only fetches what is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main
from imgclass.data.download import (
    STEP,
    count_images,
    download_images,
    http_policy,
    install_demo_images,
    read_url_list,
    resolve_urls_file,
)
from imgclass.io.http import HttpClient
from imgclass.layout import DatasetLayout
from imgclass.parameters import DEMO_DATASET_NAME

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    params = parse_step(argv, STEP, __doc__, PROJECT_DIR)
    images_dir = DatasetLayout.from_parameters(params).images_dir

    if not params.download_urlsFile:
        if params.datasetName != DEMO_DATASET_NAME:
            print(f"download_urlsFile is empty: installing the bundled demo images "
                  f"(dataset '{DEMO_DATASET_NAME}') under the dataset name '{params.datasetName}'")
        report = install_demo_images(params.demo_images_dir, images_dir)
        print(report.summary())
        print(f"licence and attribution of the demo images: {params.demo_images_dir / 'LICENSE.md'}")
    else:
        urls_file = resolve_urls_file(params.download_urlsFile, params.parametersFile)
        entries = read_url_list(urls_file)
        labels = sorted({label for label, _ in entries})
        print(f"{len(entries)} URLs in {len(labels)} classes from {urls_file} -> {images_dir}")
        report = download_images(entries, images_dir, HttpClient(http_policy(params)),
                                 params.download_maxImageSide)
        print(report.summary())

    print(f"{images_dir} now holds {count_images(images_dir)} images; next: scripts/1_prepareData.py")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
