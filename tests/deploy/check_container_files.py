#!/usr/bin/env python3
"""Static checks of deploy/docker/ that need no container engine (ContainerFiles test).

The CPU image is also built and run for real (check_container_image.sh); the CUDA image cannot
be built without a PyTorch/CUDA base, so its Dockerfile is checked here alone:

Every Dockerfile: the build ARGs used in FROM lines are declared before the first FROM with a
default; every stage is named, once; FROM and COPY --from name an earlier stage (or a global
ARG); each COPY source from the context exists in the repository and is not excluded by
.dockerignore; each path copied from a stage is made in that stage; scripts the RUN lines call
from the sources exist and are executable; the final stage runs as user 65532:65532 (deploy/k8s
runs pods as 65532) and installs no -dev package; the binaries land in /usr/local/bin.
Dockerfile.cuda: builds through deploy/build-cuda.sh with KVSWEEP_TARGETS=kvsweep-worker and
takes the binary from where that script puts it; its ENV gives CMake, the compiler and the
loader the unpacked packages' directories; every Debian package it downloads exists in Debian
12 (apt-cache, when its package lists are present).
compose.yaml: each /run/secrets/FILE a command names is among that service's secrets and
declared with a file; workers hold no admin or client token; the coordinator's healthcheck asks
kvsweep-healthcheck on its --health-listen port; workers dial the coordinator service on its
--listen port under a name make-certs.sh puts in the certificate (the service name); models are
mounted read-only at --allow-path; the database directory is a named volume.

  check_container_files.py SOURCE_DIR
"""
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

SRC = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
errors = []


def err(msg):
    errors.append(msg)


def instructions(path):
    """(lineno, KEYWORD, text) with continuation lines joined and comments dropped."""
    out, buf, start = [], "", 0
    with open(path) as f:
        for no, line in enumerate(f, 1):
            s = line.rstrip("\n")
            if not buf and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if buf and s.lstrip().startswith("#"):
                continue
            if not buf:
                start = no
            if s.endswith("\\"):
                buf += s[:-1] + " "
                continue
            buf += s
            kw, _, rest = buf.strip().partition(" ")
            out.append((start, kw.upper(), rest.strip()))
            buf = ""
    return out


def ignore_patterns():
    pats = []
    with open(os.path.join(SRC, ".dockerignore")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                pats.append(line.rstrip("/"))
    return pats


IGNORE = ignore_patterns()


def ignored(rel):
    parts = rel.split("/")
    for p in IGNORE:
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, p) or (p.startswith("**/") and fnmatch.fnmatch(
                    parts[i - 1], p[3:])):
                return True
    return False


def check_dockerfile(name):
    path = os.path.join(SRC, "deploy/docker", name)
    ins = instructions(path)
    global_args = {}
    stages = []  # [name, [(lineno, kw, text)]]
    for no, kw, text in ins:
        if kw == "ARG" and not stages:
            k, eq, v = text.partition("=")
            if not eq or not v:
                err(f"{name}:{no}: global ARG {k} has no default")
            global_args[k] = v
        elif kw == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", text, re.I)
            if not m:
                err(f"{name}:{no}: FROM without a stage name: {text}")
                continue
            image, stage = m.groups()
            if stage in [s[0] for s in stages]:
                err(f"{name}:{no}: stage {stage} defined twice")
            for var in re.findall(r"\$\{?(\w+)\}?", image):
                if var not in global_args:
                    err(f"{name}:{no}: FROM uses ${var}, not a global ARG")
            if "$" not in image and image not in [s[0] for s in stages]:
                err(f"{name}:{no}: FROM {image}: neither an ARG nor an earlier stage")
            stages.append([stage, []])
        elif not stages:
            err(f"{name}:{no}: {kw} before the first FROM")
        else:
            stages[-1][1].append((no, kw, text))
    names = [s[0] for s in stages]
    for i, (stage, body) in enumerate(stages):
        for no, kw, text in body:
            if kw not in ("COPY", "ADD"):
                continue
            words = shlex.split(text)
            opts = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            srcs = paths[:-1]
            frm = [o.split("=", 1)[1] for o in opts if o.startswith("--from=")]
            if frm:
                if frm[0] not in names[:i]:
                    err(f"{name}:{no}: COPY --from={frm[0]}: no earlier stage of that name")
                    continue
                made = " ".join(t for _, _, t in stages[names.index(frm[0])][1])
                for s in srcs:
                    top = "/" + s.strip("/").split("/")[0]
                    if top not in made:
                        err(f"{name}:{no}: COPY --from={frm[0]} {s}: stage {frm[0]} makes no {top}")
            else:
                for s in srcs:
                    if s == ".":
                        continue
                    if not os.path.exists(os.path.join(SRC, s)):
                        err(f"{name}:{no}: COPY {s}: not in the repository")
                    elif ignored(s.rstrip("/")):
                        err(f"{name}:{no}: COPY {s}: excluded by .dockerignore")
        for no, kw, text in body:
            if kw != "RUN":
                continue
            for script in re.findall(r"(?:/src/|(?<![\w/]))(deploy/[\w./-]+\.sh|deploy/docker/[\w.-]+)",
                                     text):
                p = os.path.join(SRC, script)
                if not os.path.isfile(p):
                    err(f"{name}:{no}: RUN calls {script}: not in the repository")
                elif not os.access(p, os.X_OK):
                    err(f"{name}:{no}: RUN calls {script}: not executable")
                elif ignored(script):
                    err(f"{name}:{no}: RUN calls {script}: excluded by .dockerignore")
    final_name, final = stages[-1]
    users = [t for _, kw, t in final if kw == "USER"]
    if users != ["65532:65532"]:
        err(f"{name}: final stage {final_name} USER {users}, not 65532:65532 (deploy/k8s)")
    for no, kw, text in final:
        if kw == "RUN" and re.search(r"apt-get install[^&|;]*\S+-dev\b", text):
            err(f"{name}:{no}: the runtime stage installs a -dev package")
    return stages, ins


