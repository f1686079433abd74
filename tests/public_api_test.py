"""The modules users import declare ``__all__``: exactly their public functions, classes and
constants (no imported modules, no helpers), and ``from module import *`` gives those names."""

import ast
import importlib
import inspect
import types

import pytest

MODULES = [
    "hfpl_jax.affinity_pairs",
    "hfpl_jax.atomic_io",
    "hfpl_jax.checkpoint",
    "hfpl_jax.config_utils",
    "hfpl_jax.data",
    "hfpl_jax.data.cli",
    "hfpl_jax.data.coco",
    "hfpl_jax.data.color",
    "hfpl_jax.data.fake_data",
    "hfpl_jax.data.input_pipeline",
    "hfpl_jax.data.sources",
    "hfpl_jax.data.transforms",
    "hfpl_jax.data.validation",
    "hfpl_jax.data.voc",
    "hfpl_jax.feature_similarity",
    "hfpl_jax.image_ops",
    "hfpl_jax.losses",
    "hfpl_jax.parallel",
    "hfpl_jax.pooling",
]


def _bound_names(target) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [name for element in target.elts for name in _bound_names(element)]
    return []


def _top_level(module: types.ModuleType):
    """Names the module's own source binds at the top level: ``(defined, imported)``, where
    ``imported`` maps each name bound by ``from X import name`` to ``X``."""
    defined, imported = set(), {}
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(name for target in node.targets for name in _bound_names(target))
        elif isinstance(node, ast.AnnAssign):
            defined.update(_bound_names(node.target))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module
    return defined, imported


def _public(name: str) -> bool:
    return not name.startswith("_")


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_names(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} declares no __all__ list"
    assert exported == sorted(set(exported)), f"{name}.__all__: keep it sorted, without repeats"
    defined, imported = _top_level(module)
    missing = sorted(n for n in defined if _public(n) and n != "__all__" and n not in exported)
    assert not missing, f"{name}: public names missing from __all__: {missing}"
    for export in exported:
        assert _public(export), f"{name}.__all__ lists the private name {export}"
        assert hasattr(module, export), f"{name}.__all__ lists {export}, which it does not bind"
        value = getattr(module, export)
        assert not isinstance(value, types.ModuleType), f"{name}.__all__ lists a module: {export}"
        if export in defined:
            continue
        # A re-export must be the public API of another hfpl_jax module, not a library's name
        # (``jax``, ``NamedTuple``) nor a helper of a private module.
        source = imported.get(export)
        assert source is not None, f"{name}.__all__ lists {export}, neither defined nor imported"
        parts = source.split(".")
        assert parts[0] == "hfpl_jax" and all(map(_public, parts)), (
            f"{name}.__all__ re-exports {export} from {source}, not a public hfpl_jax module"
        )
        assert export in importlib.import_module(source).__all__, (
            f"{name}.__all__ re-exports {export}, which {source}.__all__ does not list"
        )


@pytest.mark.parametrize("name", MODULES)
def test_star_import_gives_all(name):
    namespace = {}
    exec(f"from {name} import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == importlib.import_module(name).__all__
