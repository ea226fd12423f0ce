"""The benchmark: seconds per epoch against a plain PyTorch baseline in the same run, and its
records (record.py is torch-free: the book reads it)."""

from .record import BENCH_FORMAT, format_bench, load_benches, thread_ratios  # the book's view (torch-free)

__all__ = ["BENCH_FORMAT", "format_bench", "load_benches", "thread_ratios"]