def check_cpu():
    stages, _ = check_dockerfile("Dockerfile")
    text = "\n".join(t for s in stages for _, _, t in s[1])
    for b in ("kvsweep", "kvsweep-coordinator", "kvsweep-worker"):
        if f"--target kvsweep kvsweep-coordinator kvsweep-worker" not in text:
            err("Dockerfile: the build stage does not build exactly the three binaries")
            break
    if "/out/usr/local/bin" not in text:
        err("Dockerfile: the binaries do not go to /usr/local/bin")
    if "setup-debian.sh --build" not in text:
        err("Dockerfile: the build stage does not install setup-debian.sh --build's packages")


def check_cuda():
    stages, ins = check_dockerfile("Dockerfile.cuda")
    build = "\n".join(t for _, kw, t in stages[[s[0] for s in stages].index("build")][1])
    if not re.search(r"KVSWEEP_TARGETS=kvsweep-worker deploy/build-cuda.sh (\S+)", build):
        err("Dockerfile.cuda: the build stage does not run KVSWEEP_TARGETS=kvsweep-worker "
            "deploy/build-cuda.sh DIR")
    else:
        d = re.search(r"deploy/build-cuda.sh (\S+)", build).group(1)
        script = open(os.path.join(SRC, "deploy/build-cuda.sh")).read()
        if "${KVSWEEP_TARGETS:-" not in script or '$build/worker/kvsweep-worker' not in script:
            err("deploy/build-cuda.sh no longer takes KVSWEEP_TARGETS or builds "
                "$build/worker/kvsweep-worker")
        if f"{d}/worker/kvsweep-worker" not in build:
            err(f"Dockerfile.cuda: the worker is not taken from {d}/worker/kvsweep-worker")
    env = " ".join(t for _, kw, t in stages[[s[0] for s in stages].index("build")][1]
                   if kw == "ENV")
    for var, want in (("CMAKE_PREFIX_PATH", "/opt/debs/usr"), ("PATH", "/opt/debs/usr/bin"),
                      ("LD_LIBRARY_PATH", "/opt/debs/usr/lib/x86_64-linux-gnu"),
                      ("CPATH", "/opt/debs/usr/include"),
                      ("PKG_CONFIG_PATH", "/opt/debs/usr/lib/x86_64-linux-gnu/pkgconfig"),
                      ("LIBRARY_PATH", "/opt/debs/usr/lib/x86_64-linux-gnu")):
        if not re.search(rf"(^|\s){var}={re.escape(want)}", env):
            err(f"Dockerfile.cuda: ENV {var} does not start with {want}")
    debs = "\n".join(t for _, kw, t in stages[0][1] if kw == "RUN")
    m = re.search(r"apt-get download(?: -qq)? (.*?)&&", debs)
    if not m:
        err("Dockerfile.cuda: the debs stage runs no apt-get download")
        return
    pkgs = m.group(1).split()
    for need in ("libgrpc++-dev", "libabsl-dev", "libprotobuf-dev", "protobuf-compiler",
                 "protobuf-compiler-grpc", "libsqlite3-dev", "libyaml-cpp-dev",
                 "nlohmann-json3-dev", "libpcre2-dev", "libcli11-dev", "libicu-dev"):
        if need not in pkgs:
            err(f"Dockerfile.cuda: {need} is not among the downloaded packages")
    if shutil.which("apt-cache"):
        policy = subprocess.run(["apt-cache", "policy"] + pkgs, capture_output=True,
                                text=True).stdout
        known = dict(re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", policy,
                                re.M))
        if any(v != "(none)" for v in known.values()):  # package lists present
            for p in pkgs:
                if known.get(p, "(none)") == "(none)":
                    err(f"Dockerfile.cuda: Debian has no package {p}")


