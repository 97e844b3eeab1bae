"""One GGUF in llama.cpp (llama-cpp-python, in its own venv): load, read its metadata, tokenize,
generate greedily, apply the chat template. Prints JSON. Imports llama_cpp only.

    .venv-llamacpp/bin/python bench/llamacpp/load_once.py MODEL.gguf PROMPT TEXT
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    path, prompt, text = sys.argv[1:4]
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
    json.dump({"loaded_s": round(loaded_s, 2), "pre": meta.get("tokenizer.ggml.pre"),
               "quantization_version": meta.get("general.quantization_version"),
               "has_chat_template": bool(meta.get("tokenizer.chat_template")),
               "tokens": tokens, "generated": out["choices"][0]["text"],
               "generated_tokens": out["usage"]["completion_tokens"],
               "tokens_per_s": round(out["usage"]["completion_tokens"] / generate_s, 1),
               "chat_reply": chat["choices"][0]["message"]["content"]}, sys.stdout)


if __name__ == "__main__":
    main()
