"""Shared test settings."""

import torch

# The tests run tiny networks on a 2-core machine: one intra-op thread avoids oversubscription (measured here:
# tests/test_train.py 77 s with torch's default threads, 9 s with one).
torch.set_num_threads(1)
