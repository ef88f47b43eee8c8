"""The training entry point as a Dagster Pipes subprocess: ``python -m assets.pipes_train <train flags>``.

The same flags as ``python -m zf_pipeline.train``; progress goes to the parent's logs and the final
errors are logged back (the asset reads the run folder's result.json). Any Pipes client (subprocess,
Kubernetes, ...) can run it; it ends with the process that started it.
"""

import json
import logging
import sys

from dagster_pipes import open_dagster_pipes

from zf_pipeline.train import parse_args, train
from zf_pipeline.workers import die_with_parent


def main(argv: list[str]) -> None:
    die_with_parent()  # a kill -9 of the Dagster run must not leave this training on the GPU
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with open_dagster_pipes() as pipes:
        result = train(parse_args(argv))
        pipes.log.info(f"finished {result.out}: {json.dumps(result.final)}")


if __name__ == "__main__":
    main(sys.argv[1:])
