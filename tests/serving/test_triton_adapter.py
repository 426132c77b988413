"""tapestry.serving.triton_adapter without Triton: what it checks when a model loads."""
import pytest

from tapestry.serving.filtering import CandidateFilter
from tapestry.serving.triton_adapter import check_config


def test_a_config_declaring_every_stage_input_loads():
    check_config(CandidateFilter, {"input": [{"name": n} for n in CandidateFilter.inputs]})


def test_a_repository_exported_before_stages_took_the_tenant_fails_to_load_with_what_to_do():
    old = {"input": [{"name": n} for n in CandidateFilter.inputs if n != "TENANT"]}
    with pytest.raises(RuntimeError, match=r"model 'filter': config.pbtxt does not declare input\(s\) \['TENANT'\]"
                                           r".*run `tapestry export` again"):
        check_config(CandidateFilter, old)
