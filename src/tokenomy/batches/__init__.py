"""Batch jobs: OpenAI Files and Batches over a job store, run through the pipeline."""
