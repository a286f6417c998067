"""The fuzz harnesses of fuzz/, run through hypothesis and on their corpus, so they never rot.

Each harness exposes ``check(data)``, which asserts its invariant (first line of its file)
for one input replayed whole, byte by byte and split in two. Here every seed and
regression input of ``fuzz/corpus/<harness>/`` goes through it, then hypothesis-made bytes.
atheris is not needed: the long runs are ``fuzz/run``'s.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = sorted(path.stem for path in FUZZ.glob("fuzz_*.py"))


@functools.cache
def _load(name: str) -> ModuleType:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))  # the harnesses share fuzz/_harness.py
    spec = importlib.util.spec_from_file_location(f"agentcast_fuzz_{name}", FUZZ / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(name: str) -> Callable[[bytes], None]:
    check: Callable[[bytes], None] = _load(name).check
    return check


def test_every_entry_point_has_a_harness_with_a_stated_invariant() -> None:
    assert HARNESSES == [
        "fuzz_frames",
        "fuzz_http_upgrade",
        "fuzz_json_messages",
        "fuzz_publish_api",
    ]
    for name in HARNESSES:
        first = (FUZZ / f"{name}.py").read_text().splitlines()[0]
        assert first.startswith("# Invariant: "), first
        assert len(list((FUZZ / "corpus" / name).iterdir())) >= 5, f"{name}: seed corpus"


CORPUS = [
    pytest.param(name, path, id=f"{name}/{path.name}")
    for name in HARNESSES
    for path in sorted((FUZZ / "corpus" / name).iterdir())
]


@pytest.mark.parametrize(("name", "path"), CORPUS)
def test_corpus_input_keeps_the_invariant(name: str, path: Path) -> None:
    _check(name)(path.read_bytes())


@pytest.mark.parametrize("name", HARNESSES)
def test_random_bytes_keep_the_invariant(name: str) -> None:
    check = _check(name)
    seeds = [path.read_bytes() for path in sorted((FUZZ / "corpus" / name).iterdir())]

    # Random bytes alone rarely get past a parser's first check: also mutate the seeds.
    @given(
        st.one_of(
            st.binary(max_size=512),
            st.tuples(st.sampled_from(seeds), st.integers(0, 4096), st.binary(max_size=16)).map(
                lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) :]
            ),
        )
    )
    def run(data: bytes) -> None:
        check(data)

    run()
