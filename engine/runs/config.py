"""A run's configuration (config.json) and the parsing of form and flag values into it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torchdeck.errors import InvalidRequest
from torchdeck.options import OPTIMIZERS


@dataclass
class RunConfig:
    model: str = "demo"
    data: str | None = None  # None: the model's own default data
    epochs: int = 20  # the demo's defaults make a run last 10 to 30 s on a 2-core machine
    batch_size: int = 16
    lr: float = 0.01
    optimizer: str = "sgd"
    seed: int = 0
    name: str = ""
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch; None: all cores but one (see Trainer)
    loss: str | None = None  # None: follows the targets (cross_entropy for classes, mse for floats)
    dataset_size: int | None = None  # synthetic data: None takes the set's own size; files are read whole
    checkpoint_every_epoch: bool = True
    checkpoint_on_stop: bool = True
    keep_checkpoints: int = 3
    flush_interval: float = 0.15  # seconds between loss chunks
    grad_clip: float | None = None  # clip the gradients' total norm to this (grad_norm is then recorded every step)
    model_spec: dict[str, Any] | None = None  # resolved at creation (torchdeck.models.specs.ModelSpec.to_json)
    import_root: str | None = None
    import_root_commit: str | None = None

    def validate(self) -> "RunConfig":
        """Raise InvalidRequest naming the first bad field."""
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidRequest(f"{name.replace('_', ' ')} must be a whole number of at least 1, not {v!r}",
                                     field=name)

        positive_int("epochs")
        positive_int("batch_size")
        if self.dataset_size is not None:
            positive_int("dataset_size")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (self.lr > 0) or self.lr != self.lr or self.lr == float("inf"):
            raise InvalidRequest(f"learning rate must be a positive number, not {self.lr!r}", field="lr")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidRequest(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.loss not in (None, "mse", "cross_entropy"):
            raise InvalidRequest(f"loss must be mse or cross_entropy, not {self.loss!r}")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float))
                                           or not (0 < self.grad_clip < float("inf"))):
            raise InvalidRequest(f"gradient clipping must be a positive number, not {self.grad_clip!r}",
                                 field="grad_clip")
        if self.keep_checkpoints < 1:
            raise InvalidRequest("keep checkpoints must be at least 1")
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def parse_number(text: str, name: str, kind: type) -> Any:
    """Parse a form or flag value; InvalidRequest with the field's name when it is not one."""
    try:
        v = kind(str(text).strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidRequest(f"{name} must be {what}, not {text!r}") from None
    return v
