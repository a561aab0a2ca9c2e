"""The embedding job: options, graph assembly and the command-line entry point."""

import time

# When `python -m pipeline.run` began: this package is imported before the job's modules
# (torch, Beam, transformers), whose imports are part of the start-up the job reports.
COMMAND_STARTED = time.monotonic()
