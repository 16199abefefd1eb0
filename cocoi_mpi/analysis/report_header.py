"""The report's header (``cocoi report``): which run a trace is, how it ended, where it ran.

Outcome, configuration and provenance from the trace's root attributes: world size, hosts,
Slurm job, testbed, merged parts, git commit, versions, failures and the worker error that
ended the run. Lines stay within :data:`WIDTH` columns.
"""

from __future__ import annotations

import json
from typing import Any

from ..traces.reader import Trace

WIDTH = 100
CONFIG_KEYS = ("model", "scheme", "code", "n", "k")


def _short(value: Any, width: int = 40) -> str:
    """A config value on one line."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _status_line(trace: Trace) -> str:
    """Say plainly whether the run finished, and why not if it did not."""
    if trace.complete:
        return "complete"
    if trace.status == "running":
        return "INCOMPLETE (status 'running': the writer never closed; the job was killed?)"
    return f"INCOMPLETE ({_short(trace.status, 80)})"


def _hosts(value: Any) -> str:
    """Hostnames (list per rank or dict rank->host) as 'N distinct: a, b, ...'."""
    hosts = list(value.values()) if isinstance(value, dict) else list(value or [])
    distinct = sorted({str(h) for h in hosts})
    return f"{len(distinct)} distinct: " + _short(", ".join(distinct), 70) if distinct else "-"


def _header(trace: Trace) -> list[str]:
    """Which run this was: file, outcome, configuration and provenance."""
    attrs, config = trace.attrs, trace.config
    shown = "  ".join(f"{key} {_short(config[key], 30)}" for key in CONFIG_KEYS if key in config)
    lines = [
        f"Trace       {trace.path}",
        f"Status      {_status_line(trace)}",
        f"Config      {shown or '-'}",
        f"World size  {attrs.get('world_size', '-')}",
        f"Started     {attrs.get('start_time') or '-'}   ended {attrs.get('end_time') or '-'}",
    ]
    if "hostnames" in attrs:
        lines.append(f"Hosts       {_hosts(attrs['hostnames'])}")
    if attrs.get("slurm"):
        lines.append(f"Slurm       {_slurm(attrs['slurm'])}")
    testbed = attrs.get("testbed")
    if isinstance(testbed, dict) and testbed.get("summary"):
        lines.append(f"Testbed     {_short(testbed['summary'], WIDTH - 12)}")
    if config.get("preset"):
        lines.append(f"Preset      {_short(config['preset'], WIDTH - 12)}")
    injected = [f"{key} {config[key]}" for key in ("jitter", "detection") if key in config]
    if injected:
        lines.append(f"Injected    {', '.join(injected)}")
    if attrs.get("merged_from"):
        lines.append(f"Merged      {_short(_merged(attrs['merged_from']), WIDTH - 12)}")
    if attrs.get("git_commit"):
        lines.append(f"Git commit  {attrs['git_commit']}")
    versions = attrs.get("versions")
    if isinstance(versions, dict) and versions:
        text = ", ".join(f"{k} {v}" for k, v in versions.items())
        lines.append(f"Versions    {_short(text, WIDTH - 12)}")
    reliability = attrs.get("reliability")
    if isinstance(reliability, dict):
        lines.append(f"Failures    {_failures(reliability)}")
        lines += _worker_error_lines(reliability)
    return lines


def _slurm(env: dict) -> str:
    """The batch job a run was, so its log and accounting can be found."""
    job = env.get("SLURM_JOB_ID", "?")
    if "SLURM_ARRAY_JOB_ID" in env:
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '?')}"
    text = f"job {job}"
    if env.get("SLURM_JOB_NAME"):
        text += f" ({env['SLURM_JOB_NAME']})"
    if env.get("SLURM_NTASKS"):
        text += f", {env['SLURM_NTASKS']} tasks"
    if env.get("SLURM_JOB_NODELIST"):
        text += f" on {env['SLURM_JOB_NODELIST']}"
    return text


def _merged(parts: list) -> str:
    """cocoi merge's parts: how many, and the Slurm jobs they were."""
    jobs = sorted({_slurm(p["slurm"]).split(",")[0] for p in parts if p.get("slurm")})
    text = f"{len(parts)} parts ({sum(p.get('requests', 0) for p in parts)} requests)"
    return text + (f" from {', '.join(jobs)}" if jobs else "")


def _failures(rel: dict) -> str:
    """Real failures the run survived (dead or stuck workers) and the FT mode it ran in."""
    dead = rel.get("dead_workers") or []
    parts = [f"fault tolerance {rel.get('fault_tolerance', '?')}"]
    parts += [f"rank {d['rank']} dead (seen at request {d['request']})" for d in dead]
    if rel.get("unresponsive_workers"):
        parts.append(f"unresponsive ranks {rel['unresponsive_workers']}")
    if not dead and not rel.get("unresponsive_workers"):
        parts.append("no worker died")
    return _short(", ".join(parts), WIDTH - 12)


def _worker_error_lines(rel: dict) -> list[str]:
    """The worker error that ended the run, and where its stack is: rank 0 printed it
    once at the time, the trace keeps it for later (too long for this header)."""
    error = rel.get("worker_error")
    if not isinstance(error, dict):
        return []
    stack = str(error.get("traceback") or "").splitlines()
    where = stack[0].split(" (most recent")[0] if stack else "worker"
    where = _short(where, 30)  # a long host name must not hide where the stack is
    return [
        f"Error       {_short(error.get('message', '?'), WIDTH - 12)}",
        f"            stack of {where} ({len(stack)} lines): reliability.worker_error.traceback",
    ]
