"""Framework integrations: a training framework's own loop as a torchdeck run.

- `torchdeck.integrations.lightning.TorchdeckLogger`: a Lightning logger (`lightning.pytorch`
  or `pytorch_lightning`, whichever the script uses; the same object works with both).
- `torchdeck.integrations.transformers.TorchdeckCallback`: a Hugging Face `TrainerCallback`.

Both write through the logging API (torchdeck.api): every logged metric at the framework's step,
the hyper-parameters into the run's config (`runs show` shows them under `params`), the paths of
the checkpoints the framework saves (`checkpoint` records with `path`), and the run's end.

Importing this package imports neither framework nor torch; each submodule imports its own.
"""
