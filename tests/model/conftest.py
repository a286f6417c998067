"""Hypothesis profiles for the model test and the fuzz smoke tests.

``ci`` (selected when the ``CI`` environment variable is set) is derandomized, so a CI
run is reproducible; ``dev`` (the default) is random, so local runs keep exploring;
``long`` (``HYPOTHESIS_PROFILE=long``) runs thousands of examples for a local soak.
``tests/core/conftest.py`` registers ``ci`` and ``dev`` as well: a profile another
conftest already registered is kept as it is, so the whole suite runs one set of profiles
whichever directories are collected.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.errors import InvalidArgument

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
_PROFILES: dict[str, dict[str, object]] = {
    "ci": {"max_examples": 60, "derandomize": True, "print_blob": True, **_COMMON},
    "dev": {"max_examples": 60, **_COMMON},
    "long": {"max_examples": 2_000, "print_blob": True, **_COMMON},
}

for _name, _options in _PROFILES.items():
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, **_options)  # type: ignore[arg-type]

settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
