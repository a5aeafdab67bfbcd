#!/usr/bin/env python3
"""Copies make_reference.py outputs (a ref.tar.gz fetched from the device) into tests/fixtures/.

Usage: tools/reference/import_fixtures.py FETCHED/ref.tar.gz [--only tokenizers,...]
Entries a reference library failed to produce (no ids) are dropped, never committed.
Existing fixture files not in the tarball are left alone, so partial re-runs merge in.
"""
import argparse
import io
import json
import os
import shutil
import sys
import tarfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tarball")
    a = ap.parse_args()
    with tarfile.open(a.tarball) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
        def read(name):
            return tar.extractfile(members[name]).read()
        for name in members:
            if name == "tokenizer_ids.json":
                new = json.loads(read(name))
                path = os.path.join(FIX, "tokenizer_ids.json")
                old = json.load(open(path)) if os.path.exists(path) else {}
                for k, v in new.items():
                    if k.startswith("_"):
                        old.setdefault(k, {}).update(v)
                    elif "@" not in k and v["wikitext"]["count"] > 0:
                        # name@library entries only cross-check reference libraries (see _agreement)
                        old[k] = v
                os.makedirs(FIX, exist_ok=True)
                with open(path, "w") as f:
                    json.dump(old, f, separators=(",", ":"), sort_keys=True)
                continue
            if name in ("errors.json", "log.txt"):
                continue
            dest_name = "reference_env.json" if name == "env.json" else name
            dest = os.path.join(FIX, dest_name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(read(name))
            print("fixture", dest_name)
    print("done")


if __name__ == "__main__":
    main()
