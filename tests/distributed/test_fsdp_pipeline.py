"""The whole pipeline under FSDP2 (`trainer=fsdp`): Basel, BSI and SVD-LLM in 2 CPU processes (gloo) on the tiny
random Llama, against the same sweep in one process with the same seed and global batch."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from .test_ddp_pipeline import checksums, logits, sweep

FSDP = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "task.train_batch_size=2"]
METHODS = "basel,bsi,svd_llm"


def test_fsdp_in_two_cpu_processes_prunes_scores_and_saves_as_one_process_does(tmp_path):
    (tmp_path / "fsdp").mkdir()
    output = sweep(tmp_path / "fsdp", FSDP, METHODS)
    sweep(tmp_path, ["task.train_batch_size=4", f"hydra.sweep.dir={tmp_path / 'one'}"], METHODS)

    assert output.count("Launching 3 jobs") == 1
    (sweep_dir,) = (tmp_path / "fsdp" / "multirun").iterdir()
    for job in ("0_basel", "1_bsi", "2_svd_llm"):
        sharded_dir, one_dir = sweep_dir / job, tmp_path / "one" / job
        sharded, one = (json.loads((d / "metrics.json").read_text()) for d in (sharded_dir, one_dir))
        assert sharded["ranks"] == one["ranks"], job
        assert 1.5 <= sharded["compression_ratio"] == one["compression_ratio"] < 1.5 * 1.02, job
        if job != "2_svd_llm":
            # Every event decided the same masks on both ranks, and the masks of the single process.
            sharded_sums, one_sums = checksums(sharded_dir), checksums(one_dir)
            assert sorted(sharded_sums) == [0, 1] and sorted(sharded_sums[0]) == [1, 2, 3], job
            assert sharded_sums[0] == sharded_sums[1] == one_sums[0], job
        # The model gathered from the shards, saved by rank 0, reloads both ways to the single process's logits.
        torch.testing.assert_close(logits(sharded_dir), logits(one_dir), rtol=1e-4, atol=1e-4)
        auto = AutoModelForCausalLM.from_pretrained(sharded_dir / "compressed_model").eval()
        ids = torch.randint(0, auto.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            torch.testing.assert_close(auto(input_ids=ids).logits, logits(sharded_dir))
        assert "failed.json" not in {p.name for p in sharded_dir.iterdir()}
        assert not (sharded_dir / "checkpoints").exists()
    # BSI scored on sharded s̃: each rank's per-example gradients (half the batches), all-reduced, are the
    # single process's (a zero gradient is refused by the estimator itself, so these are real estimates).
    bsi_sharded, bsi_one = (json.loads((d / "1_bsi" / "metrics.json").read_text())["importance"]
                            for d in (sweep_dir, tmp_path / "one"))
    assert [r["event"] for r in bsi_sharded] == [1, 2, 3]
    for a, b in zip(bsi_sharded, bsi_one):
        for key in ("hessian_diag_mean", "score_stderr_mean"):
            assert b[key] > 0 and abs(a[key] - b[key]) <= 1e-4 * b[key], key
