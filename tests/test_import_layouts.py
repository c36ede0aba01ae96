"""The study's own folders import as they are, with the commands of README "Importing checkpoints".

Each folder is written by a helper here exactly as the study's scripts write theirs (their
folder and file names, dict keys, units, numpy values and seed conventions; see
isadrtdinov/understanding-large-lrs), with tiny models: the CNN scripts' ConvNet (width 4,
CIFAR-10's on-disk format), the ViT scripts' ``vit_small_si`` and the synthetic example's
trace files. The helpers train with their own loop, the study's: nothing here is lrscan's
trainer, so the store must hold what the files hold.
"""

import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

import lrscan
from lrscan.cli import main
from lrscan.data import DATASETS
from lrscan.importer import import_checkpoints
from lrscan.models import MODELS
from lrscan.store import read_spec, verify
from lrscan.train.flat import layout
from lrscan.train.sweep import Setup
from tests.conftest import assert_one_line_error
from tests.test_images import write_batch

RADIUS = 12.0  # the ConvNet scripts' fix_si_pnorm_value
PLRS = (0.001, 0.01, 0.1)
FLRS = (0.0001, 0.001)  # 0.001 is also a PLR: a fine-tuning folder must not pass for a pre-training one
BATCH, N_TRAIN, N_TEST = 5, 20, 100
DROP, EPOCHS = 4, 6  # the drop script: epochs 1..3 at the PLR, 4..6 at the FLR; fine-tuning branches at 3


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sets(*pairs):
    return [a for p in pairs for a in ("--set", p)]


# ---------------------------------------------------------------------------------------------
# The CNN scripts (convolutional_networks/experiments/drops_with_clean_cifar10, ft_2_stages)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """CIFAR-10 in its on-disk format: five batches of 4 training images, 100 test images."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (N_TRAIN + N_TEST, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    for i in range(5):
        write_batch(folder / f"data_batch_{i + 1}", images[4 * i: 4 * i + 4], labels[4 * i: 4 * i + 4], "labels")
    write_batch(folder / "test_batch", images[N_TRAIN:], labels[N_TRAIN:], "labels")
    return root


def cifar_options(root):
    return [f"data.data_dir='{root}'", "data.download=false", f"data.n_train={N_TRAIN}", f"data.n_test={N_TEST}"]


