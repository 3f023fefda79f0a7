"""The tracking worker: ``python -m imgclass.tracking.worker``, one process beside the pipeline's.

Importing MLflow and opening its store take seconds, about as long as a short
step; in a process of their own they run on another core while the step
works, instead of adding to it. The worker reads one JSON command per line
on stdin and answers one JSON line per message on stdout; it ends at the end
of its input, after the last command is done:

- ``{"op": "open", "job": <StepJob>}``: start or resume the run of a step;
- ``{"op": "record", "job": <RecordJob>}``: log what the step did (and the model, and the end of the run);
- ``{"op": "failed", "message": "..."}``: tag the run with the step that failed;

answers: ``{"log": "..."}`` (progress for the user), ``{"warn": "..."}`` (the
one warning after a failure), ``{"done": <n>}`` after the n-th command (so
the pipeline can wait for a step's tracking to finish). Its stderr goes to a
file the caller names (MLflow's own warnings), not to the user's terminal.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from imgclass.tracking.runs import RecordJob, RunLogger, StepJob


def serve(commands: IO[str], answers: IO[str]) -> None:
    """Run the commands read from ``commands`` in order, writing the answers to ``answers``."""
    def say(**message: Any) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    logger = RunLogger(log=lambda line: say(log=line), warn=lambda line: say(warn=line))
    for number, line in enumerate(commands, start=1):
        try:
            command = json.loads(line)
            if command["op"] == "open":
                logger.open(StepJob(**command["job"]))
            elif command["op"] == "record":
                logger.record(RecordJob.from_json(command["job"]))
            elif command["op"] == "failed":
                logger.failed_step(str(command["message"]))
        except Exception as exc:  # a malformed command is our bug; it must still not stop the pipeline
            say(warn=f"warning: the MLflow tracking worker could not read a command ({type(exc).__name__}: {exc})")
        say(done=number)


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
