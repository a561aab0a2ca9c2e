"""The job's Beam transforms, in the order data flows: read, validate, embed, write."""

METRICS_NAMESPACE = "embedding_job"
