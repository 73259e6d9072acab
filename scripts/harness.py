"""What the harnesses (scripts/bench.py, scripts/chaos.py and its modules) share: running a
command, psql, a fresh database and vhost, waiting for an HTTP endpoint, and starting,
pausing and stopping the system's processes.

Standard library only: bench.py runs under the machine's python3, chaos.py under the
tools virtualenv (scripts/tools.sh).
"""

import contextlib
import http.client
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The local PostgreSQL server (trust auth on loopback, scripts/services.sh).
PG = "postgres://postgres@127.0.0.1:5432"


def run(*args, check=True, **kwargs):
    """The command's stdout (text); its stderr is captured too, and shown by the
    CalledProcessError a failure raises (with check)."""
    return subprocess.run(args, check=check, text=True, capture_output=True, **kwargs).stdout


def psql(database, *args):
    """psql on the local server's `database`, unaligned tuples only, stopping at the first error."""
    return run("psql", f"{PG}/{database}", "-v", "ON_ERROR_STOP=1", "-qAt", *args)


def create_database(name, api, env, force=False):
    """The database `name` dropped if it exists (with force: its sessions terminated),
    created empty and migrated by `api migrate` (the only command that migrates), with
    env (DATABASE_URL naming the database)."""
    drop = f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if force else "")
    psql("postgres", "-c", drop, "-c", f"CREATE DATABASE {name}")
    subprocess.run([str(api), "migrate"], check=True, env=env, stdout=subprocess.DEVNULL)


def delete_vhost(vhost, rabbitmqctl=("rabbitmqctl",)):
    """The RabbitMQ vhost deleted, if it exists."""
    run(*rabbitmqctl, "-q", "delete_vhost", vhost, check=False)


def create_vhost(vhost, rabbitmqctl=("rabbitmqctl",)):
    """A fresh RabbitMQ vhost (the old one deleted with everything in it) where guest may
    do anything."""
    delete_vhost(vhost, rabbitmqctl)
    run(*rabbitmqctl, "-q", "add_vhost", vhost)
    run(*rabbitmqctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def wait_http(url, who, seconds=60, timeout=2):
    """Returns once GET url answers 200; exits the harness (`who`) if it has not within
    `seconds`. `timeout` bounds each request."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status == 200:
                    return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.3)
    sys.exit(f"{who}: {url} did not answer 200 within {seconds} s")


def peak_rss_mb(pid):
    """The process's peak resident memory so far (VmHWM), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def spawn(command, env, log=None):
    """A process of the system: its output into the open file `log` (stdout and stderr),
    or stdout discarded."""
    if log is None:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def paused(*procs):
    """The processes stopped (SIGSTOP) for the block, continued (SIGCONT) after it."""
    for proc in procs:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)


def stop_all(procs, seconds):
    """SIGTERM to every running process at once, then `seconds` for all of them together;
    those still running then are killed (SIGKILL), and returned. A process that hangs on
    a frozen connection costs `seconds` once, not once per process."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    deadline = time.time() + seconds
    killed = []
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            killed.append(p)
    return killed
