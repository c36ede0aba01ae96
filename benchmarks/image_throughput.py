"""Training images per second of the SI ResNet-18: lrscan's trainer vs the study's kind of loop.

Both train the same SI ResNet-18 from the same initial point, with the same batch size, on
the same 32x32 images (the offline planted-frequency set stands in for CIFAR-10, which this
machine cannot download), for the same number of epochs.

- baseline: what the original study's code does: a torchvision-style dataset of uint8 images
  turned into normalised tensors sample by sample on the CPU (ToTensor + Normalize) by a
  shuffling ``DataLoader``, fp32, ``torch.optim.SGD`` plus a projection back to the sphere after
  every step, and evaluation on the full train and test sets after every epoch;
- lrscan: ``lrscan.train.sweep.train`` on the same spec: data resident on the device, metric
  rows every ``--log-every`` epochs (the CIFAR presets: 2), checkpoints only where the spec
  asks, TF32 on GPUs, channels-last, optionally ``--compile`` and ``--precision bf16``.

Run:  python benchmarks/image_throughput.py [--width 8] [--n-train 2048] [--epochs 2] [--device cpu]
On a GPU:  python benchmarks/image_throughput.py --width 32 --n-train 50000 --epochs 3 --device cuda
Prints images per second of each and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lrscan.spec import resolve
from lrscan.train.engine import loss_and_correct
from lrscan.train.sweep import Setup, train


def make_spec(args, log_every: float):
    return resolve({
        "sweep": {"model": "resnet18si", "dataset": "planted", "plr": [0.01], "flr": [0.001], "seeds": 1,
                  "batch_size": args.batch_size, "pretrain_epochs": args.epochs, "finetune_epochs": 0,
                  "log_every": log_every, "swa": [], "device": args.device, "compile": args.compile,
                  "precision": args.precision, "runs_per_batch": 1},
        "model": {"width": args.width},
        "data": {"size": 32, "n_classes": 10, "n_train": args.n_train, "n_test": args.n_test},
    })


class PixelDataset(Dataset):
    """uint8 HWC images converted per sample, as torchvision's CIFAR10 + ToTensor + Normalize do."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, normalization):
        mean, std = (torch.tensor(v)[:, None, None] for v in normalization)
        pixels = (x * std + mean).clamp(0, 1)
        self.images = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        self.labels = y.tolist()
        self.mean, self.std = mean.float(), std.float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float() / 255
        return (image - self.mean) / self.std, self.labels[i]


def baseline(setup: Setup, epochs: int, device: torch.device, workers: int) -> float:
    """Seconds for ``epochs`` epochs of one run the study's way."""
    spec, data = setup.spec, setup.data[0]
    model = setup.entry.build(spec.model_options, data.input_shape, data.n_classes).to(device)
    flat = setup.init_weights(0, 0)
    layers = setup.layers
    with torch.no_grad():
        params = dict(model.named_parameters())
        for layer in layers:
            if not layer.buffer:
                params[layer.name].copy_(flat[layer.start:layer.stop].view_as(params[layer.name]))
    si = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(si, lr=spec.plr[0] * spec.radius**2, momentum=0.0, weight_decay=0.0)
    train_set = PixelDataset(data.x_train, data.y_train, data.normalization)
    test_set = PixelDataset(data.x_test, data.y_test, data.normalization)
    loader = lambda ds, shuffle: DataLoader(ds, batch_size=spec.batch_size, shuffle=shuffle,  # noqa: E731
                                            drop_last=shuffle, num_workers=workers)
    sync()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader(train_set, True):
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                norm = torch.sqrt(sum(p.square().sum() for p in si))
                for p in si:
                    p.mul_(spec.radius / norm)
        model.eval()
        with torch.no_grad():
            for ds in (train_set, test_set):
                total = 0.0
                for x, y in loader(ds, False):
                    loss, correct = loss_and_correct(model(x.to(device)), y.to(device))
                    total += float(correct.float().sum())
    sync()
    return time.perf_counter() - start


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=8, help="ResNet width w (the study: 32)")
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-test", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--log-every", type=float, default=2.0, help="lrscan's epochs between metric rows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    args = parser.parse_args()

    spec = make_spec(args, args.log_every)
    setup = Setup.build(spec)
    device = torch.device(args.device)
    images = args.epochs * (args.n_train // args.batch_size) * args.batch_size
    print(f"SI ResNet-18 w={args.width} ({sum(p.numel() for p in setup.module.parameters()):,} parameters), "
          f"{args.n_train} train / {args.n_test} test images 32x32, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    seconds = baseline(setup, args.epochs, device, args.workers)
    print(f"baseline (DataLoader, fp32, eval every epoch): {seconds:7.1f} s  {images / seconds:8.1f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        sync()
        start = time.perf_counter()
        train(spec, f"{tmp}/bench.zarr")
        sync()
        ours = time.perf_counter() - start
    print(f"lrscan   (resident data, log every {args.log_every:g} epochs{', compiled' if args.compile else ''}, "
          f"{args.precision}): {ours:7.1f} s  {images / ours:8.1f} images/s")
    print(f"ratio lrscan / baseline: {seconds / ours:.2f}x")


if __name__ == "__main__":
    main()
