"""Build a dataset from an image search: scrape Bing Image Search into images/<datasetName>/<label>/.

Searches every '<item> <attribute>' of scrape_items x scrape_attributes (or the
'label<TAB>query' lines of scrape_queriesFile) with the Bing Image Search v7 API
at bing_endpoint, and downloads the top scrape_imagesPerQuery results of each
into images/<datasetName>/<attribute>/ as JPEGs (at most download_maxImageSide
pixels), through the same guarded HTTP client as step 0 (no private or
loopback addresses unless scrape_allowPrivateHosts = True). The API key is read
from the environment variable BING_SEARCH_V7_SUBSCRIPTION_KEY. Every URL tried is appended to
images/<datasetName>/scrapeManifest.tsv, so re-running resumes where a run
stopped. Next: scripts/removeDuplicates.py, then scripts/1_prepareData.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main
from imgclass.data.scraping import STEP, queries_from_parameters, scrape

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    params = parse_step(argv, STEP, __doc__, PROJECT_DIR)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    queries = queries_from_parameters(params)
    labels = sorted({q.label for q in queries})
    print(f"{len(queries)} queries, {len(labels)} classes ({', '.join(labels)}), "
          f"top {params.scrape_imagesPerQuery} results each, from {params.bing_endpoint}")
    report = scrape(params, queries=queries)
    print(report.summary())
    print("next: python scripts/removeDuplicates.py --dry-run  (then without --dry-run)")
    return 1 if report.search_errors else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
