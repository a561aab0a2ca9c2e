"""Arrow schemas and Parquet metadata of the job's inputs, outputs and rejects."""
