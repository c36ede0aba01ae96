"""The reduced synthetic sweep the reliability benchmarks share: the default preset's grids
and model, 10x shorter stages, batches of 64 runs (so there are several units of work)."""

OVERRIDES = [
    "pretrain_epochs=125", "finetune_from=125", "finetune_epochs=62.5", "log_every=12.5",
    "checkpoint_epochs={start = 109.375, stop = 125, step = 3.125}", "swa=[2, 5]",
    "runs_per_batch=64", "compile=false", "device='cpu'",
]


def set_args() -> list[str]:
    return [arg for o in OVERRIDES for arg in ("--set", o)]
