"""Where the shared real data lives (parallel/, tatoeba/, xnli/, mlqa/, ...).

`$TF_MBALIGN_SHARED_DATA` when set, else `shared/data` in the parent
directory: of the current directory for the binaries (`../shared/data`), of
the checkout for the tests and benchmarks (so they find it from any
directory).

Example:
```python
tatoeba = os.path.join(default_data_root(), "tatoeba")
```
"""

import os

ENVIRONMENT_VARIABLE = "TF_MBALIGN_SHARED_DATA"


def default_data_root(beside=None):
    """The shared data directory.

    Args:
        beside: a directory whose parent holds `shared/data` (the tests and
            benchmarks pass the checkout); None: the current directory, which
            gives the relative path `../shared/data`.

    Returns:
        `$TF_MBALIGN_SHARED_DATA` if set, else `<parent of beside>/shared/data`.
    """
    parent = os.pardir if beside is None else os.path.dirname(os.path.abspath(beside))
    return os.environ.get(ENVIRONMENT_VARIABLE, os.path.join(parent, "shared", "data"))
