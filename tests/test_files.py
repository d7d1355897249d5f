"""What a killed writer leaves behind is removed on the next start; finished outputs and Hydra's files stay."""

from __future__ import annotations

from basel_app.files import atomic_write_json, remove_unfinished_writes


def test_unfinished_writes_are_removed_and_finished_outputs_kept(tmp_path):
    stale = [tmp_path / ".compressed_model.partial-a1b2", tmp_path / "checkpoints" / ".recomposed.old-c3d4",
             tmp_path / "checkpoints" / ".recomposed.partial-e5f6"]
    for directory in stale:
        (directory / "model.safetensors").parent.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"half")
    stale.append(tmp_path / ".metrics.json.x1y2.tmp")
    stale[-1].write_text("{")
    kept = [tmp_path / "compressed_model" / "config.json", tmp_path / ".hydra" / "config.yaml",
            tmp_path / "checkpoints" / "post_finetune" / "epoch=0-step=2.ckpt"]
    for file in kept:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("done")
    atomic_write_json(tmp_path / "metrics.json", {"done": True})
    kept.append(tmp_path / "metrics.json")

    assert sorted(remove_unfinished_writes(tmp_path)) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
