"""`python -m basel_app.bench`: what compression costs and what it buys, measured (docs/BENCHMARKS.md).

Each sub-benchmark is a module with a settings dataclass, `run(settings) -> dict` and `render(dict) -> str`.
"""

from __future__ import annotations

from basel_app.bench import bsi_overhead, decomposition, generation, inference, recomposition, training_step

SUB_BENCHMARKS = {
    "generation": (generation.GenerationSettings, generation.run, generation.render),
    "training_step": (training_step.TrainingStepSettings, training_step.run, training_step.render),
    "recomposition": (recomposition.RecompositionSettings, recomposition.run, recomposition.render),
    "decomposition": (decomposition.DecompositionSettings, decomposition.run, decomposition.render),
    "bsi_overhead": (bsi_overhead.BsiOverheadSettings, bsi_overhead.run, bsi_overhead.render),
    "inference": (inference.InferenceSettings, inference.run, inference.render),
}
