"""The names of things in a run folder (and in the checkpoints folder that holds the runs), declared once.

A run folder is itself a `save_pretrained` checkpoint (the last one), with:
    checkpoint.json      the manifest: step, size and sha256 of every file of the checkpoint (mlm/runs/manifest.py)
    metrics.jsonl        one JSON object per line; appended while training, so other processes plot it live
                         (mlm/runs/metrics.py)
    train_config.json    the TrainConfig that made it
    README.md            the model card (mlm/runs/card.py)
    training_state/      optimizer.safetensors, rng.safetensors + state.json: what `--resume` needs
                         (mlm/train/state.py)
    best/                the checkpoint with the lowest validation loss so far
    diverged.json        only after the loss went non-finite: the run is not offered until resumed
    progress.json        what the training process is doing right now (mlm/runs/progress.py)
    snapshots/           weight snapshots for the time-lapse and their manifest.json (mlm/runs/snapshots.py);
                         not part of the checkpoint's manifest: they are added between checkpoints
    train.log            the training process's output, when the app started it
    upload/              the app's copy of an uploaded corpus (and that corpus's datasets cache)
    .staging-*           a checkpoint being written (mlm/runs/manifest.py publishes it)
"""

CHECKPOINT_MANIFEST = "checkpoint.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
CARD_FILE = "README.md"
STATE_DIR = "training_state"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
BEST_DIR = "best"
DIVERGED_FILE = "diverged.json"
PROGRESS_FILE = "progress.json"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_MANIFEST = "manifest.json"  # in SNAPSHOT_DIR
LOG_FILE = "train.log"
UPLOAD_DIR = "upload"
STAGING_PREFIX = ".staging-"

# In the checkpoints folder (beside the run folders): {"pid", "run_dir", "started_at"} of the app's running job
LOCK_FILE = ".training-job.json"
