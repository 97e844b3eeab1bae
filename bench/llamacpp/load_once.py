"""One GGUF in llama.cpp (llama-cpp-python, in its own venv): load, read its metadata, tokenize,
generate greedily, apply the chat template. Prints JSON. Imports llama_cpp only.

    .venv-llamacpp/bin/python bench/llamacpp/load_once.py MODEL.gguf PROMPT TEXT [IDS_JSON]

With IDS_JSON (a list of token ids) it also prints llama.cpp's logits at every one of those positions.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    path, prompt, text = sys.argv[1:4]
    ids = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False, seed=0)
    loaded_s = time.perf_counter() - start
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    start = time.perf_counter()
    out = llm(prompt, max_tokens=32, temperature=0.0, top_k=1)
    generate_s = time.perf_counter() - start
    chat = llm.create_chat_completion(messages=[{"role": "user", "content": "What does the for statement do?"}],
                                      max_tokens=24, temperature=0.0, top_k=1)
    meta = llm.metadata
    logits = None
    if ids:
        scorer = Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False, seed=0, logits_all=True)
        scorer.eval(ids)
        logits = [[float(x) for x in row] for row in scorer.scores[:len(ids)]]
    json.dump({"loaded_s": round(loaded_s, 2), "architecture": meta.get("general.architecture"),
               "pre": meta.get("tokenizer.ggml.pre"),
               "quantization_version": meta.get("general.quantization_version"),
               "has_chat_template": bool(meta.get("tokenizer.chat_template")),
               "tokens": tokens, "generated": out["choices"][0]["text"],
               "generated_tokens": out["usage"]["completion_tokens"],
               "tokens_per_s": round(out["usage"]["completion_tokens"] / generate_s, 1),
               "chat_reply": chat["choices"][0]["message"]["content"], "logits": logits}, sys.stdout)


if __name__ == "__main__":
    main()
