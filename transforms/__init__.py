"""The job's Beam transforms, in the order data flows: read, validate, join with the previous run, embed, write."""

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

METRICS_NAMESPACE = "embedding_job"


def in_global_window(output):
    """finish_bundle's outputs must carry their window; this batch job has only the global one."""
    window = GlobalWindow()
    if isinstance(output, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(output.tag, WindowedValue(output.value, window.max_timestamp(), [window]))
    return WindowedValue(output, window.max_timestamp(), [window])
