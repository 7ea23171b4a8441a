"""Stream generated text from an exported KV-cache decoder with plain onnxruntime.

    python tools/generate.py out/smollm2-w4 --prompt "Once upon a time"            # greedy
    python tools/generate.py out/smollm2-w4 --prompt "Hi" --sample --temperature 0.8 --top-p 0.9 --seed 1
    python tools/generate.py out/smollm2-w4 --prompt "What is 2+2?" --chat        # apply the chat template

MODEL is a genai folder written by `gptq-export -o DIR` (its tokenizer files are used) or a .onnx
written with --kv-cache together with --tokenizer DIR. Tokens are printed as soon as they are
generated; the tokens/s of prefill and decode go to stderr at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gptq_export.decode import Decoder, Sampling, generate
from gptq_export.errors import GptqExportError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="genai folder or KV-cache .onnx file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu", help="cuda runs gptq-format files on the GPU kernels")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    folder = Path(args.tokenizer or (args.model if Path(args.model).is_dir() else Path(args.model).parent))
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        print(f"generate: error: no tokenizer in {folder} ({type(exc).__name__}); pass --tokenizer DIR", file=sys.stderr)
        return 2
    try:
        sampling = Sampling(args.sample, args.temperature, args.top_k, args.top_p, args.seed)
        decoder = Decoder(args.model, device=args.device)
    except (GptqExportError, ValueError) as exc:
        print(f"generate: error: {exc}", file=sys.stderr)
        return 2
    if args.chat:
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      return_tensors="np", return_dict=True)["input_ids"]
    else:
        ids = tok(args.prompt, return_tensors="np")["input_ids"]
    print(args.prompt if not args.chat else "", end="", flush=True)
    new: list[int] = []
    shown = ""
    times: list[float] = []

    def on_token(token: int) -> None:
        nonlocal shown
        times.append(time.perf_counter())
        new.append(token)
        text = tok.decode(new, skip_special_tokens=True)
        print(text[len(shown):], end="", flush=True)
        shown = text

    t0 = time.perf_counter()
    generate(decoder, ids, args.max_new_tokens, sampling, eos_token_id=tok.eos_token_id, on_token=on_token)
    print()
    if len(times) > 1:
        decode_tps = (len(times) - 1) / (times[-1] - times[0])
        print(f"prefill {ids.shape[1]} tokens in {times[0] - t0:.2f}s; decode {decode_tps:.1f} tokens/s",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
