"""The one-sentence outcome of a job: it never hides a regression and says when a figure is noise."""

from modelpress.v1 import common_pb2
from modelpress.headline import AMBER, GREEN, RED, job_headline


def _result(*, ppl_after=13.50, rss_after=600.0, prefill=(1.3, 1.2, 1.4), decode=(1.1, 1.02, 1.2),
            unreliable_decode=False):
    result = common_pb2.CompressionResult(compressed_model_size_bytes=270, original_model_size_bytes=540)
    for metrics, ppl, rss in ((result.original, 13.487, 700.0), (result.compressed, ppl_after, rss_after)):
        metrics.CopyFrom(common_pb2.ModelMetrics(kind="causal-lm", size_on_disk_bytes=540 if metrics is result.original
                                                 else 270, perplexity=ppl, top1_accuracy=0.4, peak_rss_mb=rss))
    result.prefill_speedup.CopyFrom(common_pb2.SpeedRatio(phase="prefill", speedup=prefill[0], ci95_low=prefill[1],
                                                          ci95_high=prefill[2], rounds=10))
    result.decode_speedup.CopyFrom(common_pb2.SpeedRatio(phase="decode", speedup=decode[0], ci95_low=decode[1],
                                                         ci95_high=decode[2], rounds=16, unreliable=unreliable_decode))
    return result


def test_green_only_when_nothing_got_worse():
    told = job_headline("int8", _result())
    assert told.colour == GREEN and not told.regressions
    assert "size 50.0% of the original" in told.text and "prefill 1.30× [1.20–1.40] (faster)" in told.text
    assert "decode 1.10×" in told.text and "peak memory 0.86×" in told.text


def test_a_slower_decode_and_more_memory_are_named_even_when_prefill_is_faster():
    told = job_headline("int8", _result(decode=(0.09, 0.08, 0.1), rss_after=1278.0))
    assert told.colour == AMBER
    assert "decode 11.11× slower" in told.text and "peak memory +83%" in told.text
    assert told.text.index("prefill") < told.text.index("Worse:")


def test_an_unreliable_figure_is_said_to_be_so():
    told = job_headline("int8", _result(unreliable_decode=True))
    assert told.colour == AMBER and told.unreliable == ["decode speed"]
    assert "decode speed unreliable" in told.text


def test_an_interval_spanning_one_is_no_difference():
    told = job_headline("int8", _result(prefill=(1.02, 0.95, 1.1)))
    assert "prefill 1.02× [0.95–1.10] (no difference beyond noise)" in told.text and told.colour == GREEN


def test_red_below_the_quality_floor_or_when_the_job_failed():
    assert job_headline("w4", _result(ppl_after=16.0)).colour == RED
    assert job_headline("w4", _result(), succeeded=False).colour == RED


def test_an_unreliable_interval_wholly_below_one_is_headlined_as_slower():
    told = job_headline("int8", _result(prefill=(0.15, 0.12, 0.20), unreliable_decode=False))
    assert told.colour == AMBER and "prefill 6.67× slower" in told.regressions
    wide = _result(decode=(0.15, 0.12, 0.20), unreliable_decode=True)
    told = job_headline("int8", wide)
    assert told.colour == AMBER
    assert "decode 0.15× [0.12–0.20] (slower; the interval is wide" in told.text
    assert "Worse: decode 6.67× slower" in told.text and told.unreliable == ["decode speed"]


def test_an_unreliable_interval_reaching_one_stays_only_unreliable():
    told = job_headline("int8", _result(decode=(0.5, 0.2, 1.4), unreliable_decode=True))
    assert told.colour == AMBER and not told.regressions
    assert "decode speed unreliable (0.50× [0.20–1.40]" in told.text


def _encoder_result(same_tokenization=None):
    result = common_pb2.CompressionResult(compressed_model_size_bytes=30, original_model_size_bytes=90)
    quality = {"sentences": 222, "topics": 12, "knn_topic_accuracy": 0.85, "knn_k": 5}
    result.original.CopyFrom(common_pb2.ModelMetrics(kind="encoder", size_on_disk_bytes=90,
                                                     encoder=common_pb2.EncoderQuality(**quality)))
    student = common_pb2.EncoderQuality(**quality, has_reference=True, mean_reference_cosine=0.999)
    if same_tokenization is not None:
        student.same_tokenization = same_tokenization
    result.compressed.CopyFrom(common_pb2.ModelMetrics(kind="encoder", size_on_disk_bytes=30, encoder=student))
    return result


def test_a_student_that_tokenizes_other_text_differently_is_named():
    assert job_headline("minilm-small", _encoder_result()).colour == GREEN
    assert job_headline("minilm-small", _encoder_result(1.0)).colour == GREEN
    told = job_headline("minilm-small", _encoder_result(0.43))
    assert told.colour == AMBER and "57% of the evaluated sentences tokenize differently" in told.text
