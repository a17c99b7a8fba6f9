"""LoRA Workbench: train, inspect and compare parameter-efficient fine-tuning methods side by side.

The public API (see docs/DESIGN.md)::

    import workbench as wb
    task = wb.tasks.get("synthetic:lowrank")
    run = wb.train(task, "lora", steps=200, lr=1e-2, r=4)
    wb.figures.loss_curves(run).show()
"""

# Import the variant and recipe packages first: this registers every method. ``workbench.variants`` stays the
# package; calling it (the old spelling of ``variant_infos()``) still works, with a DeprecationWarning.
# ``workbench.recipes`` is the recipes package, and calling it, ``wb.recipes()``, lists the recipes (RecipeInfo).
from . import recipes, variants  # noqa: F401  isort: skip
from . import figures, generate, tasks
from .adapt import Adaptation, adapt, load_adaptation, match_targets
from .compare import Comparison, compare
from .compose import Composition, compose
from .errors import ConfigError
from .events import Callback, StepContext, TrainControl
from .options import Options, param
from .peft_import import from_peft
from .recipes import RecipeInfo, get_recipe, recipe_infos, recipe_names
from .runs import Run, RunStore
from .settings import Preset, TrainSettings
from .study import run_study, study
from .train import train
from .variant import (
    Shared,
    Variant,
    VariantConfig,
    VariantInfo,
    VariantLayer,
    get_variant,
    register,
    variant_infos,
    variant_names,
    variant_table,
)

__version__ = "0.1.0"

__all__ = ["ConfigError", "Options", "param", "Shared", "Variant", "VariantConfig", "VariantInfo", "VariantLayer",
           "get_variant", "register", "variant_infos", "variant_names", "variant_table", "variants", "Adaptation",
           "adapt", "load_adaptation", "match_targets", "tasks", "figures", "train", "compare", "Comparison", "Run",
           "RunStore", "TrainSettings", "recipes", "recipe_infos", "recipe_names", "get_recipe", "RecipeInfo",
           "Preset", "TrainControl", "StepContext", "Callback", "from_peft", "compose", "Composition", "study",
           "run_study", "generate", "__version__"]
