"""The device parameter: auto picks what exists, an explicit one must exist, a typo is named."""

from __future__ import annotations

import re

import pytest
import torch

from cocoseg.common.errors import ParamError
from cocoseg.modeling.device import resolve_device


def test_auto_and_cpu_resolve_to_what_this_machine_has():
    expected = "cuda" if torch.cuda.is_available() else None
    expected = expected or ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "meta", "cpu cuda", "cpu\n"])
def test_a_name_that_is_no_usable_device_is_named(name):
    with pytest.raises(
        ParamError, match=f"device = {re.escape(repr(name))} is not a device .*cuda:N"
    ):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_on_a_machine_without_it_says_so():
    with pytest.raises(ParamError, match="device = 'cuda' but CUDA is not available here"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_a_cuda_index_past_the_last_gpu_is_named():
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ParamError, match=f"has {count} CUDA device"):
        resolve_device(f"cuda:{count}")
