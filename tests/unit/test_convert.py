from __future__ import annotations

import pytest

from pdserve.engine.base import EngineInfo, FinishReason, PrefillResult, SamplingSpec, TokenDelta, TokenLogprobs
from pdserve.rpc import convert
from pdserve.v1 import worker_pb2 as pb


@pytest.mark.parametrize(
    "spec",
    [
        SamplingSpec(),
        SamplingSpec(
            max_tokens=7,
            temperature=0.0,
            top_p=0.5,
            top_k=20,
            seed=-3,
            stop_token_ids=(2, 5),
            ignore_eos=True,
            min_tokens=2,
        ),
    ],
)
def test_sampling_round_trips(spec: SamplingSpec) -> None:
    back = convert.sampling_from_pb(convert.sampling_to_pb(spec))
    assert back.max_tokens == spec.max_tokens and back.seed == spec.seed
    assert back.stop_token_ids == spec.stop_token_ids and back.ignore_eos == spec.ignore_eos
    assert back.top_k == spec.top_k and back.min_tokens == spec.min_tokens
    assert back.temperature == pytest.approx(spec.temperature) and back.top_p == pytest.approx(spec.top_p)


def test_out_of_range_sampling_is_a_value_error() -> None:
    msg = convert.sampling_to_pb(SamplingSpec())
    msg.max_tokens = 0
    with pytest.raises(ValueError, match="max_tokens"):
        convert.sampling_from_pb(msg)


@pytest.mark.parametrize("reason", [None, *FinishReason])
def test_delta_round_trips(reason: FinishReason | None) -> None:
    delta = TokenDelta((1, 2, 3), 9, reason, 4)
    assert convert.delta_from_pb(convert.delta_to_pb(delta)) == delta


def test_info_round_trips() -> None:
    info = EngineInfo("decode", "m", 128, "0.32.0", 4096, 2048, "vllm")
    assert convert.info_from_pb(convert.info_to_pb(info)) == info
    tuned = EngineInfo("decode", "m", 128, "0.32.0", 4096, 2048, "vllm", scheduling_policy="priority", max_logprobs=5)
    assert convert.info_from_pb(convert.info_to_pb(tuned)) == tuned
    # a worker that does not report them: vLLM's defaults
    bare = convert.info_from_pb(pb.WorkerInfo(role="decode", model="m"))
    assert (bare.scheduling_policy, bare.max_logprobs) == ("fcfs", 20)


def test_prompt_logprobs_round_trip() -> None:
    plps = (TokenLogprobs(((5, -0.5, 1), (6, -1.5, 2))), TokenLogprobs(((7, -3.0, 4), (2, -0.25, 1))))
    result = PrefillResult(5, 0, {"remote_block_ids": [[1]]}, plps)
    assert convert.prefill_from_pb(convert.prefill_to_pb(result)) == result
    delta = TokenDelta((1,), 1, None, 0, (), plps)
    assert convert.delta_from_pb(convert.delta_to_pb(delta)) == delta
    spec = SamplingSpec(prompt_logprobs=0)
    assert convert.sampling_from_pb(convert.sampling_to_pb(spec)).prompt_logprobs == 0
    assert convert.sampling_from_pb(convert.sampling_to_pb(SamplingSpec())).prompt_logprobs is None


def test_kv_params_json() -> None:
    params = {"remote_block_ids": [[1, 2]], "remote_host": "h", "x": None}
    assert convert.kv_params_from_json(convert.kv_params_to_json(params)) == params
    assert convert.kv_params_from_json("") is None
    for bad in ("[1]", "{nope"):
        with pytest.raises(ValueError):
            convert.kv_params_from_json(bad)


def test_any_64_bit_priority_crosses_the_wire() -> None:
    """The API takes a 64-bit priority (as vLLM's int); the fuzzer found 1204272427486 failing
    an int32 wire field with a 500."""
    for priority in (1204272427486, -(2**63), 2**63 - 1):
        spec = SamplingSpec(priority=priority)
        assert convert.sampling_from_pb(convert.sampling_to_pb(spec)).priority == priority
