"""ICM-LoRA (Shao et al., IJCAI 2025): generate LoRAs from a condition with a conditional VAE.

``collect`` trains a LoRA at each condition of a task family and keeps the last checkpoints of each run (ordinary
runs in a RunStore); ``fit_generator`` trains the CVAE on them; ``generate`` returns an ``Adaptation`` for a new
condition that probes, figures and exports treat like a trained one; ``generate_run`` wraps it in a ``Run``::

    import workbench as wb
    from workbench import generate as gen
    col = gen.collect("synthetic-family:path", [0, .25, .5, .75, 1], task_options={"dim": 16, "rank": 2},
                      steps=200, r=2, every=10, keep=4)
    g = gen.fit_generator(col, steps=1500)
    ad = gen.generate(g, col.task_at(0.4).model(), 0.4)
    gen.save_generator(g, "runs")  # into runs/generators/, where the dashboard lists it
"""

from .collect import Checkpoint, Collection, collect, load_collection
from .cvae import CVAE
from .generator import (
    GeneratedAdaptation,
    Generator,
    GeneratorConfig,
    fit_generator,
    generate,
    generate_run,
    load_generated,
    load_generator,
)
from .shelf import GENERATORS, generator_folder, list_generators, open_generator, save_generator

__all__ = ["Checkpoint", "Collection", "collect", "load_collection", "CVAE", "GeneratorConfig", "Generator",
           "GeneratedAdaptation", "fit_generator", "generate", "generate_run", "load_generator", "load_generated",
           "GENERATORS", "generator_folder", "save_generator", "list_generators", "open_generator"]
