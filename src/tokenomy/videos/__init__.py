"""Queued generation jobs: the video queue (``/v1/videos``)."""
