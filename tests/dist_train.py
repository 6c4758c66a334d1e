"""Worker of tests/test_distributed.py, started by torchrun: `dist_train.py CONFIG.json` trains that TrainConfig."""

import json
import sys

import torch

from textrec.train import TrainConfig, train

if __name__ == "__main__":
    torch.set_num_threads(1)
    with open(sys.argv[1], encoding="utf-8") as handle:
        result = train(TrainConfig.from_dict(json.load(handle)))
    assert result.steps > 0