class StudyConvNet:
    """The study's ConvNetSI (width 4) and its training protocol: SGD at lr = ELR·ρ² on the
    convolutions, the SI norm fixed to ρ after every step, train-mode running train metrics
    and eval-mode test metrics in percent, one checkpoint dict per epoch."""

    def __init__(self, cifar_root):
        entry = DATASETS["cifar10"]
        options = entry.validate({**entry.defaults, "data_dir": str(cifar_root), "download": False,
                                  "n_train": N_TRAIN, "n_test": N_TEST})
        self.data = entry.load(options, 0)
        self.entry = MODELS["convnetsi"]
        self.options = self.entry.validate({**self.entry.defaults, "width": 4})

    def build(self, seed):
        torch.manual_seed(seed)
        module = self.entry.build(self.options, (3, 32, 32), 10)
        self.fix_norm(module)
        return module

    def si(self, module):
        return [p for n, p in module.named_parameters() if self.entry.is_si(n)]

    def fix_norm(self, module):
        with torch.no_grad():
            norm = math.sqrt(sum(float((p ** 2).sum()) for p in self.si(module)))
            for p in self.si(module):
                p.mul_(RADIUS / norm)

    def official(self, module):
        """The state dict with the study's names (num_batches_tracked included)."""
        return {self.entry.official(k, self.options): v.detach().clone() for k, v in module.state_dict().items()}

    def evaluate(self, module, x, y):
        module.eval()
        with torch.no_grad():
            out = module(x)
        return {"loss": F.cross_entropy(out, y).item(), "accuracy": (out.argmax(1) == y).float().mean().item() * 100}

    def train_epoch(self, module, optimizer, generator):
        module.train()
        loss_sum = correct = 0.0
        order = torch.randperm(N_TRAIN, generator=generator)
        for i in range(N_TRAIN // BATCH):
            idx = order[i * BATCH:(i + 1) * BATCH]
            out = module(self.data.x_train[idx])
            loss = F.cross_entropy(out, self.data.y_train[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            self.fix_norm(module)
            loss_sum += loss.item() * BATCH
            correct += (out.argmax(1) == self.data.y_train[idx]).sum().item()
        return {"loss": loss_sum / N_TRAIN, "accuracy": correct / N_TRAIN * 100}

    def run(self, folder, seed, elr_of, epochs, start=None):
        """Train and save ``checkpoint-{epoch}.pt`` for each epoch: from init (epoch 0, no
        training, no train metrics) or from ``start = (module, epoch)``; returns the states."""
        folder.mkdir(parents=True)
        module = self.build(seed) if start is None else start[0]
        first = 0 if start is None else start[1] + 1
        optimizer = torch.optim.SGD(self.si(module), lr=0.0, momentum=0.0)
        generator = torch.Generator().manual_seed(seed)
        states = {}
        for epoch in range(first, epochs + 1):
            for group in optimizer.param_groups:
                group["lr"] = elr_of(epoch) * RADIUS ** 2
            train = self.train_epoch(module, optimizer, generator) if epoch > 0 else {"loss": None, "accuracy": None}
            test = self.evaluate(module, self.data.x_test, self.data.y_test)
            states[epoch] = self.official(module)
            torch.save({"epoch": epoch, "state_dict": states[epoch], "optimizer": optimizer.state_dict(),
                        "train_res": train, "test_res": test}, folder / f"checkpoint-{epoch}.pt")
        return module, states

    def grad_norms(self, folder):
        """What calc_grad_norms (--train_mode 1) adds to every checkpoint: numpy values."""
        for path in sorted(folder.glob("checkpoint-*.pt")):
            checkpoint = torch.load(path, weights_only=False)
            module = self.entry.build(self.options, (3, 32, 32), 10)
            theirs = {self.entry.official(k, self.options): k for k in module.state_dict()}
            module.load_state_dict({theirs[k]: v for k, v in checkpoint["state_dict"].items()})
            module.train()
            gnorms, loss_sum, correct = [], 0.0, 0
            for i in range(N_TRAIN // BATCH):
                x, y = self.data.x_train[i * BATCH:(i + 1) * BATCH], self.data.y_train[i * BATCH:(i + 1) * BATCH]
                out = module(x)
                loss = F.cross_entropy(out, y)
                grads = torch.autograd.grad(loss, self.si(module))
                gnorms.append(np.sqrt(sum((g ** 2).sum().item() for g in grads)))
                loss_sum += loss.item() * BATCH
                correct += (out.argmax(1) == y).sum().item()
            checkpoint["gnorm_trainmode_m_train"] = np.array(gnorms).mean()
            checkpoint["loss_trainmode_train"] = loss_sum / N_TRAIN
            checkpoint["acc_trainmode_train"] = correct / N_TRAIN
            torch.save(checkpoint, path)


def cnn_folders(root, study, script):
    """Pre-training runs of the drop script (drop epoch 1000, never reached), one seed per PLR
    (2000 + i), gradient norms added; fine-tuning runs by ``script``: ``"drop"`` reruns from
    init and drops at epoch 4 (its folders also hold pre-training epochs 0-3), ``"fixedinit"``
    continues the pre-training checkpoint 3 for epochs 4-6 (the FIXEDINIT_DROP folders)."""
    files = {}
    for i, plr in enumerate(PLRS):
        seed = 2000 + i
        folder = root / f"ConvNetSI_CIFAR10_elri_{plr}_elrd_{plr}_dropepoch_1000_wd_0.0_seed_{seed}_noaug_True"
        _, files[plr] = study.run(folder, seed, lambda e: plr, EPOCHS)
        study.grad_norms(folder)
        for flr in FLRS:
            if script == "drop":
                folder = root / (f"ConvNetSI_CIFAR10_elri_{plr}_elrd_{flr}_dropepoch_{DROP}_wd_0.0_seed_{seed}"
                                 "_noaug_True")
                _, states = study.run(folder, seed, lambda e: flr if e >= DROP else plr, EPOCHS)
            else:
                start = study.build(seed)
                start.load_state_dict({k: v for k, v in zip(start.state_dict(), files[plr][DROP - 1].values())})
                folder = (root / f"FIXEDINIT_DROP_ConvNetSI_CIFAR10_elri_{plr}_elrd_{flr}_dropepochfrom_{DROP - 1}"
                                 f"_wd_0.0_seed_{seed}_noaug_True")
                _, states = study.run(folder, seed, lambda e: flr, EPOCHS, start=(start, DROP - 1))
            files[(plr, flr)] = states
    return files


# The README's command for the CNN scripts, at this scale: pre-training to epoch 3, continued to 5
# for the SWA window (200 and 299 in the study), the drop at 4 (201).
PT_PATTERN = ("ConvNetSI_CIFAR10_elri_{plr}_elrd_{plr}_dropepoch_1000_wd_*_seed_{seed}_noaug_True/"
              "checkpoint-{epoch:0-5}.pt")
FT_PATTERNS = {
    "drop": "ConvNetSI_CIFAR10_elri_{plr}_elrd_{flr}_dropepoch_4_wd_*_seed_{seed}_noaug_True/checkpoint-{epoch:4-}.pt",
    "fixedinit": "FIXEDINIT_DROP_ConvNetSI_CIFAR10_elri_{plr}_elrd_{flr}_dropepochfrom_3_wd_*_seed_{seed}_noaug_True/"
                 "checkpoint-{epoch}.pt",
}
CNN_SETS = ["batch_size=5", "pretrain_epochs=3", "swa=[2, 3]", "swa_window={start=3, every=1}", "model.width=4",
            "device='cpu'"]


def cnn_import(source, store, cifar_root, script, *extra):
    return run_cli("import", source, "--store", store, "--model", "convnetsi", "--dataset", "cifar10",
                   "--pattern", PT_PATTERN, "--pattern", FT_PATTERNS[script], "--ft-epoch-origin", "start",
                   *sets(*CNN_SETS, *cifar_options(cifar_root)), *extra)


@pytest.fixture(scope="module", params=["drop", "fixedinit"])
def cnn(request, cifar, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"cnn-{request.param}")
    study = StudyConvNet(cifar)
    files = cnn_folders(root / "Experiments", study, request.param)
    store = root / "cnn.zarr"
    result = cnn_import(root / "Experiments", store, cifar, request.param)
    return request.param, root / "Experiments", files, store, result, study


def test_cnn_folders_import_as_the_scripts_wrote_them(cnn, cifar):
    script, source, files, store, result, study = cnn
    assert result.exit_code == 0, result.output
    spec = read_spec(store)
    # One seed per PLR: a dense grid with one replicate, not 3 x 3 runs of which 6 are empty.
    assert spec.seeds == (0,) and spec.plr == PLRS and spec.flr == FLRS
    assert "have no file" not in result.stderr and "replicate index" in result.stderr
    attrs = lrscan.open(store).attrs["lrscan_import"]
    assert attrs["seed_axis"] == {"kind": "replicate",
                                  "replicates": [{"plr": p, "seeds": [2000 + i]} for i, p in enumerate(PLRS)]}
    # The radius is the files' (the script's 12), not the model's default.
    assert spec.radius == RADIUS != MODELS["convnetsi"].radius(spec.model_options)
    assert "radius 12 (the SI-group norm of the files)" in result.stderr
    assert "fine-tuning branches from epoch 3" in result.stderr
    assert "test_res.accuracy, train_res.accuracy read as percentages" in result.stderr
    # The schedule: branch at 3 (the last pre-training epoch before the first fine-tuning file).
    assert (spec.pretrain_epochs, spec.finetune_from, spec.finetune_epochs) == (3, 3, 3)
    excluded = (len(PLRS) * len(FLRS) * DROP if script == "drop" else 0) + len(PLRS)  # + each PT run's epoch 6
    assert f"{excluded} files lie outside the patterns' epoch ranges" in result.stderr
    assert "warning" not in result.stderr  # the stored test accuracies are lrscan's evaluation of the weights
    assert verify(store) == []

    tree = lrscan.open(store)
    layers = layout(study.entry, study.entry.build(study.options, (3, 32, 32), 10))
    names = {study.entry.official(l.name, study.options): l for l in layers}

    def flat(state):
        out = np.full(max(l.stop for l in layers), np.nan, dtype=np.float32)
        for key, tensor in state.items():
            if key in names:
                out[names[key].start:names[key].stop] = tensor.reshape(-1).numpy()
        return out

    pt_w, pt_m = tree["pretrain/weights"]["weights"], tree["pretrain/metrics"]
    assert list(pt_w.epoch.values) == [0, 1, 2, 3, 4, 5]
    for i, plr in enumerate(PLRS):
        for epoch in range(6):
            np.testing.assert_array_equal(pt_w.sel(plr=plr, seed=0, epoch=epoch).values, flat(files[plr][epoch]))
            saved = torch.load(source / f"ConvNetSI_CIFAR10_elri_{plr}_elrd_{plr}_dropepoch_1000_wd_0.0_seed_{2000 + i}"
                                        f"_noaug_True/checkpoint-{epoch}.pt", weights_only=False)
            row = pt_m.sel(plr=plr, seed=0, epoch=epoch)
            # The study's train metrics are train-mode running means: stored as such, not as full-set ones.
            if epoch == 0:
                assert np.isnan(row["running_train_acc"]) and np.isnan(row["running_train_loss"])
            else:
                assert float(row["running_train_acc"]) == np.float32(saved["train_res"]["accuracy"] / 100)
                assert float(row["running_train_loss"]) == np.float32(saved["train_res"]["loss"])
            assert np.isnan(row["train_acc"]) and np.isnan(row["train_loss"])
            assert float(row["test_acc"]) == np.float32(saved["test_res"]["accuracy"] / 100)
            assert float(row["grad_norm"]) == np.float32(saved["gnorm_trainmode_m_train"])
            assert float(row["weight_norm"]) == pytest.approx(RADIUS, rel=1e-6)
    ft_w = tree["finetune/weights"]["weights"]
    assert list(ft_w.epoch.values) == [4, 5, 6]
    for plr in PLRS:
        for flr in FLRS:
            for epoch in (4, 5, 6):
                np.testing.assert_array_equal(ft_w.sel(plr=plr, flr=flr, seed=0, epoch=epoch).values,
                                              flat(files[(plr, flr)][epoch]))
    assert tree["swa/metrics"]["done"].values.all()
    meanings = attrs["metrics"]
    assert meanings["running_train_acc"].startswith("train_res.accuracy: the mean over the training steps")
    assert meanings["grad_norm"].startswith("gnorm_trainmode_m_train:") and "test_acc" in meanings
    assert attrs["accuracy"] == {"test_res.accuracy": "percent", "train_res.accuracy": "percent"}


@pytest.mark.parametrize("extra, message", [
    (["--set", "radius=4.47"], r"--set radius=4\.47 differs from the files' SI-group norm 12 "),
    (["--accuracy", "fraction"], r"checkpoint-0\.pt: test accuracy [\d.]+ is above 1; give --accuracy percent"),
    (["--seed-axis", "replicate", "--set", "seeds=2"], r"--set seeds: the checkpoints' paths give it"),
])
def test_cnn_refusals_are_one_line_and_leave_no_store(cnn, cifar, tmp_path, extra, message):
    script, source, *_ = cnn
    store = tmp_path / "s.zarr"
    assert_one_line_error(cnn_import(source, store, cifar, script, *extra), message)
    assert not store.exists()


def test_files_on_another_sphere_are_refused(cnn, cifar, tmp_path):
    script, source, *_ = cnn
    copy = shutil.copytree(source, tmp_path / "Experiments")
    # One pre-training run projected to another radius (another fix_si_pnorm_value).
    run = copy / f"ConvNetSI_CIFAR10_elri_{PLRS[1]}_elrd_{PLRS[1]}_dropepoch_1000_wd_0.0_seed_2001_noaug_True"
    for path in run.glob("checkpoint-*.pt"):
        checkpoint = torch.load(path, weights_only=False)
        for key in checkpoint["state_dict"]:
            if key.endswith(".weight") and key.startswith("conv_layers"):
                checkpoint["state_dict"][key] *= 11.0 / RADIUS
        torch.save(checkpoint, path)
    store = tmp_path / "s.zarr"
    assert_one_line_error(cnn_import(copy, store, cifar, script),
                          r"the files' SI-group norms disagree: 11 \(.*seed_2001.*\) against 12 \(.*\), beyond the "
                          r"tolerance 0\.1%")
    assert not store.exists()


def test_the_shared_seed_axis_is_the_cross_product(cnn, cifar, tmp_path):
    script, source, *_ = cnn
    result = import_checkpoints(str(source), str(tmp_path / "s.zarr"), "convnetsi",
                                [PT_PATTERN, FT_PATTERNS[script]], dataset="cifar10", ft_epoch_origin="start",
                                overrides=CNN_SETS + cifar_options(cifar), seed_axis="shared", check=False)
    assert result.spec.seeds == (2000, 2001, 2002) and result.seed_axis == "shared"
    assert len(result.missing) == 2 * 3 + 2 * 3 * 2  # what the replicate axis avoids
    assert result.imported == {"pretrain": 3, "finetune": 6}


# ---------------------------------------------------------------------------------------------
# The ViT scripts (vision_transformer/train_cifar10.py via launch_pt.py / launch_ft.py)

VIT = {"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16}
VIT_EPOCHS, VIT_CKPTS = 10, (6, 8, 10)  # 500 and 482..500 every 2 in the study


def vit_folder(root):
    """What train_cifar10.py saves: {'model', 'optimizer', 'scaler'} at the --ckpt_epochs, the
    study's tensor names, no metrics; PT seed i and FT seed 100 j + i, in no path."""
    entry = MODELS["vitsi"]
    options = entry.validate({**entry.defaults, **VIT})
    ckpts = root / "ckpts" / "cifar10_ckpt_adam_wd=1e-4"
    (ckpts / "PT").mkdir(parents=True)
    (ckpts / "FT").mkdir()
    states = {}

    def save(module, path, key):
        state = {entry.official(k, options): v.detach().clone() for k, v in module.state_dict().items()}
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, weight_decay=1e-4)
        module(torch.zeros(1, 3, 32, 32)).sum().backward()
        optimizer.step()  # an optimiser state holding tensors, as after training
        torch.save({"model": state, "optimizer": optimizer.state_dict(),
                    "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                               "_growth_tracker": 0}}, path)
        states[key] = state

    for i, plr in enumerate((1e-4, 1e-3), 1):
        torch.manual_seed(i)
        module = entry.build(options, (3, 32, 32), 10)
        for epoch in VIT_CKPTS:
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            save(module, ckpts / f"PT/cifar10-vit_small_si-plr={plr}-ep={epoch}.pt", (plr, epoch))
        for j, flr in enumerate((1e-5, 1e-4), 1):
            torch.manual_seed(100 * j + i)
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            save(module, ckpts / f"FT/cifar10-vit_small_si-plr={plr}-flr={flr}-ep={VIT_EPOCHS}.pt", (plr, flr))
    return ckpts, states


def test_vit_folders_import_as_the_scripts_wrote_them(cifar, tmp_path):
    ckpts, states = vit_folder(tmp_path)
    store = tmp_path / "vit.zarr"
    result = run_cli("import", ckpts, "--store", store, "--model", "vitsi", "--dataset", "cifar10",
                     "--pattern", "PT/cifar10-vit_small_si-plr={plr}-ep={epoch}.pt",
                     "--pattern", "FT/cifar10-vit_small_si-plr={plr}-flr={flr}-ep={epoch}.pt",
                     *sets("batch_size=5", "swa=[2, 3]", "swa_window={stop=10, every=2}", "device='cpu'",
                           *[f"model.{k}={v}" for k, v in VIT.items()], *cifar_options(cifar)))
    assert result.exit_code == 0, result.output
    assert "imported 2 pretrain, 4 finetune, 2 swa runs (10 files)" in result.stderr
    spec = read_spec(store)
    assert spec.radius is None and spec.seeds == (0,)
    assert (spec.pretrain_epochs, spec.finetune_from, spec.finetune_epochs, spec.log_every) == (10, 10, 10, 2)
    tree = lrscan.open(store)
    layers = layout(MODELS["vitsi"], MODELS["vitsi"].build(spec.model_options, (3, 32, 32), 10))
    options = spec.model_options
    weights = tree["pretrain/weights"]["weights"]
    assert weights.sel(epoch=0).isnull().all()  # the scripts keep no initial weights
    for plr in (1e-4, 1e-3):
        for epoch in VIT_CKPTS:
            row = weights.sel(plr=plr, seed=0, epoch=epoch).values
            for l in layers:
                np.testing.assert_array_equal(row[l.start:l.stop],
                                              states[(plr, epoch)][MODELS["vitsi"].official(l.name, options)]
                                              .reshape(-1).numpy())
        for flr in (1e-5, 1e-4):
            row = tree["finetune/weights"]["weights"].sel(plr=plr, flr=flr, seed=0, epoch=20).values
            first = layers[0]
            np.testing.assert_array_equal(
                row[first.start:first.stop],
                states[(plr, flr)][MODELS["vitsi"].official(first.name, options)].reshape(-1).numpy())
    assert tree["pretrain/metrics"]["test_acc"].isnull().all()  # the files hold no metrics
    assert "read as" not in result.stderr and "warning" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The synthetic example (synthetic_example/scripts.py, train.py): one trace file per run


def trace_file(weights, metrics, state, path, test_acc=None):
    """What pretrain()/finetune() save: the final state dict, the batch losses and the trace of
    iterates (trainable weights only, one flat vector each) and of full-set metrics
    (``test_acc``: accuracies scored elsewhere instead of the weights' own)."""
    n_steps = 4 * (len(weights) - 1)  # 4 steps per epoch, an iterate and a metric row every epoch
    values = lambda name: [float(v) for v in metrics[name].values]  # noqa: E731
    trace = {"train_loss": values("train_loss"), "test_loss": values("test_loss"), "train_acc": values("train_acc"),
             "test_acc": values("test_acc") if test_acc is None else [test_acc] * len(weights),
             "weight": [torch.from_numpy(np.array(w)) for w in weights],
             "stoch_grad": [torch.zeros(len(weights[0]))] * len(weights),
             "stoch_grad_norm": [0.0] * len(weights)}
    torch.save({"model": state, "batch_losses": [0.5] * n_steps, "trace": trace}, path)


def synthetic_folder(trained, root, test_acc=None):
    """The synthetic example's savedir (pt_lr=...pt, config.json) and ft_savedir, from the
    seed 0 runs of a trained store (the study's runs have one seed per folder)."""
    tree = lrscan.open(trained)
    spec = read_spec(trained)
    entry = MODELS["mlp"]
    module = entry.build(spec.model_options, (32,), 2)
    layers = layout(entry, module)
    sl = [l for l in layers if l.trainable]
    pt_w, pt_m = tree["pretrain/weights"]["weights"].load(), tree["pretrain/metrics"].to_dataset().load()
    ft_w, ft_m = tree["finetune/weights"]["weights"].load(), tree["finetune/metrics"].to_dataset().load()
    (root / "pt").mkdir(parents=True)
    (root / "ft").mkdir()
    (root / "pt/config.json").write_text('{"batch_size": 16, "ckpt_iters": 4, "log_iters": 4}')
    data = Setup.build(spec).data[0]  # the samples the runs were trained on, saved as launch_pretraining does
    views = torch.ones(1, len(data.x_train), dtype=torch.bool)
    torch.save((data.x_train, data.x_test, data.y_train, data.y_test, views), root / "pt/data.pt")

    def state(flat):
        return {entry.official(l.name, spec.model_options):
                torch.from_numpy(np.array(flat[l.start:l.stop])).reshape(l.shape) for l in layers}

    def iterates(w):
        return [np.concatenate([row[l.start:l.stop] for l in sl]) for row in w.values]

    for plr in spec.plr:
        w, m = pt_w.sel(plr=plr, seed=0), pt_m.sel(plr=plr, seed=0)
        trace_file(iterates(w), m, state(w.values[-1]), root / f"pt/pt_lr={plr:.3e}.pt", test_acc)
        branch = iterates(w.sel(epoch=spec.resolved_finetune_from).expand_dims("epoch"))
        for flr in spec.flr:
            # A fine-tuning trace starts at the branch point (iteration 0 of finetune()).
            w, m = ft_w.sel(plr=plr, flr=flr, seed=0), ft_m.sel(plr=plr, flr=flr, seed=0)
            trace_file(branch + iterates(w), m, state(w.values[-1]), root / f"ft/pt_lr={plr:.3e}-ft_lr={flr:.3e}.pt",
                       test_acc)
    return root


def synthetic_import(source, store):
    """The README's command for the synthetic example: the trace files, the data of data.pt."""
    return run_cli("import", source, "--store", store, "--model", "mlp", "--dataset", "files",
                   "--pattern", "pt/pt_lr={plr}.pt", "--pattern", "ft/pt_lr={plr}-ft_lr={flr}.pt",
                   *sets(f"data.path='{source / 'pt/data.pt'}'", "batch_size=16", "swa=[2, 3]", "device='cpu'"))


def test_synthetic_trace_files_import_directly(trained_small, tmp_path):
    source = synthetic_folder(trained_small, tmp_path / "runs")
    store = tmp_path / "synthetic.zarr"
    result = synthetic_import(source, store)
    assert result.exit_code == 0, result.output
    assert "imported 2 pretrain, 4 finetune, 2 swa runs (6 files)" in result.stderr
    assert "2 files under" in result.stderr and "pt/config.json" in result.stderr  # listed, not imported
    spec = read_spec(store)
    assert spec.radius == 1.0 and spec.seeds == (0,)
    assert (spec.pretrain_epochs, spec.finetune_from, spec.finetune_epochs, spec.log_every) == (4, 4, 2, 1)
    original, copy = lrscan.open(trained_small), lrscan.open(store)
    for stage in ("pretrain", "finetune", "swa"):
        a = copy[f"{stage}/weights"]["weights"].isel(seed=0).load()
        b = original[f"{stage}/weights"]["weights"].isel(seed=0).load()
        np.testing.assert_array_equal(a.values, b.values)
    for stage in ("pretrain", "finetune"):
        a = copy[f"{stage}/metrics"].to_dataset().isel(seed=0).load()
        b = original[f"{stage}/metrics"].to_dataset().isel(seed=0).load()
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm"):
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{stage} {name}")
    meanings = copy.attrs["lrscan_import"]["metrics"]
    assert meanings["train_acc"].startswith("trace.train_acc: the full set at the logged step")
    assert "trace.test_acc, trace.train_acc read as fractions" in result.stderr
    assert "warning: the stored test accuracy" not in result.stderr


def test_stored_test_accuracies_that_lrscan_does_not_reproduce_are_flagged(trained_small, tmp_path):
    # Test accuracies the weights do not have on the store's test set: scored on other data.
    source = synthetic_folder(trained_small, tmp_path / "runs", test_acc=0.98)
    result = synthetic_import(source, tmp_path / "s.zarr")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: the stored test accuracy")]
    assert len(warning) == 1 and "beyond binomial noise" in warning[0] and "(128 samples)" in warning[0]


def test_analyses_of_an_imported_cnn_folder_match_independent_computations(cnn):
    """Angles, SWA accuracy, barriers and gradient norms of the imported store against the same
    quantities computed here from the study's files with plain torch (the study's way)."""
    from torch.optim.swa_utils import update_bn

    from lrscan.analyze.geometry import angles, barriers
    from lrscan.analyze.grad_norms import solution_grad_norm

    script, source, files, store, result, study = cnn
    tree = lrscan.open(store)
    conv = [k for k in files[PLRS[0]][0] if k.startswith("conv_layers") and k.endswith("weight")]
    x_train, x_test, y_test = study.data.x_train, study.data.x_test, study.data.y_test

    def module_of(state):
        module = study.entry.build(study.options, (3, 32, 32), 10)
        theirs = {study.entry.official(k, study.options): k for k in module.state_dict()}
        module.load_state_dict({theirs[k]: v for k, v in state.items()})
        return module

    def constructed(state):
        """A point made from others: SI group back on the sphere, BN recomputed as update_bn does."""
        state = {k: v.clone() for k, v in state.items()}
        norm = math.sqrt(sum(float((state[k].double() ** 2).sum()) for k in conv))
        for k in conv:
            state[k] *= RADIUS / norm
        module = module_of(state)
        update_bn(torch.utils.data.DataLoader(x_train, batch_size=BATCH), module)
        return module

    def test_error(module):
        return 100 - study.evaluate(module, x_test, y_test)["accuracy"]

    def si_vector(state):
        return np.concatenate([state[k].double().numpy().ravel() for k in conv])

    found = angles(tree).angle_matrix
    swa = tree["swa/metrics"]["test_acc"]
    bars = barriers(tree, pairs=[("ft_low", "ft_high")])
    grads = solution_grad_norm(tree, solutions=["pt"])
    alpha = np.linspace(0, 1, 21)
    for plr in PLRS:
        pt, low, high = files[plr][3], files[(plr, FLRS[0])][6], files[(plr, FLRS[-1])][6]
        u, v = si_vector(pt), si_vector(low)
        expected = np.arccos(np.clip(u @ v / np.sqrt((u @ u) * (v @ v)), -1, 1))
        assert float(found.sel(plr=plr, seed=0, solution="pt", solution_b=f"ft={FLRS[0]:g}")) == \
            pytest.approx(expected, abs=1e-6)
        for k in (2, 3):  # SWA over the continued pre-training, epochs 3 ... 3+K-1
            mean = {key: torch.stack([files[plr][e][key].double() for e in range(3, 3 + k)]).mean(0).float()
                    if key in conv else files[plr][3][key] for key in pt}
            theirs = study.evaluate(constructed(mean), x_test, y_test)["accuracy"] / 100
            assert float(swa.sel(plr=plr, seed=0, swa=k)) == pytest.approx(theirs, abs=1e-6)
        errors = []
        for a in alpha:
            point = {key: (1 - a) * low[key] + a * high[key] if key in conv else low[key] for key in pt}
            errors.append(test_error(constructed(point)))
        errors = np.array(errors)
        expected = max(0.0, float(np.max(errors - ((1 - alpha) * errors[0] + alpha * errors[-1]))))
        assert float(bars.test_barrier.sel(plr=plr, seed=0).squeeze()) == pytest.approx(expected, abs=1e-4)
        saved = torch.load(source / f"ConvNetSI_CIFAR10_elri_{plr}_elrd_{plr}_dropepoch_1000_wd_0.0_seed_"
                                    f"{2000 + PLRS.index(plr)}_noaug_True/checkpoint-3.pt", weights_only=False)
        assert float(grads.grad_norm.sel(plr=plr, seed=0, solution="pt")) == \
            pytest.approx(float(saved["gnorm_trainmode_m_train"]), rel=1e-5)
