#!/usr/bin/env python3
"""Attack probes against a local hierarchy (127.0.0.1 only, bounded loops).

Starts `oak root` and `oak cluster` from OAK_BIN (default target/release/oak) in a temporary
data dir, runs the probes of issue 9 and a few more, and prints one line per probe with what
was measured. Exit code 1 if a probe finds the defect it looks for.

    cargo build --release && python3 scripts/probe-hardening.py
"""
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

OAK = os.environ.get("OAK_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "release", "oak"))
failed = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def http(method, url, body=None, token=None, raw=None, source=None, timeout=30):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        if source:
            # A request from another loopback address (127.0.0.0/8 all reach 127.0.0.1).
            host, port = url.split("//")[1].split("/")[0].split(":")
            path = "/" + url.split("//")[1].split("/", 1)[1]
            s = socket.create_connection((host, int(port)), timeout=timeout, source_address=(source, 0))
            head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            head += f"content-length: {len(data or b'')}\r\nconnection: close\r\n\r\n"
            s.sendall(head.encode() + (data or b""))
            resp = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                resp += c
            s.close()
            status = int(resp.split(b" ")[1])
            body = resp.split(b"\r\n\r\n", 1)[1]
            return status, json.loads(body) if body.strip().startswith(b"{") else body
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except Exception:
            return e.code, text


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failed.append(name)


def wait_http(url, secs=20):
    end = time.time() + secs
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def main():
    tmp = tempfile.mkdtemp(prefix="oak-probe-")
    os.chmod(tmp, 0o700)
    rport, cport, mport = free_port(), free_port(), free_port()
    root_url = f"http://127.0.0.1:{rport}"
    env = dict(os.environ, RUST_LOG="warn", OAK_ADMIN_PASSWORD="probe-admin-pw")
    procs = []
    try:
        root_dir = os.path.join(tmp, "new", "root")
        root = subprocess.Popen([OAK, "root", "--listen", f"127.0.0.1:{rport}", "--data-dir", root_dir],
                                env=env, stderr=subprocess.DEVNULL)
        procs.append(root)
        wait_http(f"{root_url}/docs/openapi.json")
        modes = {p: oct(stat.S_IMODE(os.stat(os.path.join(root_dir, p) if p else root_dir).st_mode))
                 for p in ["", "root.redb", "cluster-token"]}
        check("1 data dir private", modes == {"": "0o700", "root.redb": "0o600", "cluster-token": "0o600"}, modes)
        ctoken = open(os.path.join(root_dir, "cluster-token")).read().strip()
        cdir = os.path.join(tmp, "cluster")
        cluster = subprocess.Popen([OAK, "cluster", "--root", root_url, "--name", "probe",
                                    "--listen", f"127.0.0.1:{cport}", "--mqtt-listen", f"127.0.0.1:{mport}",
                                    "--data-dir", cdir], env=dict(env, OAK_CLUSTER_TOKEN=ctoken),
                                   stderr=subprocess.DEVNULL)
        procs.append(cluster)
        reg_url = f"http://127.0.0.1:{cport}/api/node/register"
        wait_http(reg_url.replace("/api/node/register", "/"))
        time.sleep(0.5)
        wtoken = open(os.path.join(cdir, "worker-token")).read().strip()
        reg = {"name": "p", "ip": "127.0.0.1", "arch": "amd64", "runtimes": ["container"], "cpu_cores": 1,
               "memory_mb": 100}

        # 2, 3: reserved names and other workers' ids.
        s, b = http("POST", reg_url, dict(reg, node_id="oak-cluster"), wtoken)
        check("2 register as oak-cluster", s == 422, f"{s} {b}")
        s, victim = http("POST", reg_url, reg, wtoken)
        s2, b2 = http("POST", reg_url, dict(reg, node_id=victim["id"]), wtoken)
        check("3 register as another worker", s2 == 403, f"{s2} {b2}")
        # 9: impossible numbers.
        s, b = http("POST", reg_url, dict(reg, cpu_cores=1.7e308), wtoken)
        check("9 cpu_cores 1.7e308", s == 422, f"{s} {b.get('violations') if isinstance(b, dict) else b}")

        # 4a: 50 unauthenticated CONNECTs announcing 4 MiB each.
        before = rss_mb(cluster.pid)
        socks = []
        for _ in range(50):
            c = socket.create_connection(("127.0.0.1", mport))
            c.sendall(bytes([0x10, 0xFF, 0xFF, 0xFF, 0x01]))
            socks.append(c)

        def pour(c):
            try:
                for _ in range(64):
                    c.sendall(b"\0" * 65536)
            except OSError:
                pass
        threads = [threading.Thread(target=pour, args=(c,)) for c in socks]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        time.sleep(1)
        after = rss_mb(cluster.pid)
        still_open = 0
        for c in socks:
            c.setblocking(False)
            try:
                if c.recv(1) != b"":
                    still_open += 1
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
            c.close()
        check("4a MQTT big CONNECTs", after - before < 20 and still_open == 0,
              f"cluster RSS {before:.0f} -> {after:.0f} MB, {still_open}/50 still open")
        idle = [socket.create_connection(("127.0.0.1", mport)) for _ in range(20)]
        time.sleep(6.5)
        closed = 0
        for c in idle:
            c.setblocking(False)
            try:
                if c.recv(1) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            c.close()
        check("4a MQTT silent connections", closed == 20, f"{closed}/20 closed after 6.5 s")

        # 4b: failed logins with 1 MB names.
        before = rss_mb(root.pid)
        codes = {}
        for i in range(300):
            # Half over the body limit, half under it (refused by the name's own limit).
            name = "x" * ((1 << 20) if i % 2 else 200_000) + str(i)
            s, _ = http("POST", f"{root_url}/api/auth/login", {"username": name, "password": "y"})
            codes[s] = codes.get(s, 0) + 1
        after = rss_mb(root.pid)
        check("4b 1 MB user names", after - before < 30, f"root RSS {before:.0f} -> {after:.0f} MB, answers {codes}")

        # 10: someone elsewhere cannot lock out Admin.
        for _ in range(6):
            http("POST", f"{root_url}/api/auth/login", {"username": "Admin", "password": "wrong"}, source="127.0.0.9")
        s, b = http("POST", f"{root_url}/api/auth/login", {"username": "Admin", "password": "probe-admin-pw"})
        check("10 Admin lockout from elsewhere", s == 200, f"{s}")
        token, refresh_token = b["token"], b["refresh_token"]

        # 11: duplicate keys.
        s, b = http("POST", f"{root_url}/api/auth/login",
                    raw=b'{"username":"nobody","username":"Admin","password":"probe-admin-pw"}')
        check("11 duplicate keys", s == 400, f"{s} {b}")
        # beyond: an array read as a struct.
        s, b = http("PUT", f"{root_url}/api/user/Admin", raw=b'[null, "new-password-1"]', token=token)
        check("11+ array body as struct", s == 422, f"{s} {b}")

        # 14: ADMIN next to Admin.
        s, b = http("POST", f"{root_url}/api/auth/register",
                    {"name": "ADMIN", "email": "", "password": "x-12345678", "roles": ["Admin"]}, token)
        check("14 ADMIN next to Admin", s == 409, f"{s}")

        # 5: a billion replicas.
        sla = {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
            "applicationID": "", "application_name": "big", "application_namespace": "n", "application_desc": "",
            "microservices": [{"microserviceID": "", "microservice_name": "s", "microservice_namespace": "n",
                               "virtualization": "container", "code": "docker.io/library/busybox:latest",
                               "memory": 10, "vcpus": 0.1, "replicas": 1000000000}]}]}
        s, b = http("POST", f"{root_url}/api/application", sla, token)
        check("5 replicas 1e9", s == 422, f"{s} {b.get('message') if isinstance(b, dict) else b}")

        # 6: quotas for a non-admin.
        http("POST", f"{root_url}/api/auth/register",
             {"name": "mallory", "email": "", "password": "mallory-pw-1", "roles": ["Application_Provider"]}, token)
        s, b = http("POST", f"{root_url}/api/auth/login", {"username": "mallory", "password": "mallory-pw-1"})
        mt = b["token"]
        sla["customerID"] = "mallory"
        sla["applications"][0]["microservices"][0]["replicas"] = 10000
        s, b = http("POST", f"{root_url}/api/application", sla, mt)
        check("6 quota", s == 403 and b.get("code") == "quota_exceeded", f"{s} {b.get('message')}")

        # 8: a login flood (bounded: 400 requests, 200 at once).
        def flood():
            http("POST", f"{root_url}/api/auth/login", {"username": "Admin", "password": "nope"},
                 source="127.0.0.%d" % (10 + threading.get_ident() % 200))
        threads = [threading.Thread(target=flood) for _ in range(400)]
        t0 = time.time()
        [t.start() for t in threads[:200]]
        time.sleep(0.2)
        t1 = time.time()
        s, b = http("POST", f"{root_url}/api/auth/refresh", token=refresh_token)
        refresh = time.time() - t1
        t2 = time.time()
        s_login, _ = http("POST", f"{root_url}/api/auth/login", {"username": "Admin", "password": "probe-admin-pw"})
        login = time.time() - t2
        [t.start() for t in threads[200:]]
        [t.join(60) for t in threads]
        check("8 login flood", refresh < 1.0 and login < 2.0,
              f"refresh answered {s} in {refresh*1000:.0f} ms, a valid login {s_login} in {login*1000:.0f} ms "
              f"during the flood; flood done in {time.time()-t0:.1f} s")

        # 7: 1,100 idle connections, then a real request.
        idle = []
        try:
            for _ in range(1100):
                idle.append(socket.create_connection(("127.0.0.1", rport)))
        except OSError as e:
            print(f"     (opened {len(idle)} idle connections: {e})")
        t1 = time.time()
        s, _ = http("GET", f"{root_url}/api/users", token=token, timeout=15)
        check("7 1,100 idle connections", s == 200, f"{s} in {(time.time()-t1)*1000:.0f} ms, root RSS "
                                                     f"{rss_mb(root.pid):.0f} MB")
        for c in idle:
            c.close()

        # beyond: a cluster token holder claiming the running cluster by name.
        s = socket.create_connection(("127.0.0.1", rport))
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        s.sendall((f"GET /api/cluster/link HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                   f"sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\nauthorization: Bearer {ctoken}\r\n\r\n")
                  .encode())
        s.recv(4096)
        hello = json.dumps({"type": "hello", "name": "probe"}).encode()
        mask = b"\x01\x02\x03\x04"
        frame = bytes([0x81, 0x80 | 126]) + len(hello).to_bytes(2, "big") + mask + bytes(
            b ^ mask[i % 4] for i, b in enumerate(hello)) if len(hello) > 125 else bytes(
            [0x81, 0x80 | len(hello)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(hello))
        s.sendall(frame)
        s.settimeout(5)
        answer = s.recv(4096)
        s.close()
        check("+ cluster takeover by name", b"welcome" not in answer, answer[:80])
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    if failed:
        print("failed:", ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