def flags(cmd):
    out = {}
    for a in cmd:
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v
    return out


def check_compose():
    with open(os.path.join(SRC, "deploy/docker/compose.yaml")) as f:
        c = yaml.safe_load(f)
    declared = c.get("secrets", {})
    for name, s in declared.items():
        if "file" not in s:
            err(f"compose.yaml: secret {name} has no file")
    svc = c["services"]
    for name in ("coordinator", "worker"):
        if name not in svc:
            err(f"compose.yaml: no service {name}")
            return
    for name, s in svc.items():
        cmd = s["command"]
        held = set(s.get("secrets", []))
        for a in cmd:
            for ref in re.findall(r"/run/secrets/([\w.-]+)", a):
                if ref not in held:
                    err(f"compose.yaml: {name} reads /run/secrets/{ref} but does not hold it")
                if ref not in declared:
                    err(f"compose.yaml: secret {ref} not declared")
        mounts = s.get("volumes", [])
        if not any(m.endswith(":/models:ro") for m in mounts):
            err(f"compose.yaml: {name} does not mount /models read-only")
        if s.get("image") != svc["coordinator"].get("image"):
            err(f"compose.yaml: {name} runs another image than the coordinator")
    co = flags(svc["coordinator"]["command"])
    wo = flags(svc["worker"]["command"])
    if svc["coordinator"]["command"][0] != "kvsweep-coordinator":
        err("compose.yaml: the coordinator service does not run kvsweep-coordinator")
    if svc["worker"]["command"][0] != "kvsweep-worker":
        err("compose.yaml: the worker service does not run kvsweep-worker")
    if {"admin.token", "client.token", "reader.token"} & set(svc["worker"].get("secrets", [])):
        err("compose.yaml: a worker holds a token other than the worker token")
    if co.get("allow-path") != "/models":
        err("compose.yaml: the coordinator does not --allow-path=/models")
    db_dir = os.path.dirname(co.get("db", ""))
    vols = c.get("volumes", {}) or {}
    if not any(m.split(":")[0] in vols and m.split(":")[1] == db_dir
               for m in svc["coordinator"].get("volumes", [])):
        err(f"compose.yaml: --db's directory {db_dir} is not a named volume")
    health_port = co.get("health-listen", "").rpartition(":")[2]
    test = " ".join(svc["coordinator"].get("healthcheck", {}).get("test", []))
    if not health_port or not re.search(rf"kvsweep-healthcheck \S*:?{health_port}\b", test):
        err(f"compose.yaml: the healthcheck ({test}) does not ask --health-listen's port")
    listen_port = co.get("listen", "").rpartition(":")[2]
    if wo.get("coordinator") != f"coordinator:{listen_port}":
        err(f"compose.yaml: workers dial {wo.get('coordinator')}, not coordinator:{listen_port}")
    if "tls" not in wo or wo.get("tls-server-name") != "coordinator":
        err("compose.yaml: workers do not use TLS with --tls-server-name=coordinator")
    if not all(k in co for k in ("tls-cert", "tls-key", "tls-client-ca", "worker-token-file")):
        err("compose.yaml: the coordinator lacks mutual TLS or role tokens")
    header = open(os.path.join(SRC, "deploy/docker/compose.yaml")).read()
    if "--coordinator-name coordinator" not in header:
        err("compose.yaml: its make-certs.sh line does not name the coordinator service")


check_cpu()
check_cuda()
check_compose()
if errors:
    for e in errors:
        print("FAIL:", e)
    sys.exit(1)
print("ok: Dockerfile, Dockerfile.cuda, compose.yaml")
print("PASS")
