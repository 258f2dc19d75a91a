"""Torch defaults chosen from the machine, and ``engine: vllm`` config checks that need no vLLM."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from thalamus.engine_metrics import parse_load
from thalamus.errors import ConfigError
from thalamus.serving.config import ServingConfig
from thalamus.serving.machine import cgroup_cpu_limit, cpu_flags, machine_dtype, resolve_dtype, usable_cores
from thalamus.serving.metrics import ServingMetrics
from thalamus.serving.vllm_engine import VllmEngines, kv_cache_gib, vllm_command


def test_cpu_flags_pick_bfloat16_only_with_native_bf16(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert machine_dtype({"avx512f", "avx512_bf16"}) == "bfloat16"
    assert machine_dtype({"avx512f", "amx_bf16", "amx_tile"}) == "bfloat16"
    assert machine_dtype({"avx512f", "avx2"}) == "float32"
    assert resolve_dtype("machine", {"avx2"}) == "float32" and resolve_dtype("float16", set()) == "float16"
    assert cpu_flags(tmp_path / "missing") == set()


def test_cgroup_quota_caps_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_dtype_defaults_to_float32_and_is_overridable() -> None:
    config = ServingConfig.from_dict({"models": [{"name": "a", "source": "smollm2"},
                                                 {"name": "b", "source": "smollm2", "dtype": "bfloat16"}]})
    assert [m.dtype for m in config.models] == ["float32", "bfloat16"]
    machine = ServingConfig.from_dict({"default_dtype": "machine", "models": [{"name": "a", "source": "smollm2"}]})
    assert machine.models[0].dtype == machine_dtype()
    with pytest.raises(ConfigError, match="dtype 'fp8'"):
        ServingConfig.from_dict({"models": [{"name": "a", "source": "smollm2", "dtype": "fp8"}]})


def test_vllm_config_needs_its_section_and_builds_the_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'engine: vllm' and a 'vllm:' section"):
        ServingConfig.from_dict({"models": [{"name": "v", "source": "smollm2", "engine": "vllm"}]})
    config = ServingConfig.from_dict({"models": [{
        "name": "v", "path": str(tmp_path), "engine": "vllm", "dtype": "bfloat16", "context_length": 1024,
        "vllm": {"python": sys.executable, "kv_cache_space": "1.5GiB", "extra_args": ["--max-num-seqs", "8"]}}]})
    spec = config.models[0]
    assert spec.vllm is not None and kv_cache_gib(spec.vllm.kv_cache_space) == 2
    assert vllm_command(spec, tmp_path, "bfloat16", 1234) == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp_path),
        "--served-model-name", "v", "--host", "127.0.0.1", "--port", "1234", "--enforce-eager",
        "--dtype", "bfloat16", "--disable-uvicorn-access-log", "--max-model-len", "1024", "--max-num-seqs", "8"]


def test_vllm_engines_are_refused_beyond_the_budget_or_without_their_python(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    vllm = {"python": sys.executable, "kv_cache_space": "2GiB"}
    config = ServingConfig.from_dict({"memory_budget": "1GiB", "models": [
        {"name": "v", "path": str(tmp_path), "engine": "vllm", "vllm": vllm}]})
    with pytest.raises(ConfigError, match=r"need 2147483648 bytes .* memory_budget is 1073741824"):
        asyncio.run(VllmEngines(config).start())
    missing = ServingConfig.from_dict({"models": [{"name": "v", "path": str(tmp_path), "engine": "vllm",
                                                   "vllm": {"python": str(tmp_path / "nope" / "python")}}]})
    with pytest.raises(ConfigError, match=r"scripts/vllm_env\.sh"):
        asyncio.run(VllmEngines(missing).start())


def test_load_probe_reads_serve_local_queue_metrics() -> None:
    metrics = ServingMetrics()
    metrics.running.labels("smollm2").set(3)
    metrics.queued.labels("smollm2", "batch").set(2)
    metrics.queued.labels("smollm2", "memory").set(1)
    metrics.running.labels("tiny").set(0)
    loads = parse_load(metrics.render().decode())
    assert loads["smollm2"].running == 3 and loads["smollm2"].waiting == 3 and loads["smollm2"].in_flight == 6
    assert loads["smollm2"].engine == "torch" and loads["smollm2"].kv_cache_usage is None
    assert loads["tiny"].in_flight == 0


def test_load_probe_reads_vllm_metric_names() -> None:
    text = ('# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0\n'
            '# TYPE vllm:num_requests_waiting gauge\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 4.0\n'
            '# TYPE vllm:kv_cache_usage_perc gauge\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5\n')
    load = parse_load(text)["m"]
    assert (load.engine, load.running, load.waiting, load.kv_cache_usage) == ("vllm", 3.0, 4.0, 0.5)
    with pytest.raises(ValueError, match="not Prometheus text"):
        parse_load("vllm:num_requests_running{ 1\n")
