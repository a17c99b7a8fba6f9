"""Every variant, one module per method, grouped by family (``lowrank/``, ``rank/``, ``frequency/``, ...).

Importing this package imports every module below it, which registers each variant with
:func:`workbench.variant.register`; nothing else needs editing to add a method.
"""

import importlib
import pkgutil
import sys
import types


def _import_all() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)


_import_all()


class _CallablePackage(types.ModuleType):
    """``workbench.variants`` is this package; calling it is the deprecated spelling of
    ``workbench.variant_infos()`` (it was once a function that shadowed the package)."""

    def __call__(self):
        import warnings

        from ..variant import variant_infos

        warnings.warn("workbench.variants() is deprecated; use workbench.variant_infos()", DeprecationWarning,
                      stacklevel=2)
        return variant_infos()


sys.modules[__name__].__class__ = _CallablePackage
