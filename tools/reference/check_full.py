#!/usr/bin/env python3
"""Full-data comparison with transformers: runs `kvsweep-worker eval` on all of LAMBADA and all
of wiki.test.raw for ref-gpt2 and ref-llama and compares with tests/fixtures/
task_reference_full.json (transformers 5.17, fp32, TF32 off). Prints a markdown table.

  tools/reference/check_full.py [--worker build/worker/kvsweep-worker] [--methods none,...]
                                [--models ref-gpt2,ref-llama] [--threads N]
Method names are the reference's keys (none, quant:bits=4,group=64, ...). Exit 1 if any
relative loglik difference exceeds 1e-4 or a count differs.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", default=os.path.join(ROOT, "build/worker/kvsweep-worker"))
    ap.add_argument("--methods", default="none")
    ap.add_argument("--models", default="ref-gpt2,ref-llama")
    ap.add_argument("--tasks", default="lambada_openai,wikitext")
    ap.add_argument("--threads", default="0")
    a = ap.parse_args()
    assets = os.environ.get("KVSWEEP_ASSETS", os.path.join(ROOT, "..", "shared", "assets"))
    ref = json.load(open(os.path.join(ROOT, "tests/fixtures/task_reference_full.json")))
    data = {"lambada_openai": os.path.join(assets, "data/lambada_openai/lambada_test.jsonl"),
            "wikitext": os.path.join(assets, "data/wikitext-2/wiki.test.raw")}
    print("| model | task | method | kvsweep loglik_sum | transformers | rel diff | metric (kvsweep / transformers) | counts | tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    for model in a.models.split(","):
        for method in a.methods.split(";"):
            for task in a.tasks.split(","):
                want = ref["models"][model]["methods"][method]["full"][task]
                # The fixture's "wikitext" is the whole file as one stream: kvsweep's wikitext_stream
                # (kvsweep's wikitext is lm-eval's per-document task: tools/reference/lm_eval_wikitext.py).
                run_task = "wikitext_stream" if task == "wikitext" else task
                cmd = [a.worker, "eval", "--model", os.path.join(assets, "models", model), "--task", run_task,
                       "--data", data[task], "--method", method, "--format", "json", "--threads", a.threads]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    print(f"| {model} | {task} | {method} | error: {p.stderr.strip().splitlines()[-1]} |")
                    ok = False
                    continue
                r = json.loads(p.stdout)
                got = r["metrics"][run_task]
                rel = abs(got["loglik_sum"] - want["loglik_sum"]) / abs(want["loglik_sum"])
                key = "acc" if task == "lambada_openai" else "token_ppl"
                counts = ["n"] if task == "lambada_openai" else ["tokens", "words", "bytes", "windows"]
                same = all(got[c] == want[c] for c in counts)
                ok = ok and rel <= 1e-4 and same
                print(f"| {model} | {task} | `{method}` | {got['loglik_sum']:.4f} | {want['loglik_sum']:.4f} | {rel:.2e} | "
                      f"{key} {got[key]:.6g} / {want[key]:.6g} | {'exact' if same else 'DIFFER'} | "
                      f"{r['timing']['tokens_per_s']:.0f} |", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
