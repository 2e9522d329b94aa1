"""Keras on JAX, imported without the optional packages it never needs here.

`import keras` also imports scikit-learn (for its sklearn wrappers), matplotlib
(image galleries) and pandas (DataFrame inputs) when they are installed, which
they are (MLflow needs them): seconds of every trial process's start. Keras
guards each of those imports, so hiding the three while keras is
imported skips them; they are importable again right after (MLflow still gets
them). sweep feeds Keras NumPy arrays and uses none of those features.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

_OPTIONAL = ("sklearn", "matplotlib", "pandas")
_hidden = [name for name in _OPTIONAL if name not in sys.modules]
for _name in _hidden:
    sys.modules[_name] = None  # makes `import name` raise ImportError
try:
    import keras  # noqa: E402
    import keras_rs  # noqa: E402
finally:
    for _name in _hidden:
        if sys.modules.get(_name, 0) is None:
            del sys.modules[_name]

__all__ = ["keras", "keras_rs"]
