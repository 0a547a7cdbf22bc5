"""The pure helpers of the peer benchmarks (benchmarks/peers.py, benchmarks/llama_cpp_peer.py):
llama-cpp-python is not a project dependency, so nothing here runs llama.cpp."""

import pytest

from benchmarks.llama_cpp_peer import common_prefix, matching_fraction
from benchmarks.peers import llama_cpp_variants


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 5, 3]) == 1
    assert common_prefix([7, 2], [1, 2]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_matching_fraction_counts_every_position():
    assert matching_fraction([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5  # agreement after a difference counts too
    with pytest.raises(ValueError):
        matching_fraction([1, 2], [1])
    with pytest.raises(ValueError):
        matching_fraction([], [])


def test_llama_cpp_variants():
    assert llama_cpp_variants("") == []
    assert llama_cpp_variants("plain") == ["plain"]
    assert llama_cpp_variants("flash, plain") == ["plain", "flash"]
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        llama_cpp_variants("plain,fast")
