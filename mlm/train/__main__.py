"""`python -m mlm.train`: the training command (mlm/train/trainer.py)."""

import sys

from mlm.train.trainer import main

sys.exit(main())
