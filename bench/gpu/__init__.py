"""The GPU check of the fast path (``bench/gpu_check.py``), one file per job."""
