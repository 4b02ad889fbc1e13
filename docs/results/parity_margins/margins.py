"""Greedy cases of the parity battery whose path passes a near tie.

The workers' engines and ``vllm serve`` run the default model in bfloat16 (vLLM's ``auto``
dtype for a float32 checkpoint) and neither is batch-invariant, so a greedy step whose two
best tokens are within a few hundredths of a nat can flip with the batch it ran in. This
script follows each greedy chat or completion case for its ``max_tokens`` steps with
transformers in float32 and prints those whose smallest top-2 log-probability margin is
under ``--floor``.

    ~/.cache/pdserve/venv/bin/python docs/results/parity_margins/margins.py [--floor 0.3]
"""

from __future__ import annotations

import argparse

import jinja2
import torch
import transformers

from pdserve.tools.model import default_model_dir
from pdserve.tools.parity import cases as C


def margins(model, ids: list[int], steps: int, eos: int | None) -> list[float]:
    out, ids = [], list(ids)
    with torch.no_grad():
        for _ in range(steps):
            top = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1).topk(2)
            out.append(round(float(top.values[0] - top.values[1]), 2))
            ids.append(int(top.indices[0]))
            if ids[-1] == eos:
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--floor", type=float, default=0.3)
    floor = parser.parse_args().floor
    path = default_model_dir()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for case in C.battery():
        body = case.body
        steps = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        if not case.exact or body.get("temperature", 1) != 0 or not isinstance(steps, int) or steps <= 0:
            continue
        if case.route == C.CHAT and isinstance(body.get("messages"), list) and body["messages"]:
            try:
                ids = tok.apply_chat_template(
                    body["messages"],
                    tokenize=True,
                    return_dict=False,
                    add_generation_prompt=body.get("add_generation_prompt", True),
                    continue_final_message=body.get("continue_final_message", False),
                )
            except (ValueError, TypeError, KeyError, jinja2.TemplateError):  # a case the servers refuse
                continue
        elif case.route == C.COMPLETIONS and isinstance(body.get("prompt"), str) and body["prompt"]:
            ids = tok(body["prompt"])["input_ids"]
        else:
            continue
        found = margins(model, ids, min(steps, 16), None if body.get("ignore_eos") else tok.eos_token_id)
        if min(found) < floor:
            print(case.id, found)


if __name__ == "__main__":
    main()
