"""Run ``trainer.test`` of a fixed Linear model under 2-process DDP (gloo) and dump the metrics.

Usage: python ddp_test_script.py CACHE_DIR OUT_JSON [ACCELERATOR]   (cpu: gloo, the default; gpu: NCCL)
"""

import json
import sys

import lightning.pytorch as pl
import torch

from set_lightning.data import NBodyDataModule
from set_lightning.lit import NBodyLightningModule
from set_lightning.models import build_model

if __name__ == "__main__":
    cache, out = sys.argv[1], sys.argv[2]
    accelerator = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    torch.manual_seed(0)
    dm = NBodyDataModule(n_train=8, n_val=8, n_test=40, history=1, batch_size=6, cache_dir=cache)
    module = NBodyLightningModule(build_model("linear", time=0.9), lr=1e-3)
    trainer = pl.Trainer(accelerator=accelerator, strategy="ddp", devices=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.test(module, datamodule=dm, verbose=False)
    if trainer.global_rank == 0:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["n_gathered"] = int(module.per_trajectory["test"].shape[0])
        with open(out, "w") as f:
            json.dump(metrics, f)
