"""Write real timm training checkpoints for tests/test_real_libraries.py, and beside them what timm
itself reports about each one (timm.json).

Runs in its own venv (`make real-timm`: torch 2.14.1, torchvision, timm), because PyPI's
torchvision does not import beside the torch the main venv holds, and timm imports torchvision.
Nothing is downloaded: the model is timm's tiny `test_resnet`, built with pretrained=False.

    python tests/real/make_timm.py OUTDIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict, resume_checkpoint
from timm.utils import CheckpointSaver, ModelEmaV3
from timm.utils.checkpoint_saver import load_checkpoint_metadata

ARCH = "test_resnet"
EPOCHS = 3
METRICS = [41.5, 57.25, 52.0]  # epoch 1 is the best: model_best.pth.tar is a copy of checkpoint-1


def shapes(sd: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # The kinds of values timm's train.py keeps in `args`: numbers, strings, None, lists, tuples.
    args = argparse.Namespace(model=ARCH, pretrained=False, num_classes=5, img_size=32, lr=0.05, momentum=0.9,
                              epochs=EPOCHS, batch_size=4, model_ema=True, model_ema_decay=0.9, mean=None,
                              hflip=0.5, scale=(0.08, 1.0), layer_decay=None, output=str(out), opt="sgd")
    model = timm.create_model(ARCH, pretrained=False, num_classes=args.num_classes)
    ema = ModelEmaV3(model, decay=args.model_ema_decay)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    saver = CheckpointSaver(model, opt, args=args, model_ema=ema, checkpoint_dir=str(out), recovery_dir=str(out),
                            max_history=2)
    x = torch.randn(4, 3, args.img_size, args.img_size)
    y = torch.randint(0, args.num_classes, (4,))
    for epoch in range(EPOCHS):
        model.train()
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update(model)
        saver.save_checkpoint(epoch, metric=METRICS[epoch])

    report: dict = {"timm": timm.__version__, "torch": torch.__version__, "arch": ARCH,
                    "model_state_dict": shapes(model.state_dict()),
                    "ema_state_dict": shapes(ema.module.state_dict()),
                    "best": {"epoch": saver.best_epoch, "metric": saver.best_metric}, "files": {}}
    for f in sorted(out.glob("*.pth.tar")):
        meta = load_checkpoint_metadata(str(f))  # timm's own reader (weights_only, Namespace allowed)
        fresh = timm.create_model(ARCH, pretrained=False, num_classes=args.num_classes)
        resume_epoch = resume_checkpoint(fresh, str(f), log_info=False)
        report["files"][f.name] = {
            "epoch": meta["epoch"], "metric": meta.get("metric"), "arch": meta["arch"], "version": meta["version"],
            "resume_epoch": resume_epoch, "args": {k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in vars(meta["args"]).items()},
            "state_dict": shapes(load_state_dict(str(f), use_ema=False)),
            "state_dict_ema": shapes(load_state_dict(str(f), use_ema=True)),
            "optimizer_state_tensors": sum(len(s) for s in meta["optimizer"]["state"].values()),
        }
    (out / "timm.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
