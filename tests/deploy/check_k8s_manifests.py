"""Checks deploy/k8s as kubectl read it: the things that make the deployment work or not.

    check_k8s_manifests.py OBJECTS_JSON SECRETS_JSON SAN...

OBJECTS_JSON: `kubectl label --local -R -f deploy/k8s -o json ...` (JSON objects one after
another, or a List); SECRETS_JSON: the Secrets docs/deploy.md creates, made the same way with
`kubectl create secret ... --dry-run=client -o json`; SAN: the names in the coordinator's
certificate (make-certs.sh --coordinator-name). Prints one line per failed check and exits 1 if
any failed.
"""
import json
import posixpath
import re
import sys

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def load(path):
    text = open(path).read()
    dec, i, out = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        obj, i = dec.raw_decode(text, i)
        out.extend(obj.get("items", []) if obj.get("kind") == "List" else [obj])
    return out


def flags(container):
    """--name=value / --name value / --flag arguments -> {name: value or True}."""
    out, args = {}, container.get("args", [])
    i = 0
    while i < len(args):
        a = args[i]
        check(a.startswith("--"), f"{container['name']}: argument {a!r} is not a --flag")
        name, eq, value = a[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = True
        out[name] = value
        i += 1
    return out


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    check(False, f"{container['name']}: no container port named {port!r}")
    return None


def mounted_file(pod, container, path, secrets):
    """Checks that `path` is a key of a Secret mounted (and projected) in `container`."""
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if posixpath.dirname(path) != mp:
            continue
        vol = next((v for v in pod["volumes"] if v["name"] == m["name"]), None)
        if not check(vol is not None, f"{container['name']}: mount {m['name']} has no volume"):
            return False
        sec = vol.get("secret")
        if not check(sec is not None, f"{container['name']}: {path} is not in a Secret volume"):
            return False
        check(m.get("readOnly") is True, f"{container['name']}: Secret mount {mp} is not readOnly")
        mode = sec.get("defaultMode", 0o644)
        check(mode & 0o007 == 0, f"{container['name']}: Secret {sec['secretName']} is world-readable (defaultMode {oct(mode)})")
        name = posixpath.basename(path)
        items = sec.get("items")
        key = name
        if items is not None:
            match = [it for it in items if it["path"] == name]
            if not check(match, f"{container['name']}: {path}: Secret {sec['secretName']} does not project {name}"):
                return False
            key = match[0]["key"]
        data = secrets.get(sec["secretName"])
        if check(data is not None, f"{container['name']}: Secret {sec['secretName']} is not among those docs/deploy.md creates"):
            check(key in data, f"{container['name']}: {path}: Secret {sec['secretName']} has no key {key!r} (it has {sorted(data)})")
        return True
    check(False, f"{container['name']}: {path} is not under any volume mount")
    return False


def env_refs_defined(container):
    defined = {e["name"] for e in container.get("env", [])}
    for a in container.get("args", []):
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
            check(ref in defined, f"{container['name']}: {a!r} refers to $({ref}), not in its env")


def hardened(kind, pod, container):
    sc, psc = container.get("securityContext", {}), pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{kind}: runAsNonRoot")
    check(sc.get("allowPrivilegeEscalation") is False, f"{kind}: allowPrivilegeEscalation: false")
    check(sc.get("readOnlyRootFilesystem") is True, f"{kind}: readOnlyRootFilesystem")
    check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{kind}: capabilities drop ALL")
    check(pod.get("automountServiceAccountToken") is False, f"{kind}: automountServiceAccountToken: false")


def main():
    objs = load(sys.argv[1])
    secrets = {s["metadata"]["name"]: set(s.get("data", {})) for s in load(sys.argv[2])}
    sans = set(sys.argv[3:])
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
        if o["kind"] != "Namespace":
            check(o["metadata"].get("namespace") == "kvsweep", f"{o['kind']} {o['metadata']['name']}: namespace kvsweep")
    for kind in ("Namespace", "Service", "StatefulSet", "Job", "Deployment"):
        check(len(by_kind.get(kind, [])) == 1, f"one {kind} (found {len(by_kind.get(kind, []))})")
    if failures:
        return
    svc, sts = by_kind["Service"][0], by_kind["StatefulSet"][0]

    # The coordinator.
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    f = flags(c)
    check(spec.get("replicas") == 1, "StatefulSet: replicas 1 (one coordinator per database)")
    check(spec.get("updateStrategy", {}).get("type", "RollingUpdate") in ("RollingUpdate", "OnDelete"),
          "StatefulSet: updateStrategy")
    check(c["command"][0] == "/usr/local/bin/kvsweep-coordinator", "StatefulSet: runs kvsweep-coordinator")
    listen_port = int(str(f.get("listen", "")).rpartition(":")[2] or 0)
    health_port = int(str(f.get("health-listen", "")).rpartition(":")[2] or 0)
    check(str(f.get("listen", "")).startswith("0.0.0.0:"), "coordinator: --listen on every interface")
    check(str(f.get("health-listen", "")).startswith("0.0.0.0:"), "coordinator: --health-listen on every interface (the kubelet dials the pod IP)")
    check(port_number(c, "grpc") == listen_port, "coordinator: container port 'grpc' is --listen's")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if check(p is not None and "grpc" in p, f"coordinator: {probe} is a grpc probe"):
            check(p["grpc"]["port"] == health_port and health_port != 0,
                  f"coordinator: {probe} dials port {p['grpc']['port']}, not --health-listen's {health_port}")
            check(p["grpc"].get("service", "") in ("", "kvsweep.v1.SweepService", "kvsweep.v1.WorkerService"),
                  f"coordinator: {probe} asks about a service the coordinator reports on")
    # The database on the PVC.
    db = f.get("db", "")
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    on_pvc = [m for m in c["volumeMounts"] if m["name"] in claims and posixpath.dirname(db) == m["mountPath"].rstrip("/")]
    check(on_pvc, f"coordinator: --db {db} is not on a volumeClaimTemplate's mount")
    for t in spec.get("volumeClaimTemplates", []):
        check("ReadWriteOnce" in t["spec"]["accessModes"], "database PVC: ReadWriteOnce (SQLite wants a local filesystem)")
    # TLS and tokens as files from Secrets.
    for name in ("tls-cert", "tls-key", "tls-client-ca", "token-file", "worker-token-file", "client-token-file"):
        if check(isinstance(f.get(name), str), f"coordinator: --{name} given"):
            mounted_file(pod, c, f[name], secrets)
    hardened("StatefulSet", pod, c)
    # The Service.
    check(svc["metadata"]["name"] == spec["serviceName"], "StatefulSet serviceName is the Service")
    labels = spec["template"]["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "Service selects the coordinator pod")
    sp = svc["spec"]["ports"][0]
    check(port_number(c, sp.get("targetPort", sp["port"])) == listen_port, "Service targets --listen's port")
    svc_dns = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"

    # The workers.
    for w in (by_kind["Job"][0], by_kind["Deployment"][0]):
        kind = w["kind"]
        wspec = w["spec"]
        wpod = wspec["template"]["spec"]
        wc = wpod["containers"][0]
        wf = flags(wc)
        check(wc["command"][0] == "/usr/local/bin/kvsweep-worker", f"{kind}: runs kvsweep-worker")
        res = wc.get("resources", {})
        check(str(res.get("limits", {}).get("nvidia.com/gpu")) == "1", f"{kind}: limits nvidia.com/gpu: 1")
        req = res.get("requests", {}).get("nvidia.com/gpu")
        check(req is None or str(req) == "1", f"{kind}: requests nvidia.com/gpu equals its limit")
        check(wf.get("device") == "cuda:0", f"{kind}: --device cuda:0 (the pod sees its one GPU as 0)")
        host, _, port = str(wf.get("coordinator", "")).rpartition(":")
        check(host in (svc["metadata"]["name"], f"{svc['metadata']['name']}.{svc['metadata']['namespace']}", svc_dns, svc_dns + ".cluster.local"),
              f"{kind}: --coordinator {wf.get('coordinator')} is not the Service")
        check(port == str(sp["port"]), f"{kind}: --coordinator port is the Service's")
        name_checked = wf.get("tls-server-name", host)
        check(name_checked in sans, f"{kind}: the coordinator's certificate ({sorted(sans)}) does not name {name_checked}")
        check(wf.get("tls") is True or wf.get("tls") == "true", f"{kind}: --tls")
        for name in ("tls-ca", "tls-cert", "tls-key", "token-file"):
            if check(isinstance(wf.get(name), str), f"{kind}: --{name} given"):
                mounted_file(wpod, wc, wf[name], secrets)
        tokens = [v for v in wpod["volumes"] if v.get("secret", {}).get("secretName") == "kvsweep-tokens"]
        for v in tokens:
            check([it["key"] for it in v["secret"].get("items", [])] == ["worker.token"],
                  f"{kind}: workers get the worker token and no other")
        env_refs_defined(wc)
        check("$(" in str(wf.get("worker-id", "")), f"{kind}: --worker-id differs per pod")
        drain = int(wf.get("drain-timeout-ms", 60000))
        check(wpod.get("terminationGracePeriodSeconds", 30) * 1000 >= drain + 30000,
              f"{kind}: terminationGracePeriodSeconds leaves 30 s after --drain-timeout-ms {drain}")
        spool = wf.get("spool-dir")
        check(isinstance(spool, str) and any(m["mountPath"].rstrip("/") == spool for m in wc["volumeMounts"]),
              f"{kind}: --spool-dir is a mounted volume (the root filesystem is read-only)")
        hardened(kind, wpod, wc)
        if kind == "Job":
            check(wspec.get("completionMode") == "Indexed", "Job: completionMode Indexed")
            check(int(wf.get("exit-when-idle", 0)) > 0, "Job: --exit-when-idle, so that the Job completes")
            check(wpod.get("restartPolicy") in ("OnFailure", "Never"), "Job: restartPolicy")
        else:
            check("exit-when-idle" not in wf, "Deployment: no --exit-when-idle (it would restart forever)")
        # The worker and the coordinator mount the models at the same path.
        wm = {m["mountPath"] for m in wc["volumeMounts"] if m["name"] == "models"}
        cm = {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "models"}
        check(wm and wm == cm, f"{kind}: models mounted where the coordinator has them")
    allow = f.get("allow-path")
    check(allow in cm, "coordinator: --allow-path is the models mount")


if __name__ == "__main__":
    main()
    for line in failures:
        print("FAIL:", line)
    if failures:
        sys.exit(1)
    print("ok: deploy/k8s: every check passed")
