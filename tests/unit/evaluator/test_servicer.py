"""A job's report shows its output's chain without another job's ids (reuse crosses tenants)."""

from __future__ import annotations

from modelpress.v1 import common_pb2
from services.evaluator.servicer import own_links


def test_a_reused_stage_of_another_job_shows_how_it_was_made_but_none_of_its_ids():
    job = common_pb2.Job(job_id="j-mine", model=common_pb2.ModelRef(artifact_id="a-myupload"))
    theirs = {"job_id": "j-theirs", "stage_index": 1, "method": "gptq", "input": "artifact:a-theirupload",
              "config": {"bits": 4, "calibration_dataset": "a-theirdata"}, "key": "k1"}
    same_input = {**theirs, "input": "artifact:a-myupload"}
    mine = {"job_id": "j-mine", "stage_index": 2, "method": "onnx", "input": "artifact:a-mid",
            "config": {"teacher": "a-teacher"}, "key": "k2"}
    shown = own_links([theirs, same_input, mine], job)
    assert shown[0] == {"job_id": "", "stage_index": 0, "method": "gptq", "input": "(an artifact of another job)",
                        "config": {"bits": 4}, "key": "k1"}
    assert shown[1]["input"] == "artifact:a-myupload" and shown[1]["job_id"] == ""
    assert shown[2] == mine  # this job's own stages are shown whole
    assert "j-theirs" not in repr(shown) and "a-theirupload" not in repr(shown) and "a-theirdata" not in repr(shown)
