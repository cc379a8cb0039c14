"""Tests run tiny models, which gain nothing from intra-op threads and lose much when cores are shared."""

import torch

torch.set_num_threads(1)
